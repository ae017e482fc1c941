"""A WebSocket client (wsproto) on an in-memory connection into the real server."""

from __future__ import annotations

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

from .._server import Server
from ._server import open_memory_connection

_READ_SIZE = 64 * 1024
# How long leaving the session waits for the server to answer our close frame.
_CLOSE_WAIT_SECONDS = 5.0


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

    Get one from :meth:`MemoryClient.open_websocket` or
    :func:`open_websocket`.

    Attributes:
        subprotocol: the subprotocol the app accepted, or None.
        headers: the extra headers of the app's ``websocket.accept``.
        close_code: once closed, the close code (1006 for a lost connection).
        close_reason: once closed, the close reason.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._events: deque[Event] = deque()
        self._text: list[str] = []
        self._bytes: list[bytes] = []
        self.subprotocol: str | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None

    # -- sending -------------------------------------------------------------

    async def send_text(self, text: str) -> None:
        """Send a text message.

        Raises:
            WebSocketClosed: the session is closed.
        """
        await self._send(TextMessage(data=text))

    async def send_bytes(self, data: bytes) -> None:
        """Send a binary message.

        Raises:
            WebSocketClosed: the session is closed.
        """
        await self._send(BytesMessage(data=data))

    # -- receiving -----------------------------------------------------------

    async def receive(self) -> str | bytes:
        """Wait for the next whole message from the app.

        Pings are answered on the way.

        Returns:
            The message: ``str`` for a text message, ``bytes`` for binary.

        Raises:
            WebSocketClosed: the app closed the session, or the connection
                was lost, before another message came.
        """
        while True:
            event = await self._next_event()
            if isinstance(event, TextMessage):
                self._text.append(event.data)
                if event.message_finished:
                    text = "".join(self._text)
                    self._text.clear()
                    return text
            elif isinstance(event, BytesMessage):
                self._bytes.append(bytes(event.data))
                if event.message_finished:
                    data = b"".join(self._bytes)
                    self._bytes.clear()
                    return data
            elif isinstance(event, Ping):
                await self._write(self._ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                await self._closed_by_peer(event)
                assert self.close_code is not None
                raise WebSocketClosed(self.close_code, self.close_reason or "")

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

        Messages that arrive before the answer are dropped.  Closing a
        closed session does nothing.
        """
        if self._ws.state is not ConnectionState.OPEN:
            await trio.lowlevel.checkpoint()
            return
        await self._write(self._ws.send(CloseConnection(code=code, reason=reason)))
        self.close_code, self.close_reason = code, reason
        while not self._closed():
            event = await self._next_event()
            if isinstance(event, CloseConnection):
                self._ws_closed(event)

    async def drop(self) -> None:
        """Lose the connection at once, without a close frame.

        The app sees ``websocket.disconnect`` with code 1006.
        """
        await trio.aclose_forcefully(self._stream)
        if self.close_code is None:
            self.close_code, self.close_reason = 1006, ""

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
        await self._write(self._ws.send(request))
        event = await self._next_event(during_handshake=True)
        if isinstance(event, AcceptConnection):
            self.subprotocol = event.subprotocol
            self.headers = _byte_pairs(event.extra_headers)
            return
        if isinstance(event, RejectConnection):
            body = b""
            more = event.has_body
            while more:
                part = await self._next_event(during_handshake=True)
                if not isinstance(part, RejectData):
                    break
                body += part.data
                more = not part.body_finished
            raise WebSocketRejected(event.status_code, _byte_pairs(event.headers), body)
        raise RuntimeError(f"Unexpected handshake event from the server: {event!r}")

    async def close_on_exit(self) -> None:
        if self._ws.state is not ConnectionState.OPEN:
            return
        with trio.move_on_after(_CLOSE_WAIT_SECONDS) as scope:
            scope.shield = True
            try:
                await self.close()
            except WebSocketClosed:
                pass

    async def _send(self, event: Event) -> None:
        try:
            data = self._ws.send(event)
        except LocalProtocolError:
            raise self._closed_error() from None
        await self._write(data)

    async def _write(self, data: bytes) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._lost()
            raise self._closed_error() from None

    async def _next_event(self, *, during_handshake: bool = False) -> Event:
        while not self._events:
            if self._ws.state is ConnectionState.CLOSED and self.close_code is not None:
                raise self._closed_error()
            try:
                data: bytes | None = bytes(await self._stream.receive_some(_READ_SIZE))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                if during_handshake:
                    raise ConnectionError(
                        "The server closed the connection during the WebSocket "
                        "handshake; is the path a WebSocket route?"
                    )
                data = None
            self._ws.receive_data(data)
            self._events.extend(self._ws.events())
        return self._events.popleft()

    async def _closed_by_peer(self, event: CloseConnection) -> None:
        if self._ws.state is ConnectionState.REMOTE_CLOSING:
            try:
                await self._write(self._ws.send(event.response()))
            except WebSocketClosed:
                pass
        self._ws_closed(event)

    def _ws_closed(self, event: CloseConnection) -> None:
        if self.close_code is None or self.close_code == 1006 or event.code == 1006:
            self.close_code, self.close_reason = event.code, event.reason or ""

    def _closed(self) -> bool:
        return self._ws.state is ConnectionState.CLOSED

    def _lost(self) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = 1006, ""

    def _closed_error(self) -> WebSocketClosed:
        self._lost()
        assert self.close_code is not None
        return WebSocketClosed(self.close_code, self.close_reason or "")

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
        try:
            yield ws
        finally:
            await ws.close_on_exit()


def _byte_pairs(headers: Iterable[tuple[Any, Any]]) -> list[tuple[bytes, bytes]]:
    """wsproto gives headers as bytes or str pairs; tests get lower-case bytes."""
    return [(_bytes(name).lower(), _bytes(value)) for name, value in headers]


def _bytes(value: bytes | str) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else bytes(value)
