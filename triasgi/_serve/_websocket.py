"""A WebSocket session over wsproto, taking over an HTTP/1.1 connection.

The HTTP/1.1 connection hands over a request that asks for a WebSocket
upgrade.  h11 keeps the handshake (the 101 answer, or a 403, 500 or denial
response); wsproto's frame layer takes the connection once it is accepted::

    connection nursery (its cancel scope gets the disconnect deadline)
    ├── connection task: reads once more (a client that leaves during the
    │   handshake), then waits for the session to end
    └── WebSocketSession.run(), which runs the app, and in the session
        nursery:
        ├── shutdown watcher: close 1012 on graceful shutdown
        ├── frames: socket -> wsproto -> receive queue    (once accepted;
        │   from then on the only task that reads)
        └── keepalive: ping, close 1011 if no pong        (once accepted)

Every frame is produced and written under one lock, so frames leave in the
order wsproto (and its compressor) made them, whichever task sends.  The
frame task waits while ``ws_max_queue`` messages are queued for the app;
meanwhile nothing reads the socket, and TCP pushes back on the client.

Which close code the app sees in ``websocket.disconnect``: that of the side
that closed first.  The client's code (1005 if its close frame had none),
the server's (the app's own close, 1009, 1011, 1012, a protocol error), or
1006 when the connection ended with no close frame at all.
"""

from __future__ import annotations

import base64
import binascii
import logging
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import h11
import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.utilities import generate_accept_token

from .._asgi._messages import WebSocketState, check_headers, next_websocket_state
from .._asgi._scope import ASGI_VERSION, decode_path, split_target
from .._errors import ASGIProtocolError, ClientDisconnected
from .._logging import AccessEntry, log_access
from .._protocol._h1writer import REASON_PHRASES
from .._types import Message

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from .._protocol._h1parse import RequestHead
    from ._connection import HTTP11Connection

logger = logging.getLogger("triasgi.error")

# How long closing waits for the client's close frame after ours, and how
# long a final write may take.
_CLOSE_TIMEOUT = 5.0
# With per-message deflate, how much compressed data wsproto gets at a time.
_DEFLATE_SLICE = 4096

# RFC 6455 section 4.2.1, item 6, and section 4.4.
_WEBSOCKET_VERSION = b"13"


# -- the opening handshake (sans-io) ------------------------------------------


class HandshakeError(Exception):
    """A WebSocket upgrade request that breaks RFC 6455 section 4.2.1.

    Attributes:
        status: the HTTP status to answer with (400, or 426 for a version we
            do not speak).
        headers: extra response headers.
    """

    def __init__(
        self,
        reason: str,
        status: int = 400,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.headers = headers or []


@dataclass(frozen=True)
class Handshake:
    """What a valid upgrade request asks for."""

    key: bytes
    subprotocols: list[str]
    extension_offers: list[str]


def _comma_list(request: RequestHead, header: bytes) -> list[str]:
    values = []
    for name, value in request.headers:
        if name == header:
            values += [v.strip() for v in value.decode("latin-1").split(",")]
    return [v for v in values if v]


def is_websocket_upgrade(request: RequestHead) -> bool:
    """Whether ``request`` asks to become a WebSocket (its Upgrade header says so)."""
    return any(t.lower() == "websocket" for t in _comma_list(request, b"upgrade"))


def check_handshake(request: RequestHead) -> Handshake:
    """Validate a WebSocket upgrade request (RFC 6455 section 4.2.1).

    h11 has already checked the HTTP framing and the Host header.

    Raises:
        HandshakeError: the request is not a valid opening handshake.
    """
    if request.method != b"GET" or request.http_version != b"1.1":
        raise HandshakeError("a WebSocket handshake must be an HTTP/1.1 GET")
    if not any(t.lower() == "upgrade" for t in _comma_list(request, b"connection")):
        raise HandshakeError("no 'upgrade' token in the Connection header")
    keys = [value for name, value in request.headers if name == b"sec-websocket-key"]
    versions = [v for name, v in request.headers if name == b"sec-websocket-version"]
    if not versions:
        raise HandshakeError(
            "no Sec-WebSocket-Version header",
            headers=[(b"sec-websocket-version", _WEBSOCKET_VERSION)],
        )
    if versions != [_WEBSOCKET_VERSION]:
        raise HandshakeError(
            f"unsupported WebSocket version {versions!r}",
            status=426,
            headers=[(b"sec-websocket-version", _WEBSOCKET_VERSION)],
        )
    if len(keys) != 1:
        raise HandshakeError("there must be exactly one Sec-WebSocket-Key header")
    try:
        nonce = base64.b64decode(keys[0], validate=True)
    except binascii.Error:
        nonce = b""
    if len(nonce) != 16:
        raise HandshakeError("Sec-WebSocket-Key is not 16 bytes in base64")
    for name, value in request.headers:
        if name == b"transfer-encoding" or (
            name == b"content-length" and value != b"0"
        ):
            raise HandshakeError("a WebSocket handshake has no body")
    return Handshake(
        key=keys[0],
        subprotocols=_comma_list(request, b"sec-websocket-protocol"),
        extension_offers=_comma_list(request, b"sec-websocket-extensions"),
    )


def negotiate_deflate(offers: list[str]) -> tuple[Extension, bytes] | None:
    """Accept the first permessage-deflate offer we can (RFC 7692 section 5.1).

    Returns:
        The extension, set up for the connection, and the value of the
        Sec-WebSocket-Extensions response header; None if nothing fits.
    """
    for offer in offers:
        if offer.split(";", 1)[0].strip().lower() != PerMessageDeflate.name:
            continue
        extension = PerMessageDeflate()
        params = extension.accept(offer)
        if params is None or params is False:
            continue
        header = PerMessageDeflate.name
        if isinstance(params, str) and params:
            header += "; " + params
        return extension, header.encode("ascii")
    return None


# -- the session ---------------------------------------------------------------


class WebSocketSession:
    """One WebSocket, from the upgrade request to the end of the connection."""

    def __init__(self, conn: HTTP11Connection, request: RequestHead) -> None:
        config = conn.server.config
        self._conn = conn
        self._request = request
        self._started_at = time.perf_counter()
        self._max_size = config.ws_max_size
        self._max_queue = config.ws_max_queue
        self._ping_interval = config.ws_ping_interval
        self._ping_timeout = config.ws_ping_timeout
        self.scope: dict[str, Any] = {}
        self.state = WebSocketState.HANDSHAKE
        self._handshake: Handshake | None = None
        self._ws: Connection | None = None
        self._deflate = False
        self._nursery: trio.Nursery  # the session nursery, once run() opens it
        self._write_lock = trio.Lock()
        self._broken = False  # a write was cut short: no further frame is sane
        # What the app receives, and who waits for it.
        self._connect_delivered = False
        self._queue: deque[Message] = deque()
        self._queue_lot = trio.lowlevel.ParkingLot()
        self._space_lot = trio.lowlevel.ParkingLot()
        self._app_done = False
        # (code, reason) of the side that closed first, once either has.
        self._disconnect: tuple[int, str] | None = None
        self._closed = trio.Event()  # closing handshake over, or given up on
        self._handshake_done = trio.Event()
        self._shutdown = trio.Event()
        self._pong = trio.Event()
        self._ping_payload = b""
        self._pings_sent = 0
        # A denial response (websocket.http.response.*) waiting for its body.
        self._response_start: Message | None = None
        self._response_head_written = False
        if conn.closing:
            self._shutdown.set()

    # -- what the HTTP/1.1 connection calls ----------------------------------

    def begin_shutdown(self) -> None:
        """Graceful shutdown: close with 1012 (once the handshake is answered)."""
        self._shutdown.set()

    def client_gone(self) -> None:
        """The reader saw EOF, or a write failed."""
        if self._disconnect is None:
            self._conn.grant_disconnect_grace()
        if self._ws is None:
            # Before the handshake is answered there are no frames to read:
            # the connection simply ended.
            self._set_disconnect(1006, "")
            self._closed.set()
        self._queue_lot.unpark_all()

    async def run(self) -> None:
        """Answer the handshake with the app, then serve the WebSocket."""
        conn = self._conn
        request = self._request
        try:
            self._handshake = check_handshake(request)
            if type(conn.next_event_nowait()) is not h11.EndOfMessage:
                raise HandshakeError("the handshake request did not end")
        except (HandshakeError, h11.RemoteProtocolError) as exc:
            status = getattr(exc, "status", 400)
            logger.debug(
                "Bad WebSocket handshake from %s: %s (%d)", conn.client, exc, status
            )
            await self._respond(status, getattr(exc, "headers", []))
            return
        self.scope = self._build_scope(request, self._handshake)
        if not conn.server.admit_request():
            await self._respond(503)
            return
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._watch_shutdown)
                failure = await self._call_app()
                await self._finish(failure)
                nursery.cancel_scope.cancel()
        finally:
            conn.server.release_request()

    def _build_scope(
        self, request: RequestHead, handshake: Handshake
    ) -> dict[str, Any]:
        conn = self._conn
        server = conn.server
        raw_path, query_string = split_target(request.target)
        return conn.finish_scope(
            {
                "type": "websocket",
                "asgi": dict(ASGI_VERSION),
                "http_version": "1.1",
                "scheme": "wss" if conn.scheme == "https" else "ws",
                "path": decode_path(raw_path),
                "raw_path": raw_path,
                "query_string": query_string,
                "root_path": server.config.root_path,
                "headers": list(request.headers),
                "client": conn.client,
                "server": conn.sockname,
                "subprotocols": list(handshake.subprotocols),
                "state": server.state.copy(),
                "extensions": {"websocket.http.response": {}},
            }
        )

    async def _call_app(self) -> Exception | None:
        try:
            await self._conn.server.app(self.scope, self.receive, self.send)
        except Exception as exc:
            return exc
        finally:
            self._app_done = True
            self._space_lot.unpark_all()
        return None

    async def _finish(self, exc: Exception | None) -> None:
        """Whatever the app left undone, once it has returned."""
        await trio.lowlevel.checkpoint()
        if exc is not None and not _is_disconnect(exc):
            logger.error("Exception in ASGI application", exc_info=exc)
        state = self.state
        gone = self._disconnect is not None and self._ws is None
        if state is WebSocketState.HANDSHAKE:
            if exc is None and not gone:
                logger.error(
                    "ASGI callable returned without answering the WebSocket handshake."
                )
            if not gone:
                await self._respond(500)
        elif state is WebSocketState.RESPONSE:
            if exc is None:
                logger.error("ASGI callable returned without completing the response.")
            if not self._response_head_written and not gone:
                await self._respond(500)
        elif self._ws is not None:
            if self._ws.state is ConnectionState.OPEN:
                await self._close_from_server(1011 if exc is not None else 1000, "")
            with trio.move_on_after(_CLOSE_TIMEOUT):
                await self._closed.wait()

    # -- receive -------------------------------------------------------------

    async def receive(self) -> Message:
        """The app's ``receive()``."""
        await trio.lowlevel.checkpoint()
        if not self._connect_delivered:
            self._connect_delivered = True
            return {"type": "websocket.connect"}
        while True:
            if self._queue:
                message = self._queue.popleft()
                self._space_lot.unpark()
                return message
            if self._disconnect is not None:
                code, reason = self._disconnect
                return {"type": "websocket.disconnect", "code": code, "reason": reason}
            await self._queue_lot.park()

    def _set_disconnect(self, code: int, reason: str) -> None:
        if self._disconnect is None:
            self._disconnect = (int(code), reason)
        self._queue_lot.unpark_all()

    # -- send ----------------------------------------------------------------

    async def send(self, message: Message) -> None:
        """The app's ``send()``."""
        state = self.state
        if state is WebSocketState.CLOSED or (
            self._disconnect is not None and state is not WebSocketState.RESPONSE
        ):
            await trio.lowlevel.checkpoint()
            raise ClientDisconnected("The WebSocket is closed.")
        new_state = next_websocket_state(state, message)
        msg_type = message["type"]
        if msg_type == "websocket.send":
            text = message.get("text")
            event: Event = (
                TextMessage(data=text)
                if text is not None
                else BytesMessage(data=bytes(message["bytes"]))
            )
            await self._send_frame(event, final=False)
        elif msg_type == "websocket.accept":
            await self._accept(message)
        elif msg_type == "websocket.close" and state is WebSocketState.CONNECTED:
            self.state = new_state
            await self._close_from_server(
                message.get("code", 1000), message.get("reason") or ""
            )
        elif msg_type == "websocket.close":
            # Refused before accept: RFC 6455 section 4.2.2 lets the server
            # answer with any HTTP error; the ASGI spec says 403.
            self.state = new_state
            self._handshake_done.set()
            self._set_disconnect(1006, "")
            await self._respond(403)
        elif msg_type == "websocket.http.response.start":
            # The head is built with the first body message, so that a bad
            # second start can still become a clean 500.
            self._response_start = message
            self.state = new_state
            await trio.lowlevel.checkpoint()
        else:
            # The state moves on only once h11 took the message: a head it
            # refuses must still become a 500.
            await self._send_response_body(message, new_state is WebSocketState.CLOSED)
            self.state = new_state

    async def _accept(self, message: Message) -> None:
        conn = self._conn
        handshake = self._handshake
        assert handshake is not None
        subprotocol = message.get("subprotocol")
        if subprotocol is not None and subprotocol not in handshake.subprotocols:
            raise ASGIProtocolError(
                f"websocket.accept chose subprotocol {subprotocol!r}, which the "
                f"client did not offer ({', '.join(handshake.subprotocols) or 'none'})."
            )
        headers = [
            (b"upgrade", b"websocket"),
            (b"connection", b"Upgrade"),
            (b"sec-websocket-accept", generate_accept_token(handshake.key)),
        ]
        if subprotocol is not None:
            headers.append((b"sec-websocket-protocol", subprotocol.encode("latin-1")))
        extensions: list[Extension] = []
        if conn.server.config.ws_per_message_deflate:
            deflate = negotiate_deflate(handshake.extension_offers)
            if deflate is not None:
                self._deflate = True
                extensions.append(deflate[0])
                headers.append((b"sec-websocket-extensions", deflate[1]))
        headers += check_headers(message.get("headers", ()))
        headers = conn.server.response_headers(headers)
        data = conn.parser.send(
            h11.InformationalResponse(
                status_code=101, headers=headers, reason=b"Switching Protocols"
            )
        )
        trailing, _ = conn.parser.trailing_data
        self._ws = Connection(ConnectionType.SERVER, extensions, bytes(trailing))
        self.state = WebSocketState.CONNECTED
        self._handshake_done.set()
        self._log_access(101, headers)
        assert data is not None
        await self._write(data)
        self._nursery.start_soon(self._read_frames)
        if self._ping_interval > 0:
            self._nursery.start_soon(self._keepalive)

    async def _send_response_body(self, message: Message, final: bool) -> None:
        """A body message of a denial response (websocket.http.response)."""
        h11_conn = self._conn.parser
        body = bytes(message.get("body", b""))
        chunks = []
        if not self._response_head_written:
            start = self._response_start
            assert start is not None
            headers = check_headers(start.get("headers", ()))
            if final and not any(
                name.lower() in (b"content-length", b"transfer-encoding")
                for name, _ in headers
            ):
                headers.append((b"content-length", b"%d" % len(body)))
            headers.append((b"connection", b"close"))
            headers = self._conn.server.response_headers(headers)
            try:
                chunks.append(
                    h11_conn.send(
                        h11.Response(
                            status_code=start["status"],
                            headers=headers,
                            reason=REASON_PHRASES.get(start["status"], b""),
                        )
                    )
                )
            except h11.LocalProtocolError as exc:
                raise ASGIProtocolError(f"Invalid response start: {exc}.") from None
            self._response_head_written = True
            self._log_access(start["status"], headers)
        try:
            if body:
                chunks.append(h11_conn.send(h11.Data(data=body)))
            if final:
                chunks.append(h11_conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError as exc:
            raise ASGIProtocolError(f"Invalid response body: {exc}.") from None
        if final:
            self._handshake_done.set()
            self._set_disconnect(1006, "")
        await self._write(b"".join(c for c in chunks if c))

    async def _respond(
        self, status: int, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        """A plain-text HTTP answer to the handshake, then the connection closes."""
        conn = self._conn
        reason = REASON_PHRASES[status]
        body = reason + b"\n"
        all_headers = conn.server.response_headers(
            [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", b"%d" % len(body)),
                (b"connection", b"close"),
                *(headers or []),
            ]
        )
        try:
            data = conn.parser.send(
                h11.Response(status_code=status, headers=all_headers, reason=reason)
            )
            data = (data or b"") + (conn.parser.send(h11.Data(data=body)) or b"")
            data += conn.parser.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            # A response is already under way; nothing sane can be added.
            await trio.lowlevel.checkpoint()
            return
        self._log_access(status, all_headers, len(body))
        self._handshake_done.set()
        try:
            await self._write(data, final=True)
        except ClientDisconnected:
            pass

    # -- writing -------------------------------------------------------------

    async def _write(self, data: bytes, *, final: bool = False) -> None:
        """Write under the lock; ``final`` writes are shielded and bounded."""
        async with self._write_lock:
            await self._write_locked(data, final)

    async def _write_locked(self, data: bytes, final: bool) -> None:
        if self._broken:
            await trio.lowlevel.checkpoint()
            raise ClientDisconnected("The client has disconnected.")
        if final:
            with trio.move_on_after(_CLOSE_TIMEOUT, shield=True) as scope:
                try:
                    await self._conn.write(data)
                except ClientDisconnected:
                    self._broken = True
                    raise
            if scope.cancelled_caught:
                self._broken = True
                raise ClientDisconnected("The client stopped reading.")
            return
        try:
            await self._conn.write(data)
        except (trio.Cancelled, ClientDisconnected):
            # Part of a frame may be on the wire; another would corrupt it.
            self._broken = True
            raise

    async def _send_frame(self, event: Event, *, final: bool) -> None:
        """Serialize ``event`` and write it, in that order, under the lock."""
        ws = self._ws
        assert ws is not None
        async with self._write_lock:
            if ws.state is not ConnectionState.OPEN and not (
                type(event) is CloseConnection
                and ws.state is ConnectionState.REMOTE_CLOSING
            ):
                await trio.lowlevel.checkpoint()
                raise ClientDisconnected("The WebSocket is closed.")
            await self._write_locked(ws.send(event), final)

    async def _close_from_server(self, code: int, reason: str) -> None:
        """Start the closing handshake from our side (RFC 6455 section 7.1.2)."""
        ws = self._ws
        assert ws is not None
        if ws.state is not ConnectionState.OPEN:
            await trio.lowlevel.checkpoint()
            return
        self._set_disconnect(code, reason)
        try:
            await self._send_frame(
                CloseConnection(code=code, reason=reason), final=True
            )
        except ClientDisconnected:
            if self._broken:
                self._closed.set()  # no close reply can come on a broken stream

    async def _half_close(self) -> None:
        """After the closing handshake: let the client see our end of the stream.

        RFC 6455 section 7.1.1: the server should close the TCP connection
        first.  The app may still be running, so only our sending half is
        closed now; the connection closes for good when the session ends.
        """
        stream = self._conn.stream
        send_eof = getattr(stream, "send_eof", None)
        if send_eof is None:
            await trio.lowlevel.checkpoint()
            return
        async with self._write_lock:
            with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                try:
                    await send_eof()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            self._broken = True

    # -- tasks of the session nursery ----------------------------------------

    async def _watch_shutdown(self) -> None:
        await self._shutdown.wait()
        await self._handshake_done.wait()
        if self._ws is not None:
            await self._close_from_server(1012, "server shutting down")

    async def _read_frames(self) -> None:
        ws = self._ws
        assert ws is not None
        parts: list[Any] = []
        size = 0
        # wsproto decompresses all it is given at once; in small slices the
        # size check stops a compressed message long before it could blow up
        # to a thousand times its size.
        step = _DEFLATE_SLICE if self._deflate else 1 << 62
        pending = b""
        data = b"-"  # events first: frames may have come with the handshake.
        while True:
            for event in ws.events():
                if type(event) is TextMessage or type(event) is BytesMessage:
                    if ws.state is not ConnectionState.OPEN:
                        # We are closing: RFC 6455 section 1.4 lets us drop it.
                        continue
                    chunk = event.data
                    if type(chunk) is str and not chunk.isascii():
                        size += len(chunk.encode("utf-8"))
                    else:
                        size += len(chunk)
                    if size > self._max_size:
                        parts, size = [], 0
                        self._conn.grant_disconnect_grace()
                        await self._close_from_server(1009, "message too big")
                        continue
                    parts.append(chunk)
                    if not event.message_finished:
                        continue
                    if type(event) is TextMessage:
                        message: Message = {
                            "type": "websocket.receive",
                            "text": "".join(parts),
                        }
                    else:
                        message = {
                            "type": "websocket.receive",
                            "bytes": b"".join(parts),
                        }
                    parts, size = [], 0
                    if len(self._queue) >= self._max_queue:
                        await self._wait_for_room()
                    self._deliver(message)
                elif type(event) is Ping:
                    if ws.state is ConnectionState.OPEN:
                        await self._send_control(event.response())
                elif type(event) is Pong:
                    if event.payload == self._ping_payload:
                        self._pong.set()
                elif type(event) is CloseConnection:
                    await self._on_close_event(ws, event)
            if not data or self._closed.is_set() or ws.state is ConnectionState.CLOSED:
                break
            if not pending:
                pending = data = await self._conn.receive_bytes()
                if not data:
                    ws.receive_data(None)
                    continue
            ws.receive_data(pending[:step])
            pending = pending[step:]
        self._closed.set()
        await self._half_close()

    async def _on_close_event(self, ws: Connection, event: CloseConnection) -> None:
        if ws.state is ConnectionState.REMOTE_CLOSING:
            # The client started closing: report its code, echo it (section 5.5.1).
            self._set_disconnect(event.code, event.reason or "")
            self._conn.grant_disconnect_grace()
            await self._send_control(CloseConnection(code=event.code))
        elif ws.state is ConnectionState.OPEN:
            # wsproto could not parse the client's frames; event.code says why
            # (1002 protocol error, 1007 bad UTF-8).  Nothing more can be read.
            self._conn.grant_disconnect_grace()
            await self._close_from_server(event.code, event.reason or "")
            self._closed.set()
        elif ws.state is ConnectionState.LOCAL_CLOSING:
            self._closed.set()  # a bad frame while we wait for the close reply.
            await trio.lowlevel.checkpoint()
        else:
            # CLOSED: the reply to our close, or the end of the stream.
            self._set_disconnect(event.code, event.reason or "")
            await trio.lowlevel.checkpoint()

    async def _send_control(self, event: Event) -> None:
        """A pong, or the close frame that completes the closing handshake."""
        try:
            await self._send_frame(event, final=type(event) is CloseConnection)
        except ClientDisconnected:
            if self._broken:
                self._closed.set()

    async def _wait_for_room(self) -> None:
        """Hold the frame task while the app has ``ws_max_queue`` messages to take."""
        while len(self._queue) >= self._max_queue and not self._app_done:
            await self._space_lot.park()

    def _deliver(self, message: Message) -> None:
        if not self._app_done:  # an app that has returned will not take it
            self._queue.append(message)
            self._queue_lot.unpark()

    async def _keepalive(self) -> None:
        ws = self._ws
        assert ws is not None
        timeout = self._ping_timeout if self._ping_timeout > 0 else float("inf")
        while ws.state is ConnectionState.OPEN:
            await trio.sleep(self._ping_interval)
            self._pings_sent += 1
            self._ping_payload = b"triasgi %d" % self._pings_sent
            self._pong = trio.Event()
            # The timeout covers writing the ping too: a client that reads
            # nothing for that long is as gone as one that does not answer.
            with trio.move_on_after(timeout):
                try:
                    ping = Ping(payload=self._ping_payload)
                    await self._send_frame(ping, final=False)
                except ClientDisconnected:
                    return
                await self._pong.wait()
            if not self._pong.is_set() and ws.state is ConnectionState.OPEN:
                logger.debug(
                    "WebSocket client %s did not answer a ping.", self._conn.client
                )
                self._conn.grant_disconnect_grace()
                await self._close_from_server(1011, "keepalive ping timeout")
                self._closed.set()  # a silent client will not answer the close either.
                return

    def _log_access(
        self, status: int, headers: list[tuple[bytes, bytes]], body_bytes: int = 0
    ) -> None:
        """The access line of the handshake: 101, or the HTTP answer instead."""
        conn = self._conn
        if not conn.server.access_log:
            return
        request = self._request
        entry = AccessEntry(
            client=self.scope.get("client", conn.client),
            method=request.method.decode("ascii"),
            target=request.target.decode("ascii", "replace"),
            http_version=request.http_version.decode("ascii"),
            scheme=self.scope.get("scheme", "ws"),
            status=status,
            body_bytes=body_bytes,
            duration=time.perf_counter() - self._started_at,
            request_headers=list(request.headers),
            response_headers=headers,
        )
        log_access(conn.server.access_format, entry)


def _is_disconnect(exc: BaseException) -> bool:
    if isinstance(exc, ClientDisconnected):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_disconnect(e) for e in exc.exceptions)
    return False
