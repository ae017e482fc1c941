"""The server's WebSocket pings: only the answer to the last ping counts.

A raw wsproto client decides exactly how pings are answered; the in-memory
server and ``autojump_clock`` make the timeouts instant.
"""

from __future__ import annotations

from collections import deque

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from triasgi.testing import open_memory_connection, open_memory_server

# The whole module runs against both request parsers (--http).
pytestmark = pytest.mark.usefixtures("http_backend")


class PingAnswerer:
    """A WebSocket client that answers each ping with ``answer(payload)``."""

    def __init__(self, stream: trio.abc.Stream, answer) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.answer = answer
        self.pending: deque[object] = deque()
        self.pings: list[tuple[float, bytes]] = []

    async def handshake(self) -> object:
        await self.send(Request(host="example.test", target="/"))
        return await self.next_event()

    async def send(self, event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def next_event(self) -> object:
        """The next event that is not a ping; pings are answered on the way."""
        while True:
            while not self.pending:
                data = await self.stream.receive_some(65536)
                self.ws.receive_data(data or None)
                self.pending.extend(self.ws.events())
            event = self.pending.popleft()
            if not isinstance(event, Ping):
                return event
            self.pings.append((trio.current_time(), bytes(event.payload)))
            payload = self.answer(bytes(event.payload))
            if payload is not None:
                await self.send(Pong(payload=payload))


def echo_app(log):
    async def app(scope, receive, send):
        if scope["type"] != "websocket":
            return
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                log.append(message)
                return
            await send({"type": "websocket.send", "text": message.get("text")})

    return app


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(lambda payload: b"not the ping", id="other-payload"),
        pytest.param(lambda payload: b"", id="empty-payload"),
        pytest.param(lambda payload: payload + b"x", id="longer-payload"),
    ],
)
async def test_pong_with_the_wrong_payload_is_no_answer(answer, autojump_clock):
    log = []
    async with (
        open_memory_server(
            echo_app(log), ws_ping_interval=5, ws_ping_timeout=2
        ) as server,
        open_memory_connection(server) as stream,
    ):
        client = PingAnswerer(stream, answer)
        assert isinstance(await client.handshake(), AcceptConnection)
        start = trio.current_time()
        with trio.fail_after(30):  # virtual seconds: several pings' worth
            close = await client.next_event()
    assert isinstance(close, CloseConnection)
    assert close.code == 1011
    assert close.reason == "keepalive ping timeout"
    # One ping, answered wrongly, then the close when its timeout passed.
    assert [when - start for when, _ in client.pings] == [pytest.approx(5)]
    assert log == [
        {
            "type": "websocket.disconnect",
            "code": 1011,
            "reason": "keepalive ping timeout",
        }
    ]


async def test_pong_answering_an_earlier_ping_is_no_answer(autojump_clock):
    # The first ping is answered; later ones get the first one's payload.
    first = []

    def answer(payload: bytes) -> bytes:
        if not first:
            first.append(payload)
        return first[0]

    log = []
    async with (
        open_memory_server(
            echo_app(log), ws_ping_interval=5, ws_ping_timeout=2
        ) as server,
        open_memory_connection(server) as stream,
    ):
        client = PingAnswerer(stream, answer)
        assert isinstance(await client.handshake(), AcceptConnection)
        start = trio.current_time()
        with trio.fail_after(30):  # virtual seconds: several pings' worth
            close = await client.next_event()
    assert isinstance(close, CloseConnection)
    assert close.code == 1011
    times = [when - start for when, _ in client.pings]
    assert times == [pytest.approx(5), pytest.approx(10)]
    assert client.pings[0][1] != client.pings[1][1]
    assert log[0]["code"] == 1011


async def test_pong_with_the_ping_payload_keeps_the_connection(autojump_clock):
    log = []
    async with (
        open_memory_server(
            echo_app(log), ws_ping_interval=5, ws_ping_timeout=2
        ) as server,
        open_memory_connection(server) as stream,
    ):
        client = PingAnswerer(stream, lambda payload: payload)
        assert isinstance(await client.handshake(), AcceptConnection)
        other = []
        with trio.move_on_after(60):  # reading, and so answering each ping
            other.append(await client.next_event())
        assert other == []
        await client.send(TextMessage(data="still here"))
        reply = await client.next_event()
        assert isinstance(reply, TextMessage)
        assert reply.data == "still here"
        assert len(client.pings) >= 10
        await client.send(CloseConnection(code=1000))
        close = await client.next_event()
    assert isinstance(close, CloseConnection)
    assert close.code == 1000
    assert log[0]["code"] == 1000
