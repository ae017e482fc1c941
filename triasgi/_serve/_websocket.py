"""A WebSocket session's tasks, taking over an HTTP/1.1 connection.

The HTTP/1.1 connection hands over a request that asks for a WebSocket
upgrade.  The handshake's checks and answers (the 101, or a 403, 500 or
denial response) and the frames are sans-io (``_protocol/_websocket.py``,
``_protocol/_h1writer.py``); this module owns the session's tasks, its write
lock and its time::

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

import logging
import time
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, final

import trio

from .._asgi._http import is_disconnect
from .._asgi._messages import WebSocketState, check_headers, next_websocket_state
from .._asgi._scope import websocket_scope
from .._errors import ASGIProtocolError, ClientDisconnected
from .._events import EndBody, Request, WSClose, WSMessage, WSPing, WSPong
from .._logging import AccessEntry, log_access, logged_version
from .._protocol._h1writer import (
    REASON_PHRASES,
    ResponseError,
    ResponseWriter,
    informational_head,
)
from .._protocol._websocket import (
    BINARY,
    CLOSE,
    PING,
    PONG,
    TEXT,
    Handshake,
    HandshakeError,
    WebSocketFrames,
    accept_headers,
    check_handshake,
)
from .._types import Message
from ._transport import TURN_SECONDS
from ._waiters import Waiters

if TYPE_CHECKING:
    from ._connection import HTTP11Connection

logger = logging.getLogger("triasgi.error")

# How long closing waits for the client's close frame after ours, and how
# long a final write may take.
_CLOSE_TIMEOUT = 5.0


# -- the write lock ------------------------------------------------------------


@final
class WriteLock:
    """A session's write lock: trio.Lock's behaviour at a fraction of its cost.

    FIFO, a checkpoint to acquire, handed on by ``release`` to the first
    task waiting; but no owner is kept (each holder here releases in its own
    ``finally``), and so no parking-lot breaker is registered: most frames
    take it and give it back with nobody waiting, once per message.
    """

    __slots__ = ("_held", "_waiting")

    def __init__(self) -> None:
        self._held = False
        self._waiting: deque[trio.lowlevel.Task] = deque()

    def locked(self) -> bool:
        """Whether a task holds the lock."""
        return self._held

    def acquire_nowait(self) -> None:
        """Take the lock, or raise trio.WouldBlock if a task holds it."""
        if self._held:
            raise trio.WouldBlock
        self._held = True

    async def acquire(self) -> None:
        """Take the lock, waiting for it if need be."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._held:
            self._held = True
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        task = trio.lowlevel.current_task()
        self._waiting.append(task)

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._waiting.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        # Woken by release(), which has handed the lock to this task.
        await trio.lowlevel.wait_task_rescheduled(abort)

    def release(self) -> None:
        """Give the lock back, or on to the first task waiting for it."""
        if self._waiting:
            trio.lowlevel.reschedule(self._waiting.popleft())
        else:
            self._held = False

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


# -- the session ---------------------------------------------------------------


class WebSocketSession:
    """One WebSocket, from the upgrade request to the end of the connection."""

    def __init__(self, conn: HTTP11Connection, request: Request) -> None:
        config = conn.server.config
        self._conn = conn
        self._request = request
        self._started_at = self._turn_began = time.perf_counter()
        self._max_size = config.ws_max_size
        self._max_queue = config.ws_max_queue
        self._ping_interval = config.ws_ping_interval
        self._ping_timeout = config.ws_ping_timeout
        self.scope: dict[str, Any] = {}
        self.state = WebSocketState.HANDSHAKE
        self._handshake: Handshake | None = None
        self._ws: WebSocketFrames | None = None
        # The handshake has been answered with an HTTP response (no 101).
        self._answered = False
        self._nursery: trio.Nursery  # the session nursery, once run() opens it
        self._write_lock = WriteLock()
        self._broken = False  # a write was cut short: no further frame is sane
        # What the app receives, and who waits for it.
        self._connect_delivered = False
        self._queue: deque[Message] = deque()
        self._queue_lot = Waiters()
        self._space_lot = Waiters()
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
        self._response_writer: ResponseWriter | None = None
        if conn.closing:
            self._shutdown.set()

    # -- what the HTTP/1.1 connection calls ----------------------------------

    def begin_shutdown(self) -> None:
        """Graceful shutdown: close with 1012 (once the handshake is answered)."""
        self._shutdown.set()

    def client_gone(self) -> None:
        """The reader saw EOF, or a write failed."""
        if self._disconnect is None:
            self._grant_grace()
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
            self._check_request_ended()
        except HandshakeError as exc:
            logger.debug(
                "Bad WebSocket handshake from %s: %s (%d)",
                conn.client,
                exc,
                exc.status,
            )
            await self._respond(exc.status, exc.headers)
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

    # -- what differs between HTTP/1.1 and HTTP/2 (_serve/_h2websocket.py) ---

    def _check_request_ended(self) -> None:
        """The upgrade request has no body: its end must be here already."""
        end = self._conn.next_event_nowait()
        if type(end) is not EndBody:
            raise HandshakeError(
                getattr(end, "reason", "the handshake request did not end"),
                status=getattr(end, "status", 400),
            )

    def _accept_answer(self, headers: list[tuple[bytes, bytes]]) -> Any:
        """What accepting writes (checked now, written by :meth:`_send_accept`)."""
        try:
            return informational_head(101, headers, b"Switching Protocols")
        except ResponseError as exc:
            raise ASGIProtocolError(f"Invalid websocket.accept: {exc}.") from None

    async def _send_accept(self, answer: Any) -> None:
        await self._write(answer)

    def _unparsed(self) -> bytes:
        """Bytes that came after the handshake request: the first frames."""
        return self._conn.protocol.unparsed_data()

    def _send_bytes(self, data: bytes) -> Awaitable[object]:
        """Put WebSocket frames on the wire (the caller holds the write lock).

        Await it at once.  Not a coroutine function itself, so that a frame
        goes through one call fewer (as the next hook).
        """
        return self._conn.write(data)

    def _receive_bytes(self) -> Awaitable[bytes]:
        """The client's next bytes; b"" when it sends no more (await it at once)."""
        return self._conn.receive_bytes()

    def _grant_grace(self) -> None:
        """The client has gone: the app is cancelled a grace period from now."""
        self._conn.grant_disconnect_grace()

    def _build_scope(self, request: Request, handshake: Handshake) -> dict[str, Any]:
        conn = self._conn
        server = conn.server
        return conn.finish_scope(
            websocket_scope(
                request,
                handshake.subprotocols,
                scheme=conn.scheme,
                client=conn.client,
                server=conn.sockname,
                root_path=server.config.root_path,
                state=server.state,
            )
        )

    async def _call_app(self) -> Exception | None:
        # When the app's task last let the other tasks run, as far as its
        # receive() and send() know (TURN_SECONDS).
        self._turn_began = time.perf_counter()
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
        if exc is not None and not is_disconnect(exc):
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
            if self._response_writer is None and not gone:
                await self._respond(500)
        elif self._ws is not None:
            if self._ws.open:
                await self._close_from_server(1011 if exc is not None else 1000, "")
            with trio.move_on_after(_CLOSE_TIMEOUT):
                await self._closed.wait()

    # -- receive -------------------------------------------------------------

    async def receive(self) -> Message:
        """The app's ``receive()``.

        A cancellation point; a schedule point only when it waits for a
        message, or when the app's turn is over (as HTTP's, ``_call.py``).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._connect_delivered:
            self._connect_delivered = True
            return {"type": "websocket.connect"}
        parked = False
        while True:
            if self._queue:
                message = self._queue.popleft()
                self._space_lot.unpark_all()
                break
            if self._disconnect is not None:
                code, reason = self._disconnect
                message = {
                    "type": "websocket.disconnect",
                    "code": code,
                    "reason": reason,
                }
                break
            await self._queue_lot.park()
            parked = True
        if parked:
            self._turn_began = time.perf_counter()  # the others have just run
        elif time.perf_counter() - self._turn_began > TURN_SECONDS:
            await self._end_turn()
        return message

    async def _end_turn(self) -> None:
        """Let the other tasks run: the app's turn is over (TURN_SECONDS)."""
        await trio.lowlevel.cancel_shielded_checkpoint()
        self._turn_began = time.perf_counter()

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
            if text is not None:
                await self._send_frame(TEXT, text)
            else:
                await self._send_frame(BINARY, message["bytes"])
            if time.perf_counter() - self._turn_began > TURN_SECONDS:
                await self._end_turn()
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
            # The state moves on only once the head is written: a head that
            # cannot be must still become a 500.
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
        headers, extension = accept_headers(
            handshake,
            subprotocol,
            deflate=conn.server.config.ws_per_message_deflate,
        )
        headers += check_headers(message.get("headers", ()))
        headers = conn.server.response_headers(headers)
        answer = self._accept_answer(headers)
        self._ws = WebSocketFrames(extension, self._unparsed(), self._max_size)
        self.state = WebSocketState.CONNECTED
        self._handshake_done.set()
        self._log_access(101 if handshake.key is not None else 200, headers)
        await self._send_accept(answer)
        self._nursery.start_soon(self._read_frames)
        if self._ping_interval > 0:
            self._nursery.start_soon(self._keepalive)

    async def _send_response_body(self, message: Message, final: bool) -> None:
        """A body message of a denial response (websocket.http.response)."""
        body = bytes(message.get("body", b""))
        writer = self._response_writer
        chunks = []
        try:
            if writer is None:
                start = self._response_start
                assert start is not None
                status = start["status"]
                headers = check_headers(start.get("headers", ()))
                writer = ResponseWriter(
                    http_version=b"1.1", head_only=False, keep_alive=False
                )
                all_headers = self._conn.server.response_headers(headers)
                chunks.append(
                    writer.head(
                        status,
                        REASON_PHRASES.get(status, b""),
                        all_headers,
                        final_body=body if final else None,
                    )
                )
                self._response_writer = writer
                self._answered = True
                self._log_access(status, all_headers)
            chunks.append(writer.body(body))
            if final:
                chunks.append(writer.end())
        except ResponseError as exc:
            raise ASGIProtocolError(f"Invalid response: {exc}.") from None
        if final:
            self._handshake_done.set()
            self._set_disconnect(1006, "")
        await self._write(b"".join(chunks))

    async def _respond(
        self, status: int, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        """A plain-text HTTP answer to the handshake, then the connection closes."""
        if self._answered:
            # A response is already under way; nothing sane can be added.
            await trio.lowlevel.checkpoint()
            return
        self._answered = True
        conn = self._conn
        body_size = len(REASON_PHRASES[status]) + 1
        extra = headers or []
        data = conn.protocol.error_response(
            status, conn.server.default_header_lines(), extra
        )
        logged = conn.server.response_headers(
            [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", b"%d" % body_size),
                (b"connection", b"close"),
                *extra,
            ]
        )
        self._log_access(status, logged, body_size)
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
                    await self._send_bytes(data)
                except ClientDisconnected:
                    self._broken = True
                    raise
            if scope.cancelled_caught:
                self._broken = True
                raise ClientDisconnected("The client stopped reading.")
            return
        try:
            await self._send_bytes(data)
        except (trio.Cancelled, ClientDisconnected):
            # Part of a frame may be on the wire; another would corrupt it.
            self._broken = True
            raise

    async def _send_frame(
        self,
        kind: int,
        data: str | bytes = b"",
        *,
        final: bool = False,
        code: int = 1000,
    ) -> None:
        """Serialize a frame and write it, in that order, under the lock.

        A cancellation point; a schedule point only when the lock or the
        write must wait.
        """
        ws = self._ws
        assert ws is not None
        lock = self._write_lock
        await trio.lowlevel.checkpoint_if_cancelled()
        if lock.locked():
            await lock.acquire()
        else:
            lock.acquire_nowait()
        try:
            if not ws.can_send(kind):
                await trio.lowlevel.checkpoint()
                raise ClientDisconnected("The WebSocket is closed.")
            if kind == CLOSE:
                frame = ws.close_frame(code, data if type(data) is str else "")
            else:
                frame = ws.frame(kind, data)
            if final or self._broken:
                await self._write_locked(frame, final)
            else:
                # _write_locked's common case, one call shorter.
                try:
                    await self._send_bytes(frame)
                except (trio.Cancelled, ClientDisconnected):
                    self._broken = True
                    raise
        finally:
            lock.release()

    async def _close_from_server(self, code: int, reason: str) -> None:
        """Start the closing handshake from our side (RFC 6455 section 7.1.2)."""
        ws = self._ws
        assert ws is not None
        if not ws.open:
            await trio.lowlevel.checkpoint()
            return
        self._set_disconnect(code, reason)
        try:
            await self._send_frame(CLOSE, reason, final=True, code=code)
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
        data = b"-"  # events first: frames may have come with the handshake.
        parse = True
        while True:
            for event in ws.events() if parse else ():
                kind = type(event)
                if kind is WSMessage:
                    if len(self._queue) >= self._max_queue:
                        await self._wait_for_room()
                    payload = event.data  # type: ignore[union-attr]
                    if type(payload) is str:
                        self._deliver({"type": "websocket.receive", "text": payload})
                    else:
                        self._deliver({"type": "websocket.receive", "bytes": payload})
                elif kind is WSPing:
                    await self._send_control(PONG, event.payload)  # type: ignore[union-attr]
                elif kind is WSPong:
                    if event.payload == self._ping_payload:  # type: ignore[union-attr]
                        self._pong.set()
                elif kind is WSClose:
                    await self._on_close_event(ws, event)  # type: ignore[arg-type]
                else:  # WSTooBig
                    self._grant_grace()
                    await self._close_from_server(1009, "message too big")
            if not data or self._closed.is_set() or ws.closed:
                break
            if ws.wants_data:
                data = await self._receive_bytes()
                # The common case, one whole small message, without wsproto.
                payload = ws.message_of(data)
                if payload is not None:
                    if len(self._queue) >= self._max_queue:
                        await self._wait_for_room()
                    if type(payload) is str:
                        self._deliver({"type": "websocket.receive", "text": payload})
                    else:
                        self._deliver({"type": "websocket.receive", "bytes": payload})
                    parse = False
                    continue
                ws.receive_data(data)
            parse = True
        self._closed.set()
        await self._half_close()

    async def _on_close_event(self, ws: WebSocketFrames, event: WSClose) -> None:
        if ws.remote_closing:
            # The client started closing: report its code, echo it (section 5.5.1).
            self._set_disconnect(event.code, event.reason)
            self._grant_grace()
            await self._send_control(CLOSE, code=event.code)
        elif ws.open:
            # wsproto could not parse the client's frames; event.code says why
            # (1002 protocol error, 1007 bad UTF-8).  Nothing more can be read.
            self._grant_grace()
            await self._close_from_server(event.code, event.reason)
            self._closed.set()
        elif ws.local_closing:
            self._closed.set()  # a bad frame while we wait for the close reply.
            await trio.lowlevel.checkpoint()
        else:
            # CLOSED: the reply to our close, or the end of the stream.
            self._set_disconnect(event.code, event.reason)
            await trio.lowlevel.checkpoint()

    async def _send_control(
        self, kind: int, payload: bytes = b"", code: int = 1000
    ) -> None:
        """A pong, or the close frame that completes the closing handshake."""
        try:
            await self._send_frame(kind, payload, final=kind == CLOSE, code=code)
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
            self._queue_lot.unpark_all()

    async def _keepalive(self) -> None:
        ws = self._ws
        assert ws is not None
        timeout = self._ping_timeout if self._ping_timeout > 0 else float("inf")
        while ws.open:
            await trio.sleep(self._ping_interval)
            self._pings_sent += 1
            self._ping_payload = b"triasgi %d" % self._pings_sent
            self._pong = trio.Event()
            # The timeout covers writing the ping too: a client that reads
            # nothing for that long is as gone as one that does not answer.
            with trio.move_on_after(timeout):
                try:
                    await self._send_frame(PING, self._ping_payload)
                except ClientDisconnected:
                    return
                await self._pong.wait()
            if not self._pong.is_set() and ws.open:
                logger.debug(
                    "WebSocket client %s did not answer a ping.", self._conn.client
                )
                self._grant_grace()
                await self._close_from_server(1011, "keepalive ping timeout")
                self._closed.set()  # a silent client will not answer the close either.
                return

    def _log_access(
        self, status: int, headers: list[tuple[bytes, bytes]], body_bytes: int = 0
    ) -> None:
        """The access line of the handshake: 101, or the HTTP answer instead.

        The metrics count the handshake here too, as a ``websocket`` request.
        """
        conn = self._conn
        request = self._request
        metrics = conn.server.metrics
        if metrics is not None:
            seconds = time.perf_counter() - self._started_at
            metrics.request_done(
                request.method, status, "websocket", 0, body_bytes, seconds
            )
        if not conn.server.access_log:
            return
        entry = AccessEntry(
            client=self.scope.get("client", conn.client),
            method=request.method.decode("ascii"),
            target=request.target.decode("ascii", "replace"),
            http_version=logged_version(request.http_version),
            scheme=self.scope.get("scheme", "ws"),
            status=status,
            body_bytes=body_bytes,
            duration=time.perf_counter() - self._started_at,
            request_headers=list(request.headers),
            response_headers=headers,
        )
        log_access(conn.server.access_format, entry)
