"""send() and receive() let other tasks run only when they must, and in turns.

A send the kernel takes at once is a cancellation point but not a schedule
point (docs/performance.md): the app's task runs on.  These tests, over real
sockets, hold the two promises that come with it: an app that streams in a
tight loop, with no other await, does not keep the other connections waiting
(its turn ends after ``TURN_SECONDS``), and such an app is still cancelled
when its client has gone and the grace period ends, or when a graceful
shutdown times out.

The streaming clients read in threads as fast as the kernel gives them
bytes, so that no send ever waits: an app whose sends never let the other
tasks run would then hold the server until the bound below, and each test
would fail on what the log says.
"""

from __future__ import annotations

import functools
import socket
import time

import h2.config
import h2.events
import h2.settings
import pytest
import trio
from conftest import H11Client, connect
from h2client import _Connection as H2ClientConnection

import triasgi
from triasgi.testing import open_server

# The whole module runs against both request parsers (--http).
pytestmark = pytest.mark.usefixtures("http_backend")

# How long a streaming app goes on at most: a bound for a broken server, so
# that the test ends (and fails) rather than hangs.  Never reached when the
# tests pass, which takes a few milliseconds of streaming.
_GIVE_UP_SECONDS = 10.0
_CHUNK = b"x" * 16
_STREAM_END = b"0\r\n\r\n"


def _stream_in_a_thread(
    port: int, target: bytes, *, half_close: bool = False
) -> tuple[int, bool]:
    """GET ``target`` and read the response as fast as it comes, until EOF
    or the end of the chunked body; the bytes read and whether it ended.

    ``half_close``: send our EOF once the response has begun, as a client
    that has gone away but whose socket still reads.
    """
    received = 0
    tail = b""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nhost: a\r\n\r\n")
        sock.settimeout(_GIVE_UP_SECONDS * 2)
        while True:
            data = sock.recv(1 << 20)
            if not data:
                return received, False
            if half_close and not received:
                sock.shutdown(socket.SHUT_WR)
            received += len(data)
            tail = (tail + data)[-len(_STREAM_END) :]
            if tail == _STREAM_END:
                return received, True


def _websocket_in_a_thread(port: int, *, half_close: bool = False) -> tuple[int, bool]:
    """Open a WebSocket on ``/ws`` and read its frames as fast as they come,
    answering the server's close frame, until EOF; the messages read and
    whether a close frame came.  ``half_close`` as for _stream_in_a_thread.
    """
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nhost: a\r\nupgrade: websocket\r\n"
            b"connection: upgrade\r\nsec-websocket-version: 13\r\n"
            b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        sock.settimeout(_GIVE_UP_SECONDS * 2)
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            buffer += sock.recv(65536)
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        messages = 0
        closed = False
        while True:
            # Whole frames; the server sends small ones only (length < 126).
            at = 0
            while len(buffer) - at >= 2 and len(buffer) - at >= 2 + buffer[at + 1]:
                opcode = buffer[at] & 0x0F
                at += 2 + buffer[at + 1]
                if opcode == 0x8:
                    closed = True
                    # Our close frame, masked with a zero key: code 1000.
                    sock.sendall(b"\x88\x82\x00\x00\x00\x00\x03\xe8")
                else:
                    messages += 1
            buffer = buffer[at:]
            data = sock.recv(1 << 20)
            if not data:
                return messages, closed
            if half_close and messages:
                sock.shutdown(socket.SHUT_WR)
                half_close = False
            buffer += data


def _h2_stream_in_a_thread(port: int, *, half_close: bool = False) -> tuple[int, bool]:
    """The same as _stream_in_a_thread over HTTP/2 (prior knowledge), with
    windows so large that no send ever waits for one; the body bytes read and
    whether the stream ended."""
    config = h2.config.H2Configuration(client_side=True, header_encoding=None)
    conn = H2ClientConnection(config)  # reads on after a graceful GOAWAY
    conn.local_settings = h2.settings.Settings(
        client=True,
        initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1},
    )
    conn.initiate_connection()
    conn.increment_flow_control_window(2**31 - 1 - 65535)
    conn.send_headers(
        1,
        [(b":method", b"GET"), (b":path", b"/stream"), (b":scheme", b"http"),
         (b":authority", b"a")],
        end_stream=True,
    )  # fmt: skip
    received = 0
    writing = True
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(conn.data_to_send())
        sock.settimeout(_GIVE_UP_SECONDS * 2)
        while True:
            data = sock.recv(1 << 20)
            if not data:
                return received, False
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    if half_close and writing:
                        sock.shutdown(socket.SHUT_WR)
                        writing = False
                    received += len(event.data)
                elif isinstance(event, h2.events.StreamEnded):
                    return received, True
            if writing:
                # Settings acks and the like; nothing once half-closed.
                sock.sendall(conn.data_to_send())


def streaming_app(log: list[str], stop: list[bool]):
    """Streams small chunks on ``/stream``, or small messages on a WebSocket,
    with no await but send(); ``/other`` answers at once and notes whether
    the stream is still going."""
    streaming = []

    async def app(scope, receive, send):
        if scope["type"] == "websocket":
            assert (await receive())["type"] == "websocket.connect"
            await send({"type": "websocket.accept"})
            message = {"type": "websocket.send", "bytes": _CHUNK}
            end = {"type": "websocket.close"}
        elif scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200})
            if scope["path"] == "/other":
                log.append("other answered while streaming" if streaming else "other")
                await send({"type": "http.response.body", "body": b"other"})
                return
            message = {"type": "http.response.body", "body": _CHUNK, "more_body": True}
            end = {"type": "http.response.body", "body": b""}
        else:
            return
        log.append("streaming")
        streaming.append(True)
        give_up = time.monotonic() + _GIVE_UP_SECONDS
        try:
            while not stop and time.monotonic() < give_up:
                try:
                    await send(message)
                except triasgi.ClientDisconnected:
                    # A stubborn app: it goes on, and only the grace period
                    # can stop it.
                    if "disconnected" not in log:
                        log.append("disconnected")
        except trio.Cancelled:
            log.append("cancelled")
            raise
        finally:
            streaming.clear()
        log.append("stopped" if stop else "gave up")
        await send(end)

    return app


async def _read_stream(open_stream, port: int, result: list) -> None:
    result.append(await trio.to_thread.run_sync(open_stream, port))


async def _wait_for(log: list[str], entry: str) -> None:
    while entry not in log:
        await trio.sleep(0.001)


def _http_stream(port: int, half_close: bool = False) -> tuple[int, bool]:
    return _stream_in_a_thread(port, b"/stream", half_close=half_close)


# A response streamed in body messages (HTTP/1.1 and HTTP/2), and a
# WebSocket's messages.
STREAMS = pytest.mark.parametrize(
    "open_stream",
    [_http_stream, _h2_stream_in_a_thread, _websocket_in_a_thread],
    ids=["http", "http2", "websocket"],
)


@STREAMS
async def test_a_tight_streaming_loop_does_not_hold_up_other_connections(open_stream):
    log: list[str] = []
    stop: list[bool] = []
    result = []
    async with open_server(streaming_app(log, stop)) as server:
        port = server.addresses[0][1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_stream, open_stream, port, result)
            await _wait_for(log, "streaming")
            client = H11Client(await connect(server))
            reply = await client.request_response("GET", "/other")
            stop.append(True)
    assert reply.body == b"other"
    assert log == ["streaming", "other answered while streaming", "stopped"]
    received, ended = result[0]
    assert ended
    assert received > 0


@STREAMS
async def test_an_app_that_only_sends_is_cancelled_when_its_grace_period_ends(
    open_stream,
):
    # The client sends its EOF and reads on: the app's sends all succeed, and
    # only the connection task's read (which runs when the app's turn ends)
    # tells it the client has gone.  The app ignores that and sends on.
    log: list[str] = []
    result: list[tuple[int, bool]] = []
    async with open_server(
        streaming_app(log, []), disconnect_grace_period=0.2
    ) as server:
        half_closing = functools.partial(open_stream, half_close=True)
        await _read_stream(half_closing, server.addresses[0][1], result)
    assert log == ["streaming", "disconnected", "cancelled"]
    received, ended = result[0]
    assert received > 0
    if open_stream is not _websocket_in_a_thread:
        assert not ended  # the response could not end: the connection closed


@STREAMS
async def test_an_app_that_only_sends_is_cancelled_when_a_graceful_shutdown_times_out(
    open_stream,
):
    log: list[str] = []
    result = []
    async with open_server(
        streaming_app(log, []), timeout_graceful_shutdown=0.2
    ) as server:
        port = server.addresses[0][1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_stream, open_stream, port, result)
            await _wait_for(log, "streaming")
            server.shutdown()
    if open_stream is _websocket_in_a_thread:
        # The shutdown's close frame (1012) is a disconnect for the app.
        assert log == ["streaming", "disconnected", "cancelled"]
    else:
        assert log == ["streaming", "cancelled"]
    received, ended = result[0]
    assert received > 0
    if open_stream is not _websocket_in_a_thread:
        assert not ended
