"""A WebSocket client (wsproto) on an in-memory connection into the real server."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any, final

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError

from .._serve._server import Server
from ._server import open_memory_connection, open_nursery_unwrapped

_READ_SIZE = 64 * 1024
# How long leaving the session waits for the server to answer our close frame.
_CLOSE_WAIT_SECONDS = 5.0
_STREAM_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)


class WebSocketRejected(Exception):
    """The app denied the WebSocket handshake.

    Attributes:
        status: the HTTP status of the denial (403 for a plain
            ``websocket.close`` before accepting).
        headers: the response headers, as lower-case byte pairs.
        body: the response body.
    """

    def __init__(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        super().__init__(f"The server denied the WebSocket handshake with {status}.")
        self.status = status
        self.headers = headers
        self.body = body


class WebSocketClosed(Exception):
    """The WebSocket session is closed; nothing more can be sent or received.

    Attributes:
        code: the close code (1006 when the connection was lost without a
            close frame).
        reason: the close reason, possibly empty.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"The WebSocket is closed with code {code}: {reason!r}.")
        self.code = code
        self.reason = reason


@final
class MemoryWebSocket:
    """The client's side of a WebSocket session over an in-memory connection.

    A task of the session reads from the server all the time, as a real
    client does: it answers the server's pings (so a test may sleep through
    many ping intervals under ``autojump_clock``) and queues the app's
    messages for :meth:`receive`.  Get one from
    :meth:`MemoryClient.open_websocket` or :func:`open_websocket`.

    Attributes:
        subprotocol: the subprotocol the app accepted, or None.
        headers: the extra headers of the app's ``websocket.accept``.
        close_code: once closed, the code of the server's close frame, or
            1006 when the connection was lost without one.
        close_reason: once closed, the reason of the server's close frame.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._events: deque[Event] = deque()
        self._write_lock = trio.Lock()
        self._messages_in, self._messages = trio.open_memory_channel[str | bytes](
            math.inf
        )
        self._closed = trio.Event()
        self.subprotocol: str | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None

    # -- sending -------------------------------------------------------------

    async def send_text(self, text: str) -> None:
        """Send a text message.

        Raises:
            WebSocketClosed: the session is closed or closing.
        """
        await self._send_message(TextMessage(data=text))

    async def send_bytes(self, data: bytes) -> None:
        """Send a binary message.

        Raises:
            WebSocketClosed: the session is closed or closing.
        """
        await self._send_message(BytesMessage(data=data))

    # -- receiving -----------------------------------------------------------

    async def receive(self) -> str | bytes:
        """Wait for the next whole message from the app.

        Returns:
            The message: ``str`` for a text message, ``bytes`` for binary.

        Raises:
            WebSocketClosed: the session closed (by the app, by
                :meth:`close`, or by losing the connection) and every
                message that came before has been received.
        """
        try:
            return await self._messages.receive()
        except trio.EndOfChannel:
            raise self._closed_error() from None

    async def receive_text(self) -> str:
        """Wait for the next message and check that it is text.

        Raises:
            TypeError: the app sent a binary message.
            WebSocketClosed: the session closed first.
        """
        message = await self.receive()
        if not isinstance(message, str):
            raise TypeError(f"Expected a text message, got bytes: {message[:80]!r}")
        return message

    async def receive_bytes(self) -> bytes:
        """Wait for the next message and check that it is binary.

        Raises:
            TypeError: the app sent a text message.
            WebSocketClosed: the session closed first.
        """
        message = await self.receive()
        if not isinstance(message, bytes):
            raise TypeError(f"Expected a binary message, got text: {message[:80]!r}")
        return message

    # -- closing -------------------------------------------------------------

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the session and wait for the app's close frame in answer.

        Messages the app sent before its answer can still be received.
        Closing a closed session does nothing.
        """
        if self._ws.state is ConnectionState.OPEN:
            await self._send(CloseConnection(code=code, reason=reason))
        await self._closed.wait()

    async def drop(self) -> None:
        """Lose the connection at once, without a close frame.

        The app sees ``websocket.disconnect`` with code 1006.
        """
        await trio.aclose_forcefully(self._stream)
        await self._closed.wait()

    @property
    def closed(self) -> bool:
        """True once the session is over, whichever side ended it."""
        return self._closed.is_set()

    # -- internals -----------------------------------------------------------

    async def handshake(
        self,
        host: str,
        target: str,
        subprotocols: Iterable[str],
        headers: Iterable[tuple[str, str]],
    ) -> None:
        request = Request(
            host=host,
            target=target,
            subprotocols=list(subprotocols),
            extra_headers=[(k.lower().encode(), v.encode()) for k, v in headers],
        )
        await self._stream.send_all(self._ws.send(request))
        event = await self._next_handshake_event()
        if isinstance(event, AcceptConnection):
            self.subprotocol = event.subprotocol
            self.headers = _byte_pairs(event.extra_headers)
            return
        if isinstance(event, RejectConnection):
            body = b""
            more = event.has_body
            while more:
                part = await self._next_handshake_event()
                if not isinstance(part, RejectData):
                    break
                body += part.data
                more = not part.body_finished
            raise WebSocketRejected(event.status_code, _byte_pairs(event.headers), body)
        raise RuntimeError(f"Unexpected handshake event from the server: {event!r}")

    async def _next_handshake_event(self) -> Event:
        while not self._events:
            try:
                data = await self._stream.receive_some(_READ_SIZE)
            except _STREAM_GONE:
                data = b""
            if not data:
                raise ConnectionError(
                    "The server closed the connection during the WebSocket "
                    "handshake; is the path a WebSocket route?"
                )
            self._ws.receive_data(bytes(data))
            self._events.extend(self._ws.events())
        return self._events.popleft()

    async def read_loop(self) -> None:
        """Read until the session is over: queue messages, answer pings."""
        text: list[str] = []
        binary: list[bytes] = []
        try:
            while self.close_code is None:
                while self._events:
                    event = self._events.popleft()
                    if isinstance(event, TextMessage):
                        text.append(event.data)
                        if event.message_finished:
                            self._messages_in.send_nowait("".join(text))
                            text.clear()
                    elif isinstance(event, BytesMessage):
                        binary.append(bytes(event.data))
                        if event.message_finished:
                            self._messages_in.send_nowait(b"".join(binary))
                            binary.clear()
                    elif isinstance(event, Ping):
                        await self._send(event.response())
                    elif isinstance(event, CloseConnection):
                        if self._ws.state is ConnectionState.REMOTE_CLOSING:
                            await self._send(event.response())
                        self.close_code = event.code
                        self.close_reason = event.reason or ""
                        return
                try:
                    data = bytes(await self._stream.receive_some(_READ_SIZE))
                except _STREAM_GONE:
                    data = b""
                # EOF: wsproto reports it as a close with code 1006.
                self._ws.receive_data(data or None)
                self._events.extend(self._ws.events())
        finally:
            if self.close_code is None:
                self.close_code, self.close_reason = 1006, ""
            self._messages_in.close()
            self._closed.set()

    async def close_on_exit(self) -> None:
        with trio.move_on_after(_CLOSE_WAIT_SECONDS) as scope:
            scope.shield = True
            await self.close()

    async def _send_message(self, event: Event) -> None:
        if self._ws.state is not ConnectionState.OPEN:
            await trio.lowlevel.checkpoint()
            raise self._closed_error()
        await self._send(event)

    async def _send(self, event: Event) -> None:
        async with self._write_lock:
            try:
                data = self._ws.send(event)
                await self._stream.send_all(data)
            except (LocalProtocolError, *_STREAM_GONE):
                raise self._closed_error() from None

    def _closed_error(self) -> WebSocketClosed:
        return WebSocketClosed(self.close_code or 1006, self.close_reason or "")

    def __repr__(self) -> str:
        return f"<MemoryWebSocket {self._ws.state.name.lower()}>"


@asynccontextmanager
async def open_websocket(
    server: Server,
    target: str = "/",
    *,
    host: str = "testserver",
    port: int = 80,
    subprotocols: Iterable[str] = (),
    headers: Iterable[tuple[str, str]] = (),
    client: tuple[str, int] = ("127.0.0.1", 50000),
) -> AsyncIterator[MemoryWebSocket]:
    """Open a WebSocket session with ``server`` over an in-memory connection.

    Args:
        server: a server from :func:`open_memory_server`.
        target: the request target, such as ``/ws?room=1``.
        host: the host name sent in the ``Host`` header.
        port: the port the app sees in ``scope["server"]``.
        subprotocols: subprotocols to offer, in order of preference.
        headers: extra request headers as ``(name, value)`` strings.
        client: the address the app sees as ``scope["client"]``.

    Yields:
        The open session; leaving the block closes it with code 1000 if it
        is still open, then closes the connection.

    Raises:
        WebSocketRejected: the app denied the handshake.
    """
    host_header = host if port == 80 else f"{host}:{port}"
    async with open_memory_connection(
        server, client=client, sockname=(host, port)
    ) as stream:
        ws = MemoryWebSocket(stream)
        await ws.handshake(host_header, target, subprotocols, headers)
        async with open_nursery_unwrapped() as nursery:
            nursery.start_soon(ws.read_loop)
            try:
                yield ws
            finally:
                await ws.close_on_exit()
                nursery.cancel_scope.cancel()


def _byte_pairs(headers: Iterable[tuple[Any, Any]]) -> list[tuple[bytes, bytes]]:
    """wsproto gives headers as bytes or str pairs; tests get lower-case bytes."""
    return [(_bytes(name).lower(), _bytes(value)) for name, value in headers]


def _bytes(value: bytes | str) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else bytes(value)
