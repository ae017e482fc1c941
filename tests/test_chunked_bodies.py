"""Malformed chunked request bodies, as a client (or a proxy in front) sees them.

Raw bytes on a real socket, on both request parsers: a bad body gets a 400
with ``connection: close`` while no response has started, and a chunk size
that a 64-bit proxy would read differently is refused before any of the
bytes after it are taken for body.
"""

from __future__ import annotations

import pytest
from conftest import connect, read_until_closed

from triasgi.testing import open_server

pytestmark = pytest.mark.usefixtures("http_backend")

HEAD = b"POST /up HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"


def reading_app(received, answer=True):
    """Read the whole body, then answer 200 with what was read."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request":
                break
            body += message["body"]
            if not message["more_body"]:
                break
        if answer:
            await send({"type": "http.response.start", "status": 200})
            await send({"type": "http.response.body", "body": body})

    return app


async def exchange(server, data: bytes) -> bytes:
    stream = await connect(server)
    await stream.send_all(data)
    reply = await read_until_closed(stream)
    await stream.aclose()  # the server lingers until it sees our end
    return reply


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nabc\r\n0\r\n\r\n",  # not a hex size
        b"3\r\nabcXY0\r\n\r\n",  # no CRLF after the chunk
        b"3\r\nabcdef\r\n0\r\n\r\n",  # more data than the size said
        b"-1\r\na\r\n0\r\n\r\n",
    ],
    ids=["bad size", "missing crlf", "overrun", "negative size"],
)
async def test_a_malformed_chunked_body_gets_400_and_a_close(body):
    received = []
    async with open_server(reading_app(received)) as server:
        reply = await exchange(server, HEAD + body)
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"\r\nconnection: close\r\n" in reply
    assert received[-1] == {"type": "http.disconnect"}


async def test_a_malformed_body_after_the_response_started_only_closes():
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"early", "more_body": True})
        while (await receive())["type"] == "http.request":
            pass

    async with open_server(app) as server:
        reply = await exchange(server, HEAD + b"3\r\nabcXY")
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"400" not in reply
    assert reply.endswith(b"5\r\nearly\r\n")  # cut: no last chunk


@pytest.mark.parametrize(
    "size",
    [b"10000000000000003", b"1" + b"0" * 19, b"FFFFFFFFFFFFFFFFF"],
    ids=["2^64+3", "20 digits", "17 digits"],
)
async def test_a_chunk_size_past_64_bits_is_refused_before_its_bytes(size):
    received = []
    smuggled = b"GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n"
    async with open_server(reading_app(received)) as server:
        reply = await exchange(server, HEAD + size + b"\r\nabc\r\n" + smuggled)
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert reply.count(b"HTTP/1.1") == 1
    # Not one byte after the size line reached the app as body.
    assert [m for m in received if m.get("body")] == []


async def test_a_chunk_of_16_hex_digits_is_still_a_chunk():
    received = []
    body = b"0000000000000003\r\nabc\r\n0\r\n\r\n"
    async with open_server(reading_app(received)) as server:
        reply = await exchange(server, HEAD + body)
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    assert reply.endswith(b"\r\n\r\nabc")
