"""A WebSocket over an HTTP/2 stream (RFC 8441): the same session, other framing.

The client opens it with an extended CONNECT (``:protocol websocket``); the
app sees the same ``websocket`` scope as on HTTP/1.1, with ``http_version``
"2".  Accepting answers 200 (not 101) and leaves the stream open; the
WebSocket frames then travel as the stream's DATA, under its flow control;
a denial response, or an error answer, is an ordinary response on the
stream.  Everything else, the app's messages, close codes, pings, the
shutdown close and the access line, is :class:`WebSocketSession`'s.

The session runs in the connection nursery in the stream's own cancel
scope, like an app call: a client's RST_STREAM, or the connection's end,
gives it the disconnect grace period before that scope is cancelled.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

import trio

from .._asgi._messages import check_headers
from .._errors import ASGIProtocolError, ClientDisconnected
from .._events import Body, EndBody, Request
from .._protocol._h1writer import REASON_PHRASES
from .._protocol._h2 import StreamGone
from .._types import Message
from ._h2stream import send_on_stream
from ._waiters import Waiters
from ._websocket import WebSocketSession

if TYPE_CHECKING:
    from ._h2 import H2Connection


class H2WebSocketSession(WebSocketSession):
    """One WebSocket on one HTTP/2 stream."""

    _conn: H2Connection

    def __init__(self, conn: H2Connection, request: Request) -> None:
        super().__init__(conn, request)  # type: ignore[arg-type]
        self.request = request
        self.stream_id = request.stream_id
        self.inbox: deque[Body | EndBody] = deque()
        self.data_lot = Waiters()
        self.window_lot = Waiters()
        self.cancel_scope = trio.CancelScope()
        self.pending_body: Body | EndBody | None = None
        # The client has ended its side of the stream (END_STREAM).
        self.body_complete = False
        self._stream_gone = False
        # The response head (200 or a denial's) has gone out; the stream
        # needs an end.
        self._head_sent = False
        self._stream_ended = False

    async def run_stream(self) -> None:
        """The session, in the stream's cancel scope; then forget the stream."""
        metrics = self._conn.server.metrics
        try:
            with self.cancel_scope:
                await self.run()
                await self._end_stream()
            if self.cancel_scope.cancelled_caught and metrics is not None:
                metrics.grace_cancelled()  # only its reset's grace cancels it
        finally:
            self._conn.stream_done(self)

    # -- what the connection tells the stream --------------------------------

    @property
    def disconnected(self) -> bool:
        return self._stream_gone

    def on_reset(self) -> None:
        """RST_STREAM, either way: the WebSocket is gone; its app gets the grace
        period."""
        self.stream_gone()

    def stream_gone(self) -> bool:
        """The stream can carry nothing more, either way."""
        self.data_lot.unpark_all()
        self.window_lot.unpark_all()
        if self._stream_gone:
            return False
        self._stream_gone = True
        self.client_gone()
        return True

    # -- the session's hooks ---------------------------------------------------

    def _check_request_ended(self) -> None:
        # The CONNECT stream stays open: the frames are its body.
        return

    def _accept_answer(self, headers: list[tuple[bytes, bytes]]) -> Any:
        return headers

    async def _send_accept(self, answer: Any) -> None:
        async with self._write_lock:
            try:
                self._head(200, answer, end_stream=False)
            except ValueError as exc:
                raise ASGIProtocolError(f"Invalid websocket.accept: {exc}.") from None
            await self._flush()

    def _unparsed(self) -> bytes:
        return b""

    async def _send_bytes(self, data: bytes) -> None:
        await send_on_stream(self._conn, self, data, False)

    async def _receive_bytes(self) -> bytes:
        while not self.inbox:
            if self._stream_gone:
                return b""
            await self.data_lot.park()
        event = self.inbox.popleft()
        if type(event) is EndBody:
            self.body_complete = True
            return b""
        assert type(event) is Body
        protocol = self._conn.protocol
        protocol.consumed(self.stream_id, len(event.data))
        if protocol.has_output:
            try:
                await self._conn.flush()
            except ClientDisconnected:
                self.stream_gone()
        return bytes(event.data)

    def _grant_grace(self) -> None:
        self.cancel_scope.deadline = min(
            self.cancel_scope.deadline,
            trio.current_time() + self._conn.server.config.disconnect_grace_period,
        )

    async def _half_close(self) -> None:
        """After the closing handshake: END_STREAM on our side."""
        async with self._write_lock:
            await self._end_stream_locked()
            self._broken = True

    async def _end_stream(self) -> None:
        async with self._write_lock:
            await self._end_stream_locked()

    async def _end_stream_locked(self) -> None:
        if self._stream_ended or not self._head_sent or self._stream_gone:
            await trio.lowlevel.checkpoint()
            return
        self._stream_ended = True
        try:
            self._conn.protocol.send_body(self.stream_id, memoryview(b""), True)
            await self._flush()
        except (StreamGone, ClientDisconnected):
            pass

    # -- HTTP answers instead of the WebSocket ---------------------------------

    async def _send_response_body(self, message: Message, final: bool) -> None:
        """A body message of a denial response (websocket.http.response)."""
        body = bytes(message.get("body", b""))
        async with self._write_lock:
            if not self._answered:
                start = self._response_start
                assert start is not None
                status = start["status"]
                headers = check_headers(start.get("headers", ()))
                self._answered = True
                all_headers = self._conn.server.response_headers(headers)
                try:
                    self._head(status, headers, end_stream=final and not body)
                except ValueError as exc:
                    raise ASGIProtocolError(f"Invalid response: {exc}.") from None
                self._log_access(status, all_headers)
                if final and not body:
                    self._stream_ended = True
            if final:
                self._handshake_done.set()
                self._set_disconnect(1006, "")
            if body or (final and not self._stream_ended):
                self._stream_ended = final
                await send_on_stream(self._conn, self, body, final)
            else:
                await self._flush()

    async def _respond(
        self, status: int, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        """A plain-text HTTP answer to the handshake; it ends the stream."""
        if self._answered or self._stream_gone:
            await trio.lowlevel.checkpoint()
            return
        self._answered = True
        body = b"%s\n" % REASON_PHRASES[status]
        all_headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
            *(headers or []),
        ]
        self._log_access(
            status, self._conn.server.response_headers(all_headers), len(body)
        )
        self._handshake_done.set()
        async with self._write_lock:
            try:
                self._head(status, all_headers, end_stream=False)
                self._stream_ended = True
                await send_on_stream(self._conn, self, body, True)
            except (ClientDisconnected, ValueError):
                pass

    def _head(
        self, status: int, headers: list[tuple[bytes, bytes]], *, end_stream: bool
    ) -> None:
        """Queue a response head on the stream (the caller flushes)."""
        try:
            self._conn.protocol.respond(
                self.stream_id,
                status,
                headers,
                self._conn.server.default_header_pairs(),
                end_stream,
            )
        except StreamGone:
            self.stream_gone()
            raise ClientDisconnected("The client has disconnected.") from None
        self._head_sent = True

    async def _flush(self) -> None:
        try:
            await self._conn.flush()
        except ClientDisconnected:
            self.stream_gone()
            raise
