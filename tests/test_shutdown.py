"""Graceful shutdown, the hard stop, and what serve() leaves behind."""

from __future__ import annotations

import functools
import os

import pytest
import trio
import trio.testing
from conftest import H11Client, connect, read_until_closed

import triasgi
from triasgi import Config, Server
from triasgi._serve._connection import HTTP11Connection
from triasgi.testing import open_memory_connection

# The whole module runs against both request parsers (--http).
pytestmark = pytest.mark.usefixtures("http_backend")

REQUEST = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"


def recording_app(log, *, work_seconds=0.0, body=b"done"):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                log.append(message["type"])
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        try:
            await trio.sleep(work_seconds)
        except trio.Cancelled:
            log.append("request cancelled")
            raise
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": body})
        log.append("request done")

    return app


async def start_memory_server(nursery, app, **settings):
    server = Server(app, Config(access_log=False, **settings))
    await nursery.start(functools.partial(server.run, listen=False))
    return server


async def test_idle_keep_alive_connections_close_at_once(autojump_clock):
    log = []
    async with trio.open_nursery() as nursery:
        server = await start_memory_server(nursery, recording_app(log))
        async with open_memory_connection(server) as stream:
            await stream.send_all(REQUEST)
            assert (await stream.receive_some()).startswith(b"HTTP/1.1 200 ")
            start = trio.current_time()
            server.shutdown()
            assert await stream.receive_some() == b""
            assert trio.current_time() == start
    assert log == ["lifespan.startup", "request done", "lifespan.shutdown"]


async def test_idle_connection_serves_its_next_request_in_the_grace(autojump_clock):
    # A worker's grace: the next request of an idle keep-alive connection,
    # on its way as the shutdown begins, is served and told the connection
    # closes; one that stays idle through the grace is closed at its end.
    log = []
    server = Server(
        recording_app(log), Config(access_log=False), first_request_grace=0.5
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(server.run, listen=False))
        async with (
            open_memory_connection(server) as busy,
            open_memory_connection(server) as idle,
        ):
            await busy.send_all(REQUEST)
            assert b"connection: close" not in await busy.receive_some()
            start = trio.current_time()
            server.shutdown()
            await trio.sleep(0.4)
            await busy.send_all(REQUEST)
            data = await read_until_closed(busy)
            assert data.startswith(b"HTTP/1.1 200 OK")
            assert b"connection: close" in data
            assert await idle.receive_some() == b""
            assert trio.current_time() - start == pytest.approx(0.5)
    assert log == [
        "lifespan.startup",
        "request done",
        "request done",
        "lifespan.shutdown",
    ]


async def test_request_waiting_in_the_socket_at_shutdown_is_served(monkeypatch):
    # The next request reaches the server's socket just as the shutdown finds
    # the connection idle, before the connection task could see it: closing
    # on it unread would reset it.
    log = []
    client = None
    begin_shutdown = HTTP11Connection.begin_shutdown

    def request_arrives_then_begin_shutdown(conn):
        os.write(client.socket.fileno(), REQUEST)
        begin_shutdown(conn)

    monkeypatch.setattr(
        HTTP11Connection, "begin_shutdown", request_arrives_then_begin_shutdown
    )
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            triasgi.serve, recording_app(log), Config(port=0, access_log=False)
        )
        client = await connect(server)
        await client.send_all(REQUEST)
        assert (await client.receive_some()).startswith(b"HTTP/1.1 200 ")
        server.shutdown()
        with trio.fail_after(5):
            data = await read_until_closed(client)
        await client.aclose()
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert b"connection: close" in data
    assert log == [
        "lifespan.startup",
        "request done",
        "request done",
        "lifespan.shutdown",
    ]


async def test_request_crossing_the_shutdown_close_meets_no_reset():
    # An idle connection is closed with our EOF first; a request the client
    # sent before seeing it is read and dropped, not answered with a reset.
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            triasgi.serve, recording_app([]), Config(port=0, access_log=False)
        )
        client = await connect(server)
        await client.send_all(REQUEST)
        assert (await client.receive_some()).startswith(b"HTTP/1.1 200 ")
        server.shutdown()
        with trio.fail_after(5):
            assert await client.receive_some() == b""
            for _ in range(3):
                await client.send_all(REQUEST)
                await trio.sleep(0.05)
            # A reset would make the sends or this read fail.
            assert await client.receive_some() == b""
        await client.aclose()


async def test_in_flight_request_finishes_then_lifespan_shuts_down(autojump_clock):
    log = []
    async with trio.open_nursery() as nursery:
        server = await start_memory_server(nursery, recording_app(log, work_seconds=10))
        async with open_memory_connection(server) as stream:
            await stream.send_all(REQUEST)
            await trio.sleep(1)
            server.shutdown()
            data = await read_until_closed(stream)
            assert trio.current_time() == pytest.approx(10)
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert b"connection: close" in data
    assert data.endswith(b"done")
    assert log == ["lifespan.startup", "request done", "lifespan.shutdown"]


async def test_requests_past_the_shutdown_timeout_are_cancelled(autojump_clock):
    log = []
    async with trio.open_nursery() as nursery:
        server = await start_memory_server(
            nursery, recording_app(log, work_seconds=1000), timeout_graceful_shutdown=30
        )
        async with open_memory_connection(server) as stream:
            await stream.send_all(REQUEST)
            await trio.sleep(1)
            server.shutdown()
            await read_until_closed(stream)
            assert trio.current_time() == pytest.approx(31)
    assert log == ["lifespan.startup", "request cancelled", "lifespan.shutdown"]


async def test_a_client_that_stops_reading_cannot_hold_shutdown(autojump_clock):
    log = []
    app = recording_app(log, body=b"x" * (4 * 1024 * 1024))
    async with trio.open_nursery() as nursery:
        server = await start_memory_server(nursery, app, timeout_graceful_shutdown=30)
        async with open_memory_connection(server, lockstep=True) as stream:
            await stream.send_all(REQUEST)
            assert (await stream.receive_some(100)).startswith(b"HTTP/1.1 200 ")
            server.shutdown()
            start = trio.current_time()
            with trio.move_on_after(1000):
                await server_finished(nursery)
            assert trio.current_time() - start == pytest.approx(30, abs=0.02)
    assert log == ["lifespan.startup", "lifespan.shutdown"]


async def server_finished(nursery):
    while nursery.child_tasks:
        await trio.sleep(0.01)


async def test_lifespan_shutdown_waits_for_connections_to_drain(autojump_clock):
    log = []
    async with trio.open_nursery() as nursery:
        server = await start_memory_server(nursery, recording_app(log, work_seconds=5))
        async with open_memory_connection(server) as stream:
            await stream.send_all(REQUEST)
            await trio.sleep(1)
            server.shutdown()
            await trio.sleep(2)
            assert "lifespan.shutdown" not in log
            await read_until_closed(stream)
    assert log[-2:] == ["request done", "lifespan.shutdown"]


async def test_serve_leaves_no_task_and_no_socket_behind():
    before = trio.lowlevel.current_statistics().tasks_living
    log = []
    async with trio.open_nursery() as nursery:
        server = await nursery.start(triasgi.serve, recording_app(log),
                                     Config(port=0, access_log=False))
        host, port = server.addresses[0]
        client = H11Client(await connect(server))
        assert (await client.request_response()).status == 200
        server.shutdown()
    assert trio.lowlevel.current_statistics().tasks_living == before
    with pytest.raises(OSError):
        await trio.open_tcp_stream(host, port)
    assert log[-1] == "lifespan.shutdown"


async def test_cancelling_serve_is_a_hard_stop(autojump_clock):
    log = []
    async with trio.open_nursery() as nursery:
        server = await start_memory_server(nursery, recording_app(log, work_seconds=1000))
        async with open_memory_connection(server) as stream:
            await stream.send_all(REQUEST)
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
            assert await read_until_closed(stream) == b""
    assert trio.current_time() == pytest.approx(1)
    assert log == ["lifespan.startup", "request cancelled"]


async def test_unix_socket_is_served_and_removed_afterwards(tmp_path):
    path = str(tmp_path / "triasgi.sock")
    scopes = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        scopes.append(scope)
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"over uds"})

    async with trio.open_nursery() as nursery:
        server = await nursery.start(triasgi.serve, app, Config(uds=path, access_log=False))
        assert server.addresses == [(path, None)]
        stream = await trio.open_unix_socket(path)
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        data = await read_until_closed(stream)
        await stream.aclose()
        server.shutdown()
    assert data.endswith(b"over uds")
    assert scopes[0]["server"] == (path, None)
    assert scopes[0]["client"] is None
    assert not os.path.exists(path)


async def test_inherited_listening_fd_is_served():
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            triasgi.serve, recording_app([]), Config(fd=sock.detach(), access_log=False)
        )
        assert server.addresses == [("127.0.0.1", port)]
        client = H11Client(await connect(server))
        assert (await client.request_response()).body == b"done"
        server.shutdown()
