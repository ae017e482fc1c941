"""Settings that make no sense are refused before anything is served."""

from __future__ import annotations

import sys

import pytest
import trio

from triasgi import Config
from triasgi.testing import open_memory_server

APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200})
    await send({"type": "http.response.body", "body": b"ok"})
"""

# A header line needs a name: ": v" on the wire is a malformed response.
EMPTY_NAMES = [":v", ": v", " :v", "\t: v", ":"]


@pytest.mark.parametrize("header", EMPTY_NAMES)
def test_default_header_without_a_name_is_refused(header):
    with pytest.raises(ValueError, match="headers entries must look like 'name:value'"):
        Config(headers=["x-ok: 1", header])


@pytest.mark.parametrize("header", EMPTY_NAMES)
async def test_server_with_a_nameless_default_header_does_not_start(header):
    async def app(scope, receive, send):
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="name:value"):
        async with open_memory_server(app, headers=[header]):
            pytest.fail("the server started")


def test_default_header_with_a_name_and_an_empty_value_is_accepted():
    assert Config(headers=["x-empty:"]).default_headers == [(b"x-empty", b"")]


@pytest.mark.parametrize("header", [":v", " : v"])
async def test_cli_refuses_a_nameless_header_as_a_usage_error(tmp_path, header):
    (tmp_path / "okapp.py").write_text(APP)
    command = [sys.executable, "-m", "triasgi", "okapp:app", "--port", "0"]
    result = None
    # A server that accepted it would run until killed.
    with trio.move_on_after(10):
        result = await trio.run_process(
            [*command, "--header", header],
            cwd=tmp_path,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result is not None, "the server started instead of refusing the header"
    stderr = result.stderr.decode()
    assert result.returncode == 2
    assert "headers entries must look like 'name:value'" in stderr
    assert "Traceback" not in stderr
