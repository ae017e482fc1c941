"""Settings that make no sense are refused before anything is served."""

from __future__ import annotations

import dataclasses
import re
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


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("x-a:b\r\nx-evil: 1", "has a CR, LF or NUL in its value"),
        ("x-a:b\x00", "has a CR, LF or NUL in its value"),
        ("bad name:v", "has an invalid name 'bad name'"),
        ("x(a):v", "has an invalid name 'x(a)'"),
        ("x-a:\u20ac", "has a character beyond latin-1"),
    ],
)
def test_default_header_that_would_break_the_response_is_refused(header, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Config(headers=[header])


@pytest.mark.parametrize(
    "name",
    [f.name for f in dataclasses.fields(Config) if f.type in ("float", float)],
)
def test_nan_is_refused_for_every_seconds_setting(name):
    with pytest.raises(ValueError, match=f"{name} must be a number of seconds, got nan"):
        Config(**{name: float("nan")})


@pytest.mark.parametrize(
    "name",
    # A delay with a maximum (reload_delay) is not a limit: inf has no meaning.
    [
        f.name
        for f in dataclasses.fields(Config)
        if f.type in ("float", float) and f.metadata.get("maximum") is None
    ],
)
def test_infinity_is_accepted_for_every_seconds_setting(name):
    assert getattr(Config(**{name: float("inf")}), name) == float("inf")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"port": 70000}, "port must be at most 65535, got 70000"),
        ({"backlog": 99999999999}, "backlog must be at most 2147483647"),
        ({"fd": 2**40}, "fd must be at most 2147483647"),
        ({"reload_delay": float("inf")}, "reload_delay must be at most 10, got inf"),
    ],
)
def test_socket_numbers_out_of_range_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        Config(**settings)
