"""HTTP/2 through the real `triasgi` command: the option, the log, SIGTERM."""

from __future__ import annotations

import signal

import h2.errors
import httpx
import pytest
import trio
from h2client import H2Client
from test_cli import app_dir, start_cli  # noqa: F401 (fixtures)

ErrorCodes = h2.errors.ErrorCodes


async def _preface_answer(url: str) -> bytes:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some():
                data += chunk
    return data


async def test_http2_is_on_by_default_and_logged_as_http2(start_cli):  # noqa: F811
    running = await start_cli("myapp:app", "--port", "0")
    url = await running.url()
    async with httpx.AsyncClient(http1=False, http2=True) as client:
        reply = await client.get(url + "/")
    assert reply.http_version == "HTTP/2"
    assert reply.text == "root_path="
    await running.read_stderr_until(rb'"GET / HTTP/2.0" 200')
    running.process.send_signal(signal.SIGINT)
    assert await running.wait() == 0


@pytest.mark.parametrize(
    ("args", "env"),
    [(["--no-http2"], {}), ([], {"TRIASGI_HTTP2": "false"})],
    ids=["option", "environment"],
)
async def test_no_http2_answers_the_preface_with_505(start_cli, args, env):  # noqa: F811
    running = await start_cli("myapp:app", "--port", "0", *args, env=env)
    url = await running.url()
    answer = await _preface_answer(url)
    assert answer.startswith(b"HTTP/1.1 505 ")
    async with httpx.AsyncClient() as client:
        assert (await client.get(url + "/")).http_version == "HTTP/1.1"
    running.process.send_signal(signal.SIGINT)
    assert await running.wait() == 0


async def test_h2c_upgrade_is_ignored_and_served_over_http11(start_cli):  # noqa: F811
    running = await start_cli("myapp:app", "--port", "0", "--no-access-log")
    url = await running.url()
    async with httpx.AsyncClient() as client:
        reply = await client.get(
            url + "/",
            headers={
                "connection": "Upgrade, HTTP2-Settings",
                "upgrade": "h2c",
                "http2-settings": "AAMAAABkAARAAAAAAAIAAAAA",
            },
        )
    assert reply.status_code == 200
    assert reply.http_version == "HTTP/1.1"
    assert reply.text == "root_path="
    running.process.send_signal(signal.SIGINT)
    assert await running.wait() == 0


async def test_sigterm_goaway_then_in_flight_stream_cancelled_within_the_bound(
    start_cli,  # noqa: F811
):
    running = await start_cli(
        "myapp:app",
        "--port",
        "0",
        "--no-access-log",
        "--timeout-graceful-shutdown",
        "1",
    )
    url = await running.url()
    host, port = url.removeprefix("http://").rsplit(":", 1)
    client = H2Client(await trio.open_tcp_stream(host, int(port)))
    await client.start()
    slow = await client.request("GET", "/slow")
    forever = await client.request("GET", "/forever")
    await running.read_stderr_until(rb"app got /forever")
    start = trio.current_time()
    running.process.send_signal(signal.SIGTERM)
    with trio.fail_after(10):
        while client.goaway is None:
            await client.receive()
    assert client.goaway.error_code == ErrorCodes.NO_ERROR
    assert client.goaway.last_stream_id == forever
    # The stream that can finish does, with END_STREAM.
    reply = await client.response(slow)
    assert reply.ended
    assert reply.body == b"root_path="
    # The other is cut off when the graceful-shutdown timeout ends, and the
    # process exits within that bound (plus the time to stop).
    assert await running.wait() == 0
    assert trio.current_time() - start < 5
    assert not client.replies[forever].ended
    await client.stream.aclose()
