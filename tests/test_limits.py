"""Hostile and broken clients: slow heads and bodies, readers that stop, limits."""

from __future__ import annotations

import pytest
import trio
from conftest import H11Client, connect, read_until_closed

from triasgi import Config
from triasgi.testing import open_memory_connection, open_memory_server, open_server

# The whole module runs against both request parsers (--http).
pytestmark = pytest.mark.usefixtures("http_backend")


async def hello(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


def status_of(data: bytes) -> int:
    assert data.startswith(b"HTTP/1.1 "), data[:100]
    return int(data[9:12])


async def still_serving(server) -> None:
    async with open_memory_connection(server) as stream:
        reply = await H11Client(stream).request_response("GET", "/ok")
    assert (reply.status, reply.body) == (200, b"hello")


# -- slow request heads -----------------------------------------------------------


async def test_slowloris_head_gets_408_after_the_header_timeout(autojump_clock):
    async with open_memory_server(hello) as server:
        async with open_memory_connection(server) as stream:
            start = trio.current_time()
            await stream.send_all(b"GET / HTTP/1.1\r\n")
            # A byte now and then does not extend the deadline.
            for _ in range(5):
                await trio.sleep(1)
                await stream.send_all(b"x-a: b\r\n")
            data = await read_until_closed(stream)
            assert trio.current_time() - start == pytest.approx(10)
        assert status_of(data) == 408
        assert b"connection: close\r\n" in data
        await still_serving(server)


async def test_header_timeout_is_configurable_and_counts_from_the_first_byte(autojump_clock):
    async with open_memory_server(hello, timeout_request_header=3, timeout_keep_alive=20) as server:
        async with open_memory_connection(server) as stream:
            await trio.sleep(15)  # idle, within keep-alive
            start = trio.current_time()
            await stream.send_all(b"GET / HT")
            data = await read_until_closed(stream)
            assert trio.current_time() - start == pytest.approx(3)
        assert status_of(data) == 408


async def test_idle_connection_still_closes_quietly_at_keepalive(autojump_clock):
    async with open_memory_server(hello, timeout_keep_alive=5) as server:
        async with open_memory_connection(server) as stream:
            client = H11Client(stream)
            assert (await client.request_response()).status == 200
            start = trio.current_time()
            assert await read_until_closed(stream) == b""
            assert trio.current_time() - start == pytest.approx(5)


# -- limits on the head ---------------------------------------------------------------


async def test_long_request_line_gets_414():
    async with open_memory_server(hello, limit_request_line=100) as server:
        async with open_memory_connection(server) as stream:
            await stream.send_all(b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nhost: x\r\n\r\n")
            data = await read_until_closed(stream)
        assert status_of(data) == 414
        async with open_memory_connection(server) as stream:
            target = "/" + "a" * 80
            assert (await H11Client(stream).request_response("GET", target)).status == 200


async def test_endless_request_line_gets_414_before_it_ends():
    async with open_memory_server(hello) as server:
        async with open_memory_connection(server) as stream:
            await stream.send_all(b"GET /" + b"a" * 8200)
            with trio.fail_after(1):
                data = await read_until_closed(stream)
        assert status_of(data) == 414
        await still_serving(server)


async def test_too_many_header_fields_get_431():
    async with open_memory_server(hello, limit_request_fields=5) as server:
        async with open_memory_connection(server) as stream:
            headers = [(f"x-h{i}", "v") for i in range(5)]  # with host: 6
            await H11Client(stream).request("GET", "/", headers)
            data = await read_until_closed(stream)
        assert status_of(data) == 431
        async with open_memory_connection(server) as stream:
            assert (await H11Client(stream).request_response("GET", "/", headers[:4])).status == 200


async def test_oversized_header_field_gets_431():
    async with open_memory_server(hello, limit_request_field_size=200) as server:
        async with open_memory_connection(server) as stream:
            await H11Client(stream).request("GET", "/", [("cookie", "c" * 200)])
            data = await read_until_closed(stream)
        assert status_of(data) == 431
        async with open_memory_connection(server) as stream:
            assert (await H11Client(stream).request_response("GET", "/", [("cookie", "c" * 190)])).status == 200


def test_limits_are_checked_settings():
    with pytest.raises(ValueError, match="limit_request_line must be at least 1"):
        Config(limit_request_line=0)
    with pytest.raises(ValueError, match="limit_max_connections must be at least 1"):
        Config(limit_max_connections=0)


# -- slow request bodies ---------------------------------------------------------------


async def test_stalled_body_is_a_disconnect_for_the_app(autojump_clock):
    received = []

    async def reader(scope, receive, send):
        if scope["type"] != "http":
            return
        while True:
            message = await receive()
            received.append((trio.current_time(), message))
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break

    async with open_memory_server(reader, timeout_request_body=30) as server:
        async with open_memory_connection(server) as stream:
            await stream.send_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc")
            start = trio.current_time()
            assert await read_until_closed(stream) == b""
    (_, first), (t2, second) = received
    assert first == {"type": "http.request", "body": b"abc", "more_body": True}
    assert second == {"type": "http.disconnect"}
    assert t2 - start == pytest.approx(30)


async def test_slow_but_moving_body_is_not_cut(autojump_clock):
    async def echo_size(scope, receive, send):
        if scope["type"] != "http":
            return
        size = 0
        while True:
            message = await receive()
            assert message["type"] == "http.request"
            size += len(message["body"])
            if not message["more_body"]:
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(size).encode()})

    async with open_memory_server(echo_size, timeout_request_body=5) as server:
        async with open_memory_connection(server) as stream:
            await stream.send_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 8\r\n\r\n")
            for _ in range(8):
                await trio.sleep(4)
                await stream.send_all(b"x")
            data = await read_until_closed_or_response(stream)
    assert data.endswith(b"\r\n\r\n8")


async def read_until_closed_or_response(stream) -> bytes:
    data = b""
    while not data.endswith(b"8"):
        data += await stream.receive_some(1000)
    return data


# -- clients that stop reading ----------------------------------------------------------


async def test_client_that_stops_reading_is_dropped_after_the_write_timeout(autojump_clock):
    outcome = []

    async def firehose(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] == "/ok":
            return await hello(scope, receive, send)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
        except OSError as exc:
            outcome.append((trio.current_time(), str(exc)))

    async with open_memory_server(firehose, timeout_write=20) as server:
        async with open_memory_connection(server, lockstep=True) as stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            start = trio.current_time()
            await stream.receive_some(100)  # the head arrives; then we stop reading
            while not outcome:
                await trio.sleep(1)
        [(when, message)] = outcome
        assert when - start == pytest.approx(20, abs=1)
        assert message == "The client stopped reading."
        await still_serving(server)


# -- too many connections ----------------------------------------------------------------


async def test_beyond_max_connections_the_server_stops_accepting(caplog):
    caplog.set_level("WARNING", logger="triasgi.error")
    async with open_server(hello, limit_max_connections=2) as server:
        first, second = await connect(server), await connect(server)
        for stream in (first, second):
            assert (await H11Client(stream).request_response()).status == 200
        waiting = [await connect(server) for _ in range(3)]  # in the backlog
        for stream in waiting:
            await stream.send_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        with trio.move_on_after(0.3):
            await waiting[0].receive_some(100)
            pytest.fail("a connection beyond the limit was served")
        await first.aclose()
        with trio.fail_after(5):
            data = await waiting[0].receive_some(1000)
        assert status_of(data) == 200
    lines = [r.getMessage() for r in caplog.records if "limit_max_connections" in r.getMessage()]
    assert lines == ["2 connections open (limit_max_connections): not accepting more until some close."]


@pytest.mark.parametrize("line_bytes", [9_000, 20_000])
async def test_long_request_line_gets_414_in_one_read_on_a_real_socket(line_bytes):
    # Over limit_request_line (8190), and from 20,000 bytes over the whole
    # head's limit (16384) too: the request line is what is too long.
    async with open_server(hello) as server:
        stream = await connect(server)
        request = b"GET /" + b"a" * line_bytes + b" HTTP/1.1\r\nhost: x\r\n\r\n"
        with trio.fail_after(5):
            try:
                await stream.send_all(request)
            except trio.BrokenResourceError:
                pass  # the answer came before the whole request was taken
            data = await read_until_closed(stream)
    assert status_of(data) == 414
