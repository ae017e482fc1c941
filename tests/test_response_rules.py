"""What the app may send, and what the client gets when it breaks the rules."""

from __future__ import annotations

import logging

import pytest
from conftest import H11Client, read_until_closed

from triasgi.testing import open_memory_connection, open_memory_server

# The whole module runs against both request parsers (--http).
pytestmark = pytest.mark.usefixtures("http_backend")


def status_of(data: bytes) -> int:
    assert data.startswith(b"HTTP/1.1 "), data[:100]
    return int(data[9:12])


def errors(caplog) -> list[str]:
    """The error lines logged, each with the text of its exception."""
    return [
        f"{r.getMessage()} {r.exc_info[1] if r.exc_info else ''}"
        for r in caplog.records
        if r.levelno >= logging.ERROR
    ]


# -- messages after the response ------------------------------------------------


async def test_send_after_the_complete_response_is_ignored(autojump_clock, caplog):
    # ASGI HTTP spec: messages after the response is complete are ignored.
    late = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = scope["path"].encode()
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": body})
        late.append(await send({"type": "http.response.body", "body": b"late"}))
        late.append(await send({"type": "http.response.start", "status": 404}))
        late.append(await send({"type": "http.response.body", "body": b"again"}))

    async with (
        open_memory_server(app) as server,
        open_memory_connection(server) as stream,
    ):
        client = H11Client(stream)
        first = await client.request_response("GET", "/1")
        second = await client.request_response("GET", "/2")
    assert (first.status, first.body) == (200, b"/1")
    assert (second.status, second.body) == (200, b"/2")
    # Each app call got through its late sends without an exception.
    assert late == [None] * 6
    assert errors(caplog) == []


# -- the status of http.response.start ---------------------------------------


@pytest.mark.parametrize("status", [100, 101, 103, 199])
async def test_informational_status_from_the_app_is_an_error_answered_with_500(
    status, autojump_clock, caplog
):
    # ASGI HTTP spec: http.response.start starts the final response; a 1xx
    # there would leave the client waiting for one.
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": status})
        await send({"type": "http.response.body", "body": b"body"})

    async with (
        open_memory_server(app) as server,
        open_memory_connection(server) as stream,
    ):
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        data = await read_until_closed(stream)
    assert status_of(data) == 500
    assert data.count(b"HTTP/1.1 ") == 1
    assert b"connection: close" in data
    assert any("'status'" in message for message in errors(caplog))


# -- the 500 answer to HEAD --------------------------------------------------------


@pytest.mark.parametrize("when", ["before-start", "after-start"])
async def test_head_request_whose_app_fails_gets_500_without_a_body(
    when, autojump_clock
):
    # RFC 9110 section 9.3.2: a response to HEAD has no content, even an
    # error answered by the server itself.
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if when == "after-start":
            await send({"type": "http.response.start", "status": 200})
        raise RuntimeError("boom")

    async with (
        open_memory_server(app) as server,
        open_memory_connection(server) as stream,
    ):
        await stream.send_all(b"HEAD / HTTP/1.1\r\nhost: a\r\n\r\n")
        data = await read_until_closed(stream)
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b"connection: close" in head.lower()
    assert sep
    assert rest == b""
