"""One HTTP/2 stream's app call: an ``AppCall`` whose writes are frames.

``H2Call`` shares ``HTTPCycle`` (what each ASGI message means), the scope
and the access log with HTTP/1.1; it replaces how the body is read (from
the stream's inbox, crediting the window as the app takes it) and how the
response is written: the protocol queues frames, and the connection's one
writer (``H2Connection.flush``) puts them on the wire, waiting for the
client's windows (``send_on_stream``).  It runs in the connection nursery in
a cancel scope of its own, whose deadline a reset of this stream alone sets.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from time import perf_counter
from typing import TYPE_CHECKING, Any

import trio

from .._asgi._http import Outcome
from .._asgi._messages import ResponseState
from .._errors import ASGIProtocolError, ClientDisconnected
from .._events import (
    CONNECTION_LOST,
    Body,
    Command,
    EndBody,
    Informational,
    PathSend,
    Request,
    Trailers,
)
from .._protocol._h2 import CANCEL, INTERNAL_ERROR, StreamGone
from .._types import Message
from ._call import AppCall, open_file
from ._h2stream import send_on_stream
from ._transport import LARGE_READ_SIZE, TURN_SECONDS
from ._waiters import Waiters

if TYPE_CHECKING:
    from ._h2 import H2Connection

logger = logging.getLogger("triasgi.error")

_HEAD = ResponseState.HEAD
_DONE = ResponseState.DONE
_COMMANDS = frozenset({Informational, Trailers, PathSend})


class H2Call(AppCall):
    """One stream's request, response and app call."""

    __slots__ = (
        "_length_left",
        "cancel_scope",
        "data_lot",
        "inbox",
        "stream_id",
        "window_lot",
    )

    conn: H2Connection  # type: ignore[assignment]

    def __init__(
        self, conn: H2Connection, request: Request, scope: dict[str, Any]
    ) -> None:
        super().__init__(conn, request, scope)  # type: ignore[arg-type]
        self.stream_id = request.stream_id
        # Body events of this stream the app has not taken yet.
        self.inbox: deque[Body | EndBody] = deque()
        self.data_lot = Waiters()
        self.window_lot = Waiters()
        # Cancelled when this stream's grace period after a reset ends.
        self.cancel_scope = trio.CancelScope()
        # Body bytes the response's content-length still promises, if it has one.
        self._length_left: int | None = None

    async def run(self) -> None:
        """Call the app in the stream's scope; finish the stream after it."""
        conn = self.conn
        server = conn.server
        self.turn_began = perf_counter()
        try:
            with self.cancel_scope:
                try:
                    await server.app(self.scope, self.receive, self.send)
                except Exception as exc:
                    self.app_returned(exc)
                else:
                    self.app_returned(None)
                await self._after_app()
            if self.cancel_scope.cancelled_caught and server.metrics is not None:
                server.metrics.grace_cancelled()  # only its reset's grace cancels it
        finally:
            server.release_request()
            conn.stream_done(self)

    async def _after_app(self) -> None:
        outcome = self.outcome()
        if outcome is Outcome.KEEP_ALIVE or self.disconnected:
            return
        conn = self.conn
        if outcome is not Outcome.CLOSE and conn.server.metrics is not None:
            self.count(500 if outcome is Outcome.ANSWER_500 else self.error_status)
        if outcome is Outcome.ANSWER_500:
            conn._answer_error(self.stream_id, 500)
        elif outcome is Outcome.REJECT:
            conn._answer_error(self.stream_id, self.error_status)
        else:
            # Part of the response is out: only a reset can end it.
            conn.protocol.reset(self.stream_id, INTERNAL_ERROR)
        try:
            await conn.flush()
        except ClientDisconnected:
            pass

    # -- what the connection task tells the stream ---------------------------

    def begin_shutdown(self) -> None:
        """A request in flight finishes on its own within the shutdown timeout."""

    def on_reset(self) -> None:
        """The stream was reset, by the client or by us: the app gets its
        grace period, alone."""
        if self.stream_gone():
            self.cancel_scope.deadline = min(
                self.cancel_scope.deadline,
                trio.current_time() + self.conn.server.config.disconnect_grace_period,
            )

    def stream_gone(self) -> bool:
        """The stream's client has gone; True if its response was not complete."""
        self.data_lot.unpark_all()
        self.window_lot.unpark_all()
        # Not ``state``, which is DONE while the last frames wait for the
        # client's window: the response is complete once they are written.
        if self.disconnected or self.finished:
            return False
        self.on_disconnect()
        metrics = self.conn.server.metrics
        if metrics is not None:
            metrics.disconnected("http/2")
        return True

    # -- receive ---------------------------------------------------------------

    async def _receive_body(self) -> Message:
        event: Any = self.pending_body
        if event is not None:
            self.pending_body = None
        else:
            if not (self.inbox or self.sent_100 or self.head_written):
                await self._continue()
            timeout = self.conn.server.config.timeout_request_body
            with trio.move_on_after(timeout):
                event = await self._next_event()
            if event is None:
                logger.debug(
                    "Request body from %s stalled for %g seconds.",
                    self.conn.client,
                    timeout,
                )
                self.conn.protocol.reset(self.stream_id, CANCEL)
                self.on_reset()
                await self._flush_quietly()
                return {"type": "http.disconnect"}
        inbox = self.inbox
        after = inbox.popleft() if inbox and type(event) is Body else None
        message = self.body_message(event, after)
        if message is None:
            return {"type": "http.disconnect"}
        if type(event) is Body:
            self.conn.protocol.consumed(self.stream_id, len(event.data))
            if self.conn.protocol.has_output:
                await self._flush_quietly()
        return message

    async def _continue(self) -> None:
        """``100 (Continue)`` when the client waits for it to send the body
        (RFC 9110 section 10.1.1), as the app first asks for the body."""
        for name, value in self.request.headers:
            if name == b"expect" and value.lower() == b"100-continue":
                self.sent_100 = True
                try:
                    self.conn.protocol.informational(self.stream_id, 100, [])
                except StreamGone:
                    return
                await self._flush_quietly()
                return

    async def _next_event(self) -> Body | EndBody | object:
        while not self.inbox:
            if self.disconnected:
                return CONNECTION_LOST
            await self.data_lot.park()
        return self.inbox.popleft()

    async def _flush_quietly(self) -> None:
        try:
            await self.conn.flush()
        except ClientDisconnected:
            pass

    # -- send ------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        if self.disconnected:
            await trio.lowlevel.checkpoint()
            raise ClientDisconnected("The client has disconnected.")
        # A cancellation point always; a schedule point only when a write
        # or a window waits, or when the app's turn is over (as HTTP/1.1's).
        body = self.app_sent(message)
        if body is None:
            if perf_counter() - self.turn_began > TURN_SECONDS:
                await trio.lowlevel.checkpoint()
                self.turn_began = perf_counter()
            else:
                await trio.lowlevel.checkpoint_if_cancelled()
            return
        if type(body) is not bytes and body.__class__ in _COMMANDS:
            await self._run_command(body)  # type: ignore[arg-type]
            await self._end_turn_if_due()
            return
        assert isinstance(body, bytes)
        last = not message.get("more_body", False)
        end = last and not self.trailers
        head_ends = False
        if self._bodiless():
            body = b""
        if self.state is _HEAD:
            self._length_left = self._declared_length()
        if self._length_left is not None:
            self._check_length(len(body), last)
        if self.state is _HEAD:
            head_ends = end and not body
            self._respond(head_ends)
        self.after_body(last)
        if body or (end and not head_ends):
            waited = await self._send_data(body, end)
        else:
            waited = await self._flush()
        if self.state is _DONE:
            self._response_complete()
        if waited:
            self.turn_began = perf_counter()
        else:
            await self._end_turn_if_due()

    def _declared_length(self) -> int | None:
        """The content-length the DATA frames must add up to (RFC 9113
        section 8.1.1), or None: none given, or a response without a body."""
        if self._bodiless():
            return None
        length = None
        for name, value in self.response_headers:
            if name.lower() == b"content-length":
                value = value.strip()
                if not value.isdigit() or (length is not None and int(value) != length):
                    self.must_close = True
                    raise ASGIProtocolError(
                        f"Invalid response: invalid content-length {value!r}."
                    )
                length = int(value)
        return length

    def _check_length(self, size: int, last: bool) -> None:
        """Raise before a body that would not add up to the content-length:
        the client would take the response for malformed and end the
        connection.  Nothing of it is sent, so a head still held becomes a
        500, and a response under way a reset stream."""
        assert self._length_left is not None
        left = self._length_left - size
        if left < 0 or (last and left):
            self.must_close = True
            longer = "longer" if left < 0 else "shorter"
            raise ASGIProtocolError(
                f"Invalid response: body {longer} than its content-length."
            )
        self._length_left = left

    def _bodiless(self) -> bool:
        """A response that has no body: to HEAD, or a 204 or 304."""
        return self.request.method == b"HEAD" or self.status in (204, 304)

    def _respond(self, end_stream: bool) -> None:
        try:
            self.conn.protocol.respond(
                self.stream_id,
                self.status,
                self.response_headers,
                self.conn.server.default_header_pairs(),
                end_stream,
            )
        except StreamGone:
            self.stream_gone()
            raise ClientDisconnected("The client has disconnected.") from None
        except ValueError as exc:
            self.must_close = True
            raise ASGIProtocolError(f"Invalid response: {exc}.") from None

    async def _flush(self) -> bool:
        try:
            return await self.conn.flush()
        except ClientDisconnected:
            self.stream_gone()
            raise

    async def _send_data(self, data: bytes, end: bool) -> bool:
        return await send_on_stream(self.conn, self, data, end)

    async def _run_command(self, command: Command) -> None:
        protocol = self.conn.protocol
        kind = type(command)
        if kind is Informational:
            assert isinstance(command, Informational)
            try:
                protocol.informational(self.stream_id, command.status, command.headers)
            except StreamGone:
                self.stream_gone()
                raise ClientDisconnected("The client has disconnected.") from None
            except ValueError as exc:
                raise ASGIProtocolError(f"Invalid interim response: {exc}.") from None
            await self._flush()
            return
        if kind is Trailers:
            assert isinstance(command, Trailers)
            try:
                if self.request.te_trailers:
                    protocol.send_trailers(self.stream_id, command.headers)
                else:
                    # The ASGI trailers extension: only to a client that
                    # said ``TE: trailers``; the stream just ends.
                    protocol.send_body(self.stream_id, memoryview(b""), True)
            except StreamGone:
                self.stream_gone()
                raise ClientDisconnected("The client has disconnected.") from None
            except ValueError as exc:
                self.must_close = True
                raise ASGIProtocolError(f"Invalid trailers: {exc}.") from None
            self.after_command(command)
            await self._flush()
            self._response_complete()
            return
        assert isinstance(command, PathSend)
        await self._send_path(command)

    async def _send_path(self, command: PathSend) -> None:
        """The body from a file, read in pieces, as the windows allow."""
        path = command.path
        fd, size = open_file(path)
        try:
            self.response_headers = [
                (name, value)
                for name, value in self.response_headers
                if name.lower() != b"content-length"
            ] + [(b"content-length", b"%d" % size)]
            bodiless = self._bodiless()
            end = not self.trailers
            self._respond(end and (bodiless or not size))
            self.state = ResponseState.BODY
            offset = 0
            while offset < size and not bodiless:
                piece = min(size - offset, LARGE_READ_SIZE)
                data = await trio.to_thread.run_sync(os.pread, fd, piece, offset)
                if not data:
                    self.must_close = True
                    raise ASGIProtocolError(
                        f"http.response.pathsend: {path!r} ended "
                        f"{size - offset} bytes early."
                    )
                offset += len(data)
                await self._send_data(data, end and offset == size)
            if not (end and (bodiless or not size)):
                await self._flush()
            self.after_command(command)
            if self.state is _DONE:
                self._response_complete()
        finally:
            os.close(fd)

    def body_bytes_sent(self) -> int:
        return self.conn.protocol.response_body_bytes.get(self.stream_id, 0)
