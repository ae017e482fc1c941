"""Error answers reach a client that is still sending, over real sockets."""

from __future__ import annotations

import pytest
import trio
from conftest import connect

from triasgi.testing import open_server

# The whole module runs against both request parsers (--http).
pytestmark = pytest.mark.usefixtures("http_backend")

# More than the server reads: the bad head before it ends the connection.
UNREAD = b"x" * (1024 * 1024)


async def hello(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200})
    await send({"type": "http.response.body", "body": b"hello"})


@pytest.mark.parametrize(
    "bad_head",
    [
        b"GET / HTTP/1.1\r\nhost: a\r\nno colon here\r\n\r\n",
        b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\n"
        b"transfer-encoding: chunked\r\n\r\n",
    ],
    ids=["malformed", "ambiguous-framing"],
)
async def test_client_that_sends_everything_before_reading_gets_the_error_answer(
    bad_head,
):
    # Like a simple client: write the whole request, then read the answer.
    # The server must neither reset the connection under the client's
    # writes nor after its answer, though it never reads most of the bytes.
    async with open_server(hello) as server:
        stream = await connect(server)
        with trio.fail_after(10):
            try:
                await stream.send_all(bad_head + UNREAD)
                await stream.send_eof()
            except trio.BrokenResourceError as exc:
                pytest.fail(f"the server reset the connection: {exc.__cause__}")
            data = b""
            try:
                while chunk := await stream.receive_some(65536):
                    data += chunk
            except trio.BrokenResourceError as exc:
                pytest.fail(f"reset after {data!r}: {exc.__cause__}")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"connection: close" in head
    assert body == b"Bad Request\n"
