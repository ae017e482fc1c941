"""Where one request ends and the next begins, as a client sees it.

A request body the app does not read is still the client's body: the
server skips it (or closes the connection), and never parses it as a
request of its own.
"""

from __future__ import annotations

import h11
import pytest
import trio
from conftest import H11Client, read_until_closed

from triasgi.testing import open_memory_connection, open_memory_server

# The whole module runs against both request parsers (--http).
pytestmark = pytest.mark.usefixtures("http_backend")

MiB = 1024 * 1024
# A request hidden in a request body: it must never be served.
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nhost: a\r\n\r\n"


def path_app(paths):
    """Answer with the request's path, without reading the body."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        paths.append(scope["path"])
        body = scope["path"].encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def status_of(data: bytes) -> int:
    assert data.startswith(b"HTTP/1.1 "), data[:100]
    return int(data[9:12])


# -- an unread body is never a request --------------------------------------


async def test_unread_body_arriving_after_the_response_is_not_a_request(
    autojump_clock,
):
    paths = []
    async with (
        open_memory_server(path_app(paths)) as server,
        open_memory_connection(server) as stream,
    ):
        client = H11Client(stream)
        await client.send(
            h11.Request(
                method="POST",
                target="/upload",
                headers=[("host", "a"), ("content-length", str(len(SMUGGLED)))],
            )
        )
        first = await client.response()
        # The body comes once the answer is here, as from a slow client.
        await client.send(h11.Data(data=SMUGGLED), h11.EndOfMessage())
        client.conn.start_next_cycle()
        second = await client.request_response("GET", "/next")
    assert (first.status, first.body) == (200, b"/upload")
    assert (second.status, second.body) == (200, b"/next")
    assert paths == ["/upload", "/next"]


async def test_unread_body_split_around_the_response_is_not_a_request(
    autojump_clock,
):
    paths = []
    body = b"0123456789" + SMUGGLED
    async with (
        open_memory_server(path_app(paths)) as server,
        open_memory_connection(server) as stream,
    ):
        client = H11Client(stream)
        await client.send(
            h11.Request(
                method="POST",
                target="/upload",
                headers=[("host", "a"), ("content-length", str(len(body)))],
            ),
            h11.Data(data=body[:10]),
        )
        first = await client.response()
        await client.send(h11.Data(data=body[10:]), h11.EndOfMessage())
        client.conn.start_next_cycle()
        second = await client.request_response("GET", "/next")
    assert (first.status, first.body) == (200, b"/upload")
    assert (second.status, second.body) == (200, b"/next")
    assert paths == ["/upload", "/next"]


# -- how much unread body is skipped ---------------------------------------


async def test_large_unread_body_closes_the_connection_instead_of_being_read(
    autojump_clock,
):
    # Skipping a small unread body keeps the connection; a large one is not
    # worth reading: the server answers and closes while the client still
    # sends.
    paths = []
    total = 3 * MiB
    sent = 0
    async with (
        open_memory_server(path_app(paths)) as server,
        open_memory_connection(server, lockstep=True) as stream,
    ):

        async def upload():
            nonlocal sent
            await stream.send_all(
                b"POST /upload HTTP/1.1\r\nhost: a\r\ncontent-length: %d\r\n\r\n"
                % total
            )
            piece = b"x" * 16384
            try:
                while sent < total:
                    await stream.send_all(piece)
                    sent += len(piece)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(upload)
            start = trio.current_time()
            data = await read_until_closed(stream)
            sent_at_close = sent
            elapsed = trio.current_time() - start
    assert status_of(data) == 200
    assert data.endswith(b"\r\n\r\n/upload")
    assert paths == ["/upload"]
    # Closed after about 1 MiB, at once: not after reading all 3 MiB and
    # waiting out the keep-alive timeout.
    assert sent_at_close < 2 * MiB
    assert elapsed < 1


async def test_small_unread_body_is_skipped_and_the_connection_kept(autojump_clock):
    paths = []
    async with (
        open_memory_server(path_app(paths)) as server,
        open_memory_connection(server) as stream,
    ):
        client = H11Client(stream)
        first = await client.request_response("POST", "/upload", body=b"x" * 100_000)
        second = await client.request_response("GET", "/next")
    assert (first.body, second.body) == (b"/upload", b"/next")
    assert paths == ["/upload", "/next"]


# -- Expect: 100-continue ------------------------------------------------------


async def test_unread_expect_100_continue_request_closes_at_once(autojump_clock):
    # The client waits for "100 Continue" before it sends the body; a server
    # that answered without asking for the body must not wait for it.
    paths = []
    async with (
        open_memory_server(path_app(paths), timeout_keep_alive=30) as server,
        open_memory_connection(server) as stream,
    ):
        start = trio.current_time()
        await stream.send_all(
            b"POST /x HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\n"
            b"content-length: 5\r\n\r\n"
        )
        data = await read_until_closed(stream)
        elapsed = trio.current_time() - start
    assert status_of(data) == 200
    assert b"100 Continue" not in data
    assert data.endswith(b"\r\n\r\n/x")
    assert elapsed < 1


async def test_body_after_an_unread_expect_100_continue_is_not_a_request(
    autojump_clock,
):
    # A client that gives up waiting for "100 Continue" and sends its body
    # anyway: the connection is already over, and the body is never served.
    paths = []
    async with (
        open_memory_server(path_app(paths), timeout_keep_alive=30) as server,
        open_memory_connection(server) as stream,
    ):
        await stream.send_all(
            b"POST /x HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\n"
            b"content-length: %d\r\n\r\n" % len(SMUGGLED)
        )
        first = await stream.receive_some(65536)
        try:
            await stream.send_all(SMUGGLED)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        rest = await read_until_closed(stream)
    assert status_of(first) == 200
    assert first.endswith(b"/x")
    assert rest == b""
    assert paths == ["/x"]


# -- Content-Length --------------------------------------------------------------


@pytest.mark.parametrize("digits", [21, 22, 30])
async def test_content_length_of_more_than_20_digits_gets_400(digits, autojump_clock):
    # "0...05": a length of 5 to a lax parser; h11 refuses over 20 digits,
    # and both parsers must answer alike.
    paths = []
    length = b"5".rjust(digits, b"0")
    async with (
        open_memory_server(path_app(paths)) as server,
        open_memory_connection(server) as stream,
    ):
        await stream.send_all(
            b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: %s\r\n\r\nhello" % length
        )
        data = await read_until_closed(stream)
    assert status_of(data) == 400
    assert b"connection: close" in data
    assert paths == []


async def test_content_length_of_20_digits_is_a_length(autojump_clock):
    paths = []
    length = b"5".rjust(20, b"0")
    async with (
        open_memory_server(path_app(paths)) as server,
        open_memory_connection(server) as stream,
    ):
        await stream.send_all(
            b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: %s\r\n"
            b"connection: close\r\n\r\nhello" % length
        )
        data = await read_until_closed(stream)
    assert status_of(data) == 200
    assert paths == ["/x"]


async def test_bytes_after_a_declined_upgrade_are_not_a_request(autojump_clock):
    # A client may start its new protocol right after asking to upgrade; the
    # server answered in HTTP/1.1 instead, and those bytes, whatever they
    # look like, are not requests.
    paths = []
    async with (
        open_memory_server(path_app(paths)) as server,
        open_memory_connection(server) as stream,
    ):
        await stream.send_all(
            b"GET /up HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\n"
            b"upgrade: example/1\r\n\r\n" + SMUGGLED
        )
        data = await read_until_closed(stream)
    assert status_of(data) == 200
    assert data.endswith(b"\r\n\r\n/up")
    assert b"/smuggled" not in data
    assert paths == ["/up"]
