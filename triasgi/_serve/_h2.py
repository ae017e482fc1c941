"""One HTTP/2 connection: its nursery, its streams, and the one writer.

The protocol (``_protocol/_h2.py``, sans-io) turns bytes into events and
response steps into frames; each stream's app call (:class:`H2Call`, an
``AppCall`` over the same ``HTTPCycle`` as HTTP/1.1) runs in the connection
nursery in a cancel scope of its own.  This module owns the tasks and the
time.

Shape of a connection (docs/architecture.md, docs/http2.md)::

    connection nursery (its cancel scope gets the disconnect deadline when
    │                   the client goes, as on HTTP/1.1)
    ├── the connection task: reads, feeds the protocol, starts a call per
    │   stream, wakes the calls its events concern, writes what the
    │   protocol has to say (SETTINGS and PING acks, resets, GOAWAY)
    └── one app call per stream, in its own cancel scope: a client's
        RST_STREAM gives that stream alone the disconnect grace period

Writes.  Any task that changes the protocol's state (a response head, body,
a window credit) then calls :meth:`H2Connection.flush`, which takes
everything the protocol has framed, in order, and writes it under one lock,
shielded from cancellation and bounded by the write timeout: HPACK makes the
order of header blocks part of the connection's state, and a cancelled
stream must not leave half a frame on the wire.  Whoever holds the lock
writes the frames of every stream queued so far, so writes coalesce.

Flow control.  A stream's ``send()`` sends what the client's windows allow,
and waits for WINDOW_UPDATE for the rest (bounded by the write timeout,
after which that stream alone is reset); request body is credited back only
as the app takes it with ``receive()``.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import trio

from .._asgi._http import Outcome
from .._asgi._messages import ResponseState
from .._asgi._scope import add_edge_facts, http_scope
from .._errors import ASGIProtocolError, ClientDisconnected
from .._events import (
    CONNECTION_LOST,
    Body,
    Command,
    EndBody,
    Informational,
    PathSend,
    ProtocolError,
    Request,
    Trailers,
)
from .._logging import AccessEntry, log_access
from .._protocol._h1writer import REASON_PHRASES
from .._protocol._h2 import (
    CANCEL,
    INTERNAL_ERROR,
    NO_ERROR,
    ConnectionEnded,
    H2Protocol,
    StreamGone,
    StreamReset,
    WindowOpened,
)
from .._protocol._websocket import is_extended_connect
from .._types import Address, Message
from ._call import AppCall, open_file
from ._h2stream import Stream, send_on_stream
from ._h2websocket import H2WebSocketSession
from ._transport import LARGE_READ_SIZE, READ_ERRORS, READ_SIZE, Transport
from ._waiters import Waiters

if TYPE_CHECKING:
    from ._server import Server

logger = logging.getLogger("triasgi.error")

_HEAD = ResponseState.HEAD
_DONE = ResponseState.DONE
_COMMANDS = frozenset({Informational, Trailers, PathSend})
# How long a closing connection waits for the client's EOF after ours.
_LINGER_SECONDS = 1.0


class H2Connection(Transport):
    """Serves HTTP/2 streams on one connection until either side ends it.

    Args:
        server, stream, client, sockname, scheme, tls: as for HTTP/1.1.
        received: bytes already read from the stream (the client preface,
            and maybe more, read before the connection knew its protocol).
    """

    __slots__ = (
        "_cancel_requested",
        "_gone",
        "_idle_since",
        "_nursery",
        "_received",
        "_scope",
        "_write_lock",
        "_write_scope",
        "closing",
        "protocol",
        "scheme",
        "server",
        "sockname",
        "streams",
        "tls",
    )

    def __init__(
        self,
        server: Server,
        stream: trio.abc.Stream,
        client: Address | None,
        sockname: Address | None,
        scheme: str = "http",
        *,
        tls: dict[str, Any] | None = None,
        received: bytes = b"",
    ) -> None:
        super().__init__(stream, client, server.config.timeout_write)
        self.server = server
        self.sockname = sockname
        self.scheme = scheme
        self.tls = tls
        self.protocol = H2Protocol(server.h2_limits)
        self.streams: dict[int, Stream] = {}
        self.closing = False
        self._received = received
        self._gone = False
        self._cancel_requested = False
        self._nursery: trio.Nursery | None = None
        self._scope: trio.CancelScope | None = None
        self._write_lock = trio.StrictFIFOLock()
        # The shielded scope of the write under way, which a hard stop unshields.
        self._write_scope: trio.CancelScope | None = None
        self._idle_since = trio.current_time()

    # -- lifecycle -----------------------------------------------------------

    async def run(self) -> bool:
        """Serve until the connection is done, then close the stream.

        Returns:
            Whether the connection's disconnect grace period ran out and
            cancelled what it ran (for the metrics).
        """
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self._cancel_requested:
                    nursery.cancel_scope.cancel()
                self.protocol.start()
                try:
                    await self._drive()
                finally:
                    await self._close()
        finally:
            await trio.aclose_forcefully(self.stream)
        # Only the grace period's deadline, or cancel(), cancels the nursery.
        return nursery.cancel_scope.cancelled_caught and not self._cancel_requested

    def cancel(self) -> None:
        """Stop serving at once: every stream's app call is cancelled."""
        self._cancel_requested = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        if self._write_scope is not None:
            # Half a frame no longer matters: the connection is being dropped.
            self._write_scope.shield = False

    def begin_shutdown(self) -> None:
        """Graceful shutdown: GOAWAY; the streams in flight finish, then it closes."""
        self.closing = True
        self.protocol.goaway()
        for stream in list(self.streams.values()):
            stream.begin_shutdown()
        self._wake()

    def client_gone(self) -> None:
        """The client closed or reset the connection, or stopped reading."""
        if self._gone:
            return
        self._gone = True
        self._streams_gone()
        self._wake()

    def _streams_gone(self) -> None:
        """No stream will hear from the client again: each app gets its grace."""
        running = False
        for call in self.streams.values():
            if call.stream_gone():
                running = True
        if running:
            self.grant_disconnect_grace()

    def grant_disconnect_grace(self) -> None:
        """Cancel what the connection runs ``disconnect_grace_period`` from now."""
        assert self._nursery is not None
        scope = self._nursery.cancel_scope
        scope.deadline = min(
            scope.deadline,
            trio.current_time() + self.server.config.disconnect_grace_period,
        )

    def _wake(self) -> None:
        """Make the connection task leave its read and look at the connection."""
        if self._scope is not None:
            self._scope.cancel()

    def describe(self) -> str:
        """What the connection serves, for the log."""
        if not self.streams:
            return "HTTP/2 idle"
        requests = [
            f"{call.request.method.decode('ascii', 'replace')} "
            f"{call.request.target.decode('ascii', 'replace')[:100]}"
            for call in list(self.streams.values())[:3]
        ]
        more = f" and {len(self.streams) - 3} more" if len(self.streams) > 3 else ""
        return f"HTTP/2 {', '.join(requests)}{more}"

    # -- writing ---------------------------------------------------------------

    async def flush(self) -> None:
        """Write everything the protocol has framed, in order, under the lock.

        Shielded and bounded by the write timeout: a cancelled caller does
        not leave half a frame on the wire.

        Raises:
            ClientDisconnected: the client has gone or stopped reading.
        """
        if self._gone:
            await trio.lowlevel.checkpoint()
            raise ClientDisconnected("The client has disconnected.")
        async with self._write_lock:
            if self._gone:
                # The write before this one found the client gone (or not
                # reading): another would only wait for the write timeout.
                raise ClientDisconnected("The client has disconnected.")
            data = self.protocol.data_to_send()
            while data:
                with trio.CancelScope(shield=not self._cancel_requested) as scope:
                    self._write_scope = scope
                    try:
                        await self.write(data)
                    finally:
                        self._write_scope = None
                # Frames queued while this wrote, by a task that could not
                # wait to write them (stream_done).
                data = self.protocol.data_to_send()

    # -- the connection task ----------------------------------------------------

    async def _drive(self) -> None:
        protocol = self.protocol
        receive = self.receive_some()
        data = self._received
        self._received = b""
        config = self.server.config
        while True:
            if data:
                self._handle(protocol.receive_data(data, trio.current_time()))
            try:
                await self.flush()
            except ClientDisconnected:
                return
            if protocol.closed or self._gone:
                return
            if self.closing and not self.streams:
                return
            scope = self._scope = trio.CancelScope()
            with scope:
                if not self.streams:
                    scope.deadline = self._idle_since + config.timeout_keep_alive
                try:
                    data = bytes(await receive(READ_SIZE))
                except READ_ERRORS:
                    data = b""
                if not data:
                    self.client_gone()
                    return
            self._scope = None
            if scope.cancelled_caught:
                data = b""
                if (
                    not self.streams
                    and not self.closing
                    and (
                        trio.current_time()
                        >= self._idle_since + config.timeout_keep_alive
                    )
                ):
                    # Idle for the keep-alive timeout: GOAWAY, then close.
                    self.closing = True
                    protocol.goaway()

    def _handle(self, events: list[Any]) -> None:
        for event in events:
            kind = type(event)
            if kind is Body or kind is EndBody:
                call = self.streams.get(event.stream_id)
                if call is not None:
                    call.inbox.append(event)
                    call.data_lot.unpark_all()
                elif kind is Body:
                    # Its stream was answered without an app call (503,
                    # 501...) by an event before this one: no one reads it.
                    self.protocol.consumed(event.stream_id, len(event.data))
            elif kind is Request:
                self._start(event)
            elif kind is WindowOpened:
                if event.stream_id:
                    call = self.streams.get(event.stream_id)
                    if call is not None:
                        call.window_lot.unpark_all()
                else:
                    for call in self.streams.values():
                        call.window_lot.unpark_all()
            elif kind is StreamReset:
                call = self.streams.get(event.stream_id)
                if call is not None:
                    call.on_reset()
            elif kind is ProtocolError:
                logger.debug(
                    "Rejected HTTP/2 request from %s: %s (%d)",
                    self.client,
                    event.reason,
                    event.status,
                )
                self._answer_error(event.stream_id, event.status)
            elif kind is ConnectionEnded:
                if event.error:
                    # The GOAWAY is queued; it goes out before the close.
                    logger.debug(
                        "HTTP/2 connection from %s ended: %s.",
                        self.client,
                        event.reason,
                    )
                    self._streams_gone()
                else:
                    self.closing = True  # the client opens no more streams

    def _start(self, request: Request) -> None:
        assert self._nursery is not None
        stream_id = request.stream_id
        if request.protocol:
            if is_extended_connect(request):
                # A WebSocket over HTTP/2 (RFC 8441): admission and the
                # handshake's checks are the session's, as on HTTP/1.1.
                session = H2WebSocketSession(self, request)
                self.streams[stream_id] = session
                self._nursery.start_soon(session.run_stream)
                return
            # Extended CONNECT for a protocol not served here.
            self._refuse(request, 501)
            return
        if not self.server.admit_request():
            self._refuse(request, 503)
            return
        call = H2Call(self, request, self._build_scope(request))
        self.streams[stream_id] = call
        self._nursery.start_soon(call.run)

    def _refuse(self, request: Request, status: int) -> None:
        """Answer a request with an error, without an app call."""
        metrics = self.server.metrics
        if metrics is not None:
            metrics.request_done(request.method, status, "http/2", 0, 0, 0.0)
        self._answer_error(request.stream_id, status)

    def _answer_error(self, stream_id: int, status: int) -> None:
        """A plain-text error answer on a stream that gets no app call."""
        protocol = self.protocol
        body = b"%d %s" % (status, REASON_PHRASES.get(status, b""))
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
        ]
        try:
            protocol.respond(
                stream_id, status, headers, self.server.default_header_pairs(), False
            )
            protocol.send_body(stream_id, memoryview(body), True)
        except (StreamGone, ValueError):
            pass
        # The rest of a request body is not wanted (RFC 9113 section 8.1),
        # and a stream the client leaves open would be kept forever.
        protocol.reset(stream_id, NO_ERROR)
        protocol.stream_done(stream_id)

    def stream_done(self, call: Stream) -> None:
        """A stream's app call has ended: forget it, and credit unread body."""
        stream_id = call.stream_id
        protocol = self.protocol
        unread = sum(len(e.data) for e in call.inbox if type(e) is Body)
        if call.pending_body is not None and type(call.pending_body) is Body:
            unread += len(call.pending_body.data)
        if unread:
            protocol.consumed(stream_id, unread)
        if not call.body_complete and not call.disconnected:
            # The response is complete and the rest of the request is not
            # wanted (RFC 9113 section 8.1).
            protocol.reset(stream_id, NO_ERROR)
        protocol.stream_done(stream_id)
        del self.streams[stream_id]
        if not self.streams:
            self._idle_since = now = trio.current_time()
            if self.closing:
                self._wake()
            elif self._scope is not None:
                # The read under way began with streams open: no deadline.
                self._scope.deadline = now + self.server.config.timeout_keep_alive
        if protocol.has_output:
            # The reset or window credit queued here: the connection task
            # writes it, as this may run in a cancelled scope.
            self._wake()

    def cycle_finished(self, call: AppCall) -> None:
        """The response of a stream is complete (``AppCall`` calls this)."""
        call.finished = True

    def _build_scope(self, request: Request) -> dict[str, Any]:
        server = self.server
        scope = http_scope(
            request,
            scheme=self.scheme,
            client=self.client,
            server=self.sockname,
            root_path=server.config.root_path,
            state=server.state,
        )
        weight, depends_on = request.priority or (16, 0)
        scope["extensions"]["http.response.priority"] = {
            "weight": weight,
            "depends_on": depends_on,
        }
        if self.tls is None and (
            server.trusted_proxies is None or not request.forwarded
        ):
            return scope
        return add_edge_facts(
            scope, self.tls, server.trusted_proxies, forwarded=request.forwarded
        )

    def finish_scope(
        self, scope: dict[str, Any], *, forwarded: bool = True
    ) -> dict[str, Any]:
        """Add what the edge knows to a WebSocket scope."""
        return add_edge_facts(
            scope, self.tls, self.server.trusted_proxies, forwarded=forwarded
        )

    async def _close(self) -> None:
        """Send what is queued (a GOAWAY), then our EOF, and drain the client's."""
        if self._gone:
            return
        if self._nursery is not None and self._nursery.cancel_scope.cancel_called:
            return
        protocol = self.protocol
        if not protocol.closed:
            protocol.goaway()
        with trio.move_on_after(_LINGER_SECONDS) as scope:
            scope.shield = True
            try:
                await self.flush()
                await self.stream.send_eof()  # type: ignore[attr-defined]
            except (
                ClientDisconnected,
                trio.BrokenResourceError,
                trio.ClosedResourceError,
                AttributeError,
            ):
                return
            while await self.receive_directly():
                pass


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
        body = self.app_sent(message)
        if body is None:
            await trio.lowlevel.checkpoint()
            return
        if type(body) is not bytes and body.__class__ in _COMMANDS:
            await self._run_command(body)  # type: ignore[arg-type]
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
            await self._send_data(body, end)
        else:
            await self._flush()
        if self.state is _DONE:
            self._response_complete()

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

    async def _flush(self) -> None:
        try:
            await self.conn.flush()
        except ClientDisconnected:
            self.stream_gone()
            raise

    async def _send_data(self, data: bytes, end: bool) -> None:
        await send_on_stream(self.conn, self, data, end)

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

    def _log_access(self) -> None:
        request = self.request
        scope = self.scope
        entry = AccessEntry(
            client=scope["client"],
            method=request.method.decode("ascii"),
            target=request.target.decode("ascii", "replace"),
            http_version="2.0",
            scheme=scope["scheme"],
            status=self.status,
            body_bytes=self.body_bytes_sent(),
            duration=time.perf_counter() - self.started_at,
            request_headers=request.headers,
            response_headers=self.response_headers,
        )
        log_access(self.conn.server.access_format, entry)
