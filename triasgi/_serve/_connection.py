"""One HTTP/1.1 connection: a parser on one side, the ASGI request cycle on the other.

The parser is h11 or the httptools backend (``--http``, see _h1parse.py);
both give h11's events.

Shape of a connection (see DESIGN.md)::

    connection nursery (its cancel scope gets the disconnect deadline)
    ├── the connection task: reads the socket, starts each request cycle,
    │   and does what lies between requests (error answers, an unread body
    │   to discard, closing).  Its reads run in a cancel scope of its own,
    │   which holds the keep-alive and request-header deadlines.
    └── the app call of each request cycle, or the WebSocket session

The connection task keeps reading while an app runs, so a client that goes
away is noticed even while the app is busy; it stops once ``_HIGH_WATER``
bytes wait unparsed, so a client can make us buffer at most that and one
read (``_LARGE_READ_SIZE``).
A WebSocket session, whose own task reads all the time, takes reading over.

When a response ends the common way (complete, keep-alive, the request read
to its end), the app's task readies the connection for the next request
itself, and the connection task, already waiting for the next bytes, is
not woken.  Any other ending wakes it (``_wake``) by cancelling its read
scope.  A keep-alive request then takes four task steps, not six
(docs/performance.md).
"""

from __future__ import annotations

import logging
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from math import inf
from typing import TYPE_CHECKING, Any

import h11
import trio

from .._asgi._messages import ResponseState, check_headers, next_response_state
from .._asgi._proxy_headers import apply_proxy_headers
from .._asgi._scope import ASGI_VERSION, decode_path, split_target
from .._errors import ASGIProtocolError, ClientDisconnected
from .._logging import AccessEntry, log_access
from .._protocol._h1parse import IDLE_PARSER, ParsedRequest, RequestHead
from .._protocol._h1writer import (
    REASON_PHRASES,
    ResponseError,
    ResponseWriter,
    has_close_token,
)
from .._types import Address, Message
from ._websocket import WebSocketSession, is_websocket_upgrade

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from .._config import Config
    from ._server import Server

logger = logging.getLogger("triasgi.error")
access_logger = logging.getLogger("triasgi.access")

_READ_SIZE = 64 * 1024
# A plain socket whose last read filled its buffer has more waiting (a large
# body, say): it is read in bigger steps, four reads fewer per MiB each.
_LARGE_READ_SIZE = 256 * 1024
_HIGH_WATER = 64 * 1024
# How long a closing connection waits for the client's EOF after ours, so that
# unread bytes from the client do not turn our close into a reset that could
# destroy the response in flight.
_LINGER_SECONDS = 1.0
# Unread request body we are willing to read and discard to keep a keep-alive
# connection open after the app has responded without reading it all.
_MAX_DISCARD = 1024 * 1024
# From this many bytes on, the parts of one write go to the kernel as they
# are instead of being joined first.
_VECTORED_WRITE_SIZE = 64 * 1024

# What the connection task's reads return for it to act on (besides an
# error status to answer with), and what it acts on when its read deadline
# passes.
_END = object()
_WEBSOCKET = object()
_TIMED_OUT = object()

_QUIET_STATES = frozenset({h11.IDLE, h11.DONE, h11.MUST_CLOSE, h11.CLOSED})
# A read that fails like this is the client gone, as EOF is.
_READ_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class _Waiters:
    """Tasks waiting for a connection's state to change: a minimal ParkingLot.

    A connection has a few of these and rarely more than one task in any,
    so a list stands in for ParkingLot's ordered dict; it is part of the
    difference between under and over 10 KiB per idle connection
    (docs/performance.md).
    """

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: list[trio.lowlevel.Task] | None = None

    def park(self) -> Awaitable[object]:
        """Wait until :meth:`unpark_all` is called (or the task is cancelled).

        Use as ``await waiters.park()``.  Not a coroutine function itself, so
        that a parked task holds one frame fewer.
        """
        task = trio.lowlevel.current_task()
        if self._tasks is None:
            self._tasks = [task]
        else:
            self._tasks.append(task)
        # The caller awaits it at once: that is the contract of park().
        return trio.lowlevel.wait_task_rescheduled(  # noqa: ASYNC105
            partial(self._abort, task)
        )

    def _abort(self, task: trio.lowlevel.Task, _: Any) -> trio.lowlevel.Abort:
        if self._tasks is not None:
            self._tasks.remove(task)
        return trio.lowlevel.Abort.SUCCEEDED

    def unpark_all(self) -> None:
        tasks = self._tasks
        if tasks is not None:
            self._tasks = None
            for task in tasks:
                trio.lowlevel.reschedule(task)


class _Flag(_Waiters):
    """A trio.Event for one connection's own tasks, without its ParkingLot.

    Two of these are made for every request.
    """

    __slots__ = ("_set",)

    def __init__(self) -> None:
        super().__init__()
        self._set = False

    def set(self) -> None:
        self._set = True
        self.unpark_all()

    async def wait(self) -> None:
        if self._set:
            await trio.lowlevel.checkpoint()
        else:
            await self.park()


class _RequestCycle:
    """One request and its response: the ``receive``/``send`` pair of an app call."""

    # Slots: one of these is made for every request.
    __slots__ = (
        "_head_sent",
        "_pending_body",
        "_start_headers",
        "_writer",
        "body_complete",
        "bytes_sent",
        "conn",
        "disconnected",
        "finished",
        "head_only",
        "head_written",
        "must_close",
        "released",
        "request",
        "scope",
        "sent_100",
        "started_at",
        "state",
        "status",
    )

    def __init__(
        self,
        conn: HTTP11Connection,
        scope: dict[str, Any],
        request: RequestHead,
        head: _Head,
    ) -> None:
        self.conn = conn
        self.scope = scope
        self.request = request
        self.head_only = request.method == b"HEAD"
        self.state = ResponseState.START
        self.body_complete = False
        self.disconnected = False
        self.must_close = False
        self.status = 0
        self.bytes_sent = 0
        self.started_at = time.perf_counter()
        # Whether the response is complete or the app has returned: see
        # HTTP11Connection.cycle_finished.
        self.finished = False
        # Set when receive() should stop waiting: disconnect or response done.
        self.released = _Flag()
        self._head_sent = False
        # Whether any byte of the response may have reached the wire; until
        # then a failing app can still get a clean 500 instead.
        self.head_written = False
        self._start_headers: list[tuple[bytes, bytes]] = []
        self._pending_body: h11.Data | h11.EndOfMessage | None = None
        self._writer = ResponseWriter(
            http_version=request.http_version,
            head_only=self.head_only,
            keep_alive=head.keep_alive,
        )
        self.sent_100 = False

    # -- receive -------------------------------------------------------------

    async def receive(self) -> Message:
        if self.disconnected or self.state is ResponseState.DONE:
            # No cancellable checkpoint here: Starlette's is_disconnected()
            # calls receive() in an already-cancelled scope and must see this.
            await trio.lowlevel.cancel_shielded_checkpoint()
            return {"type": "http.disconnect"}
        if not self.body_complete:
            return await self._receive_body()
        await self.released.wait()
        return {"type": "http.disconnect"}

    async def _receive_body(self) -> Message:
        conn = self.conn
        if (
            conn.parser.they_are_waiting_for_100_continue
            and not self.sent_100
            and not self._head_sent
        ):
            self.sent_100 = True
            await conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self._pending_body is not None:
            event: Any = self._pending_body
            self._pending_body = None
        else:
            timeout = conn.server.config.timeout_request_body
            event = None
            with trio.move_on_after(timeout):
                try:
                    event = await conn.next_event()
                except h11.RemoteProtocolError as exc:
                    logger.debug("Bad request body from %s: %s", conn.client, exc)
                    conn.client_gone()
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return {"type": "http.disconnect"}
            if event is None:
                # A body that stalls is a client that has gone, for the app.
                logger.debug(
                    "Request body from %s stalled for %g seconds.", conn.client, timeout
                )
                conn.client_gone()
                return {"type": "http.disconnect"}
        if type(event) is h11.Data:
            # Deliver the end of the body with the last chunk when it is
            # already here, saving the app a round trip.
            more_body = True
            try:
                after = conn.next_event_nowait()
            except h11.RemoteProtocolError:
                after = None
            if type(after) is h11.EndOfMessage:
                self.body_complete = True
                more_body = False
            elif type(after) is h11.Data:
                self._pending_body = after
            return {
                "type": "http.request",
                "body": bytes(event.data),
                "more_body": more_body,
            }
        if type(event) is h11.EndOfMessage:
            self.body_complete = True
            return {"type": "http.request", "body": b"", "more_body": False}
        # ConnectionClosed or anything unexpected: the client is gone.
        conn.client_gone()
        return {"type": "http.disconnect"}

    # -- send ----------------------------------------------------------------

    async def send(self, message: Message) -> None:
        if self.disconnected:
            await trio.lowlevel.checkpoint()
            raise ClientDisconnected("The client has disconnected.")
        state = self.state
        new_state = next_response_state(state, message)
        if state is ResponseState.DONE:
            await trio.lowlevel.checkpoint()
            return
        conn = self.conn
        if state is ResponseState.START:
            self._start_response(message)
            self.state = new_state
            await trio.lowlevel.checkpoint()
            return
        body = message.get("body", b"")
        final = new_state is ResponseState.DONE
        writer = self._writer
        chunks = []
        try:
            if not self._head_sent:
                self._head_sent = True
                chunks.append(self._serialize_start(body if final else None))
            if body:
                framed = writer.body(body)
                if framed:
                    chunks.append(framed)
                    self.bytes_sent += len(body)
            if final:
                end = writer.end()
                if end:
                    chunks.append(end)
        except ResponseError as exc:
            self.must_close = True
            raise ASGIProtocolError(f"Invalid response: {exc}.") from None
        self.state = new_state
        self.head_written = True
        if chunks:
            # The response is complete once the kernel has its last byte,
            # before the write's schedule point: by then the client may have
            # sent its next request, which is best met by a connection that
            # is ready for it (cycle_finished).
            await conn.write(*chunks, then=self._response_complete if final else None)
        else:
            if final:
                self._response_complete()
            await trio.lowlevel.checkpoint()

    def _start_response(self, message: Message) -> None:
        status = message["status"]
        headers = check_headers(message.get("headers", ()))
        self.status = status
        self._start_headers = headers

    def _serialize_start(self, final_body: bytes | None) -> bytes:
        """The response head, built when the first body message arrives.

        A response given in one body message with no framing header gets a
        content-length instead of chunked encoding (``final_body``).
        """
        conn = self.conn
        if conn.closing:
            self._writer.keep_alive = False
        return self._writer.head(
            self.status,
            REASON_PHRASES.get(self.status, b""),
            self._start_headers,
            defaults=conn.server.default_header_lines(),
            final_body=final_body,
        )

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may serve another request after this one."""
        return self._writer.keep_alive

    def _response_complete(self) -> None:
        self.released.set()
        if self.conn.server.access_log:
            self.conn.log_access(self)
        self.conn.cycle_finished(self)

    # -- outcome of the app call --------------------------------------------

    def app_returned(self, exc: Exception | None) -> None:
        """Record how the app call ended; say what must happen to the connection."""
        if self.state is ResponseState.DONE:
            if exc is not None and not _is_disconnect(exc):
                logger.error(
                    "Exception in ASGI application after the response", exc_info=exc
                )
            return
        if self.disconnected:
            if exc is not None and not _is_disconnect(exc):
                logger.error("Exception in ASGI application", exc_info=exc)
            return
        self.must_close = True
        if exc is not None:
            logger.error("Exception in ASGI application", exc_info=exc)
        elif self.state is ResponseState.START:
            logger.error("ASGI callable returned without starting a response.")
        else:
            logger.error("ASGI callable returned without completing the response.")

    def on_disconnect(self) -> None:
        self.disconnected = True
        self.released.set()


def _is_disconnect(exc: BaseException) -> bool:
    if isinstance(exc, ClientDisconnected):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_disconnect(e) for e in exc.exceptions)
    return False


class HTTP11Connection:
    """Serves HTTP/1.1 requests on one stream until either side closes it."""

    # Slots: every idle connection holds one of these.
    __slots__ = (
        "_apps_done",
        "_apps_running",
        "_cancel_requested",
        "_cycle",
        "_data_lot",
        "_drained",
        "_eof",
        "_eof_fed",
        "_head_deadline",
        "_idle_since",
        "_inbox",
        "_max_head",
        "_nursery",
        "_raw_socket",
        "_reader_done",
        "_reader_lot",
        "_scope",
        "_session_over",
        "_websocket",
        "_woken",
        "client",
        "closing",
        "parser",
        "scheme",
        "server",
        "sockname",
        "stream",
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
    ) -> None:
        self.server = server
        self.stream = stream
        self.client = client
        self.sockname = sockname
        self.scheme = scheme
        self.tls = tls
        self.parser: Any = IDLE_PARSER
        self.closing = False
        self._max_head = server.config.h11_max_incomplete_event_size
        # What has been read and nobody has taken yet.  bytes, not
        # a bytearray: the usual single read is then handed on without a copy.
        self._inbox = b""
        self._eof = False
        self._eof_fed = False
        # The connection task parks in one while the inbox is full; the tasks
        # that take from the inbox park in the other until there is more or EOF.
        self._reader_lot = _Waiters()
        self._data_lot = _Waiters()
        # The plain socket under a plain trio SocketStream (not TLS, not an
        # in-memory stream), for the fast path of write().
        raw = getattr(getattr(stream, "socket", None), "_sock", None)
        self._raw_socket = (
            raw
            if type(stream) is trio.SocketStream and isinstance(raw, socket.socket)
            else None
        )
        # Whether the last read of the plain socket emptied it (_recv_raw);
        # a new connection is taken to have nothing waiting yet.
        self._drained = True
        # Set when the connection task has handed reading over (WebSocket).
        self._reader_done = False
        self._apps_running = 0
        self._apps_done = _Waiters()
        self._nursery: trio.Nursery | None = None
        self._cancel_requested = False
        self._cycle: _RequestCycle | None = None
        self._websocket: WebSocketSession | None = None
        self._session_over = False
        # The cancel scope the connection task reads in, and whether it was
        # cancelled to wake the task rather than by its deadline.
        self._scope: trio.CancelScope | None = None
        self._woken = False
        # The deadline of the head now arriving; inf when none is arriving.
        self._head_deadline = inf
        # When the connection last became idle: the keep-alive timeout counts
        # from here (see _await_head).
        self._idle_since = trio.current_time()

    # -- lifecycle -----------------------------------------------------------

    async def run(self) -> None:
        """Serve until the connection is done, then close the stream."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self._cancel_requested:
                    nursery.cancel_scope.cancel()
                try:
                    await self._drive()
                finally:
                    await self._close()
                if self._apps_running:
                    # An app call outlives its response (a BackgroundTask):
                    # the client is done with, so it is not kept waiting for
                    # the connection to close; the task runs on.
                    await trio.aclose_forcefully(self.stream)
                    while self._apps_running:
                        await self._apps_done.park()
        finally:
            await trio.aclose_forcefully(self.stream)

    def cancel(self) -> None:
        """Stop serving at once: the app call in flight is cancelled."""
        self._cancel_requested = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def begin_shutdown(self) -> None:
        """Graceful shutdown: finish the request in flight, then close."""
        self.closing = True
        if self._websocket is not None:
            self._websocket.begin_shutdown()
        elif self._cycle is None:
            self._wake()

    def client_gone(self) -> None:
        """The client closed or reset the connection."""
        self._eof = True
        self._data_lot.unpark_all()
        cycle = self._cycle
        if (
            cycle is not None
            and not cycle.disconnected
            and cycle.state is not ResponseState.DONE
        ):
            cycle.on_disconnect()
            self.grant_disconnect_grace()
        if self._websocket is not None:
            self._websocket.client_gone()

    def grant_disconnect_grace(self) -> None:
        """Cancel what the connection runs ``disconnect_grace_period`` from now."""
        assert self._nursery is not None
        scope = self._nursery.cancel_scope
        scope.deadline = min(
            scope.deadline,
            trio.current_time() + self.server.config.disconnect_grace_period,
        )

    def _wake(self) -> None:
        """Make the connection task leave its reads and look at the connection."""
        if self._scope is not None:
            self._woken = True
            self._scope.cancel()

    async def _close(self) -> None:
        # Lingering matters only when the client may still be sending: after
        # an error, or with a request (body) we did not read to the end.
        try:
            while self.parser.their_state is h11.SEND_BODY:
                if type(self.next_event_nowait()) not in (h11.Data, h11.EndOfMessage):
                    break
        except h11.RemoteProtocolError:
            pass
        if self._eof or (not self._inbox and self.parser.their_state in _QUIET_STATES):
            return
        if self._nursery is not None and self._nursery.cancel_scope.cancel_called:
            return  # a hard stop does not linger
        # Send our EOF, then drop what the client still sends until its EOF,
        # within a bound.
        with trio.move_on_after(_LINGER_SECONDS) as scope:
            scope.shield = True
            try:
                await self.stream.send_eof()  # type: ignore[attr-defined]
            except (trio.BrokenResourceError, trio.ClosedResourceError, AttributeError):
                return
            self._inbox = b""
            while await self._receive_directly():
                pass
            self._eof = True

    # -- reading -------------------------------------------------------------

    def _feed(self) -> bool:
        """Move what has been read into the parser; False if there was nothing."""
        if self._eof_fed:
            self._inbox = b""
            return False
        if self.parser is IDLE_PARSER and (self._inbox or self._eof):
            self.parser = self.server.new_parser()
        if self._inbox:
            self.parser.receive_data(self._inbox)
            self._inbox = b""
            self._reader_lot.unpark_all()
            return True
        if self._eof and not self._eof_fed:
            self._eof_fed = True
            self.parser.receive_data(b"")
            return True
        return False

    def next_event_nowait(self) -> Any:
        """The next h11 event from what has arrived so far (maybe NEED_DATA)."""
        event = self.parser.next_event()
        if event is h11.NEED_DATA and self._feed():
            event = self.parser.next_event()
        return event

    async def next_event(self) -> Any:
        """The next h11 event, waiting for the connection task to read more.

        For the app call's task; the connection task itself uses
        :meth:`_read_event`.
        """
        while True:
            event = self.next_event_nowait()
            if event is not h11.NEED_DATA:
                return event
            await self._data_lot.park()

    async def _read_event(self) -> Any:
        """The next h11 event, reading the stream: for the connection task."""
        while True:
            event = self.next_event_nowait()
            if event is not h11.NEED_DATA:
                return event
            data = await self._receive_directly()
            if data:
                self._inbox += data
            else:
                self.client_gone()

    async def receive_bytes(self) -> bytes:
        """The next bytes from the client, waiting for some; b"" at EOF.

        For a protocol that takes the connection over from h11 (WebSocket),
        whose task reads all the time anyway and so notices a disconnect at
        once.  The connection task hands over: it stops after its next read
        (see ``_serve_websocket``), and from then on this reads the stream
        itself.
        """
        if self._reader_done and not self._inbox and not self._eof:
            data = await self._receive_directly()
            if not data:
                self.client_gone()
            return data
        await trio.lowlevel.checkpoint()
        while not self._inbox and not self._eof:
            await self._data_lot.park()
        data = self._inbox
        self._inbox = b""
        self._reader_lot.unpark_all()
        return data

    def _receive_some(self) -> Callable[[int], Awaitable[bytes | bytearray]]:
        """How this connection reads: the one place that chooses.

        On a plain socket, trio's socket directly: the stream's layers (a
        conflict detector, an error-translating context manager) cost time
        per read and memory per idle connection, for nothing here, where one
        task at a time reads.
        """
        if self._raw_socket is not None:
            return self._recv_raw
        return self.stream.receive_some

    async def _recv_raw(self, size: int) -> bytes:
        """One read of the plain socket: trio's socket recv, minus one guess.

        trio tries the read before waiting for the socket to be readable.
        After a read that drained the socket (it returned less than asked
        for), that try fails nearly always, at the cost of a system call and
        an exception: so then this waits first.
        """
        raw = self._raw_socket
        assert raw is not None
        if self._drained:
            await trio.lowlevel.wait_readable(raw)
        else:
            size = max(size, _LARGE_READ_SIZE)
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                data = raw.recv(size)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(raw)
            else:
                self._drained = len(data) < size
                await trio.lowlevel.cancel_shielded_checkpoint()
                return data
        while True:
            try:
                data = raw.recv(size)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(raw)
                continue
            self._drained = len(data) < size
            return data

    async def _receive_directly(self) -> bytes:
        """One read of the stream; b"" at EOF or when the read fails."""
        try:
            data = await self._receive_some()(_READ_SIZE)
        except _READ_ERRORS:
            return b""
        return bytes(data)  # no copy for bytes, which is what a socket gives

    # -- writing -------------------------------------------------------------

    async def write(
        self, *parts: bytes, then: Callable[[], None] | None = None
    ) -> None:
        """Send ``parts`` in order; a client that does not take them in time
        is dropped.  ``then`` is called once the kernel has taken them all.

        Small parts are joined into one buffer; large ones go to the kernel
        as they are (one ``sendmsg``), so a 1 MiB body is not copied to put
        a response head in front of it.  A WebSocket session is left to its
        own liveness rules (pings, and backpressure that waits for a slow
        reader), so ``timeout_write`` bounds HTTP responses only.
        """
        if len(parts) == 1:
            size = len(parts[0])
        else:
            size = sum(map(len, parts))
            if size < _VECTORED_WRITE_SIZE:
                parts = (b"".join(parts),)
        raw = self._raw_socket
        if raw is not None:
            # The common case: the kernel takes it all at once.  This is
            # what trio's socket send does (a cancellation point, the
            # non-blocking call, a schedule point), without the stream
            # layers and the timeout's cancel scope, which nothing needs
            # when the write did not wait.
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                sent = raw.send(parts[0]) if len(parts) == 1 else raw.sendmsg(parts)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self.client_gone()
                raise ClientDisconnected("The client has disconnected.") from exc
            if sent == size:
                if then is not None:
                    then()
                await trio.lowlevel.cancel_shielded_checkpoint()
                return
            await trio.lowlevel.cancel_shielded_checkpoint()
        else:
            sent = 0
        # What is left, as views: no copies of large buffers.
        left = _after(parts, sent)
        timeout = self.server.config.timeout_write if self._websocket is None else inf
        try:
            with trio.move_on_after(timeout) as scope:
                for view in left:
                    await self.stream.send_all(view)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.client_gone()
            raise ClientDisconnected("The client has disconnected.") from exc
        if scope.cancelled_caught:
            # Part of the data may be on the wire: the stream is unusable now.
            logger.debug("Dropping %s: no data taken in %gs.", self.client, timeout)
            self.client_gone()
            raise ClientDisconnected("The client stopped reading.")
        if then is not None:
            then()

    async def _send_error(self, status: int, detail: str = "") -> None:
        """Answer with a plain-text error and mark the connection for closing."""
        reason = REASON_PHRASES.get(status, b"Error")
        body = reason + b"\n"
        lines = [
            b"HTTP/1.1 %d %s\r\n" % (status, reason),
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n",
        ]
        lines += [line for _, line in self.server.default_header_lines()]
        lines.append(b"\r\n")
        head_only = self._cycle is not None and self._cycle.head_only
        if not head_only:
            lines.append(body)
        try:
            await self.write(b"".join(lines))
        except ClientDisconnected:
            pass

    # -- the connection task ------------------------------------------------

    async def _drive(self) -> None:
        """The connection task: read, start each request cycle, act between them."""
        while True:
            scope = self._scope = trio.CancelScope()
            self._woken = False
            action: object = _TIMED_OUT
            with scope:
                action = await self._read_and_dispatch()
            if scope.cancelled_caught and self._woken:
                # A request cycle ended off the common path, a pipelined
                # request is waiting, or the server is shutting down.
                cycle = self._cycle
                if cycle is not None:
                    # Not finished: the wake was for a pipelined request,
                    # which this task started in the meantime (bytes that
                    # came in the same pass of the scheduler as the wake).
                    if cycle.finished and not await self._after_response(cycle):
                        return
                elif self.closing or self._eof:
                    return
                continue
            if action is _TIMED_OUT:
                now = trio.current_time()
                if now >= self._head_deadline:
                    logger.debug("Request head from %s: %d", self.client, 408)
                    await self._send_error(408)
                    return
                if self._cycle is None and now >= (
                    self._idle_since + self.server.config.timeout_keep_alive
                ):
                    return  # idle for the keep-alive timeout: the connection ends
                # An early deadline, set for an earlier idle time (see
                # _await_head): the next scope gets the right one.
                continue
            if action is _WEBSOCKET:
                await self._serve_websocket()
                return
            if type(action) is int:
                await self._send_error(action)
            return

    async def _read_and_dispatch(self) -> object:
        """Start each request as its head arrives, and read; return what needs more.

        This runs in the connection task's read scope, which one keep-alive
        request after another need not leave.  What it returns is for
        :meth:`_drive`: an error status to answer with, ``_WEBSOCKET`` or
        ``_END``.
        """
        receive = self._receive_some()
        while True:
            if self._cycle is None:
                action = self._dispatch()
                if action is not None:
                    return action
            elif self._eof:
                await trio.sleep_forever()  # the app call's end wakes this task
            while len(self._inbox) >= _HIGH_WATER:
                await self._reader_lot.park()
            try:
                data = await receive(_READ_SIZE)
            except _READ_ERRORS:
                data = b""
            if not data:
                self.client_gone()
                if self._cycle is None:
                    # What came before the EOF may be half a head: the parser
                    # sees the EOF and says so (400), or the connection ends.
                    action = self._dispatch()
                    if action is not None:
                        return action
                    if self._cycle is None:
                        return _END
                    self.client_gone()  # a request with the EOF: gone, too
                # The app call runs on, within its disconnect grace period;
                # its end wakes this task.
                await trio.sleep_forever()
            self._inbox += data
            self._data_lot.unpark_all()

    def _dispatch(self) -> object:
        """Start the next request cycle if its head is here.

        None when a cycle has started or more bytes are needed; otherwise
        what the connection task must do (see :meth:`_read_and_dispatch`).
        """
        try:
            event = self.next_event_nowait()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            logger.debug("Malformed request from %s: %s (%d)", self.client, exc, status)
            return status
        if event is h11.NEED_DATA:
            return self._await_head()
        if type(event) is not ParsedRequest and type(event) is not h11.Request:
            return _END  # the client closed
        head = _scan_head(event, self.server.config, self._max_head)
        if head.problem is not None:
            status, reason = head.problem
            logger.debug(
                "Rejected request from %s: %s (%d)", self.client, reason, status
            )
            return status
        if head.upgrade and is_websocket_upgrade(event):
            self._websocket = WebSocketSession(self, event)
            return _WEBSOCKET
        cycle = _RequestCycle(self, self._build_scope(event, head), event, head)
        self._cycle = cycle
        if not self.server.admit_request():
            return 503
        assert self._nursery is not None
        self._head_deadline = inf
        # A body already here (or its absence: a GET's end of message) is
        # taken now, so the request is complete on our side as early as
        # possible and nothing is left to discard after the response.
        try:
            first = self.next_event_nowait()
        except h11.RemoteProtocolError:
            first = None  # receive() meets the error again and reports it.
        if type(first) is h11.Data or type(first) is h11.EndOfMessage:
            cycle._pending_body = first
        self._nursery.start_soon(self._run_app, cycle)
        return None

    def _await_head(self) -> object:
        """Deadlines and limits for a head still to come; None to read on.

        An idle connection gets ``timeout_keep_alive``; once the first byte of
        a head is here, the whole head gets ``timeout_request_header`` and the
        request line ``limit_request_line`` bytes (slowloris, or a line that
        never ends: 408 from :meth:`_drive`, or 414 here).
        """
        if self.closing:
            return _END
        config = self.server.config
        scope = self._scope
        assert scope is not None
        pending = self.parser.trailing_data[0]
        if not pending:
            # The keep-alive deadline.  It is set once and left in place while
            # requests come and go: moving a deadline for every request costs
            # more than the occasional early one, which _drive recognizes
            # (``_idle_since``) and follows with the right one.
            if scope.deadline == inf:
                scope.deadline = self._idle_since + config.timeout_keep_alive
            return None
        # Part of a head is here; the common case, a head that arrives
        # whole, never gets this far.
        if self._head_deadline == inf:
            self._head_deadline = trio.current_time() + config.timeout_request_header
        if scope.deadline != self._head_deadline:
            scope.deadline = self._head_deadline
        if _request_line_too_long(pending, config.limit_request_line):
            logger.debug("Request head from %s: %d", self.client, 414)
            return 414
        return None

    def cycle_finished(self, cycle: _RequestCycle) -> None:
        """A request cycle's response is complete, or its app call has returned.

        The common ending (a complete response on a keep-alive connection
        whose request was read to its end) readies the connection for the
        next request here, in the app's task: the connection task, already
        waiting for the next bytes, goes on waiting, now with a keep-alive
        deadline (see :meth:`_await_head`).  Any other ending wakes it, and
        :meth:`_after_response` decides.
        """
        if cycle.finished:
            return
        cycle.finished = True
        if (
            cycle.state is ResponseState.DONE
            and cycle.keep_alive
            and not (cycle.must_close or cycle.disconnected)
            and not (self._eof or self.closing)
            and self.parser.their_state is h11.DONE
        ):
            self._next_parser()
            self._cycle = None
            self._idle_since = now = trio.current_time()
            if self.parser is IDLE_PARSER and not self._inbox:
                scope = self._scope
                assert scope is not None
                if scope.deadline == inf:
                    scope.deadline = now + self.server.config.timeout_keep_alive
                return
        self._wake()

    async def _after_response(self, cycle: _RequestCycle) -> bool:
        """A request cycle that ended off the common path; False to close."""
        if cycle.disconnected or self._eof:
            return False
        if cycle.must_close or cycle.state is not ResponseState.DONE:
            if not cycle.head_written:
                await self._send_error(500)
            return False
        if self.closing or not cycle.keep_alive:
            return False
        if self.parser.their_state is h11.SEND_BODY and not await self._discard_body(
            cycle
        ):
            return False
        if self.parser.their_state is not h11.DONE:
            return False
        self._next_parser()
        self._cycle = None
        self._idle_since = trio.current_time()
        return True

    async def _run_app(self, cycle: _RequestCycle) -> None:
        server = self.server
        self._apps_running += 1
        try:
            await server.app(cycle.scope, cycle.receive, cycle.send)
        except Exception as exc:
            cycle.app_returned(exc)
        else:
            cycle.app_returned(None)
        finally:
            self._apps_running -= 1
            if not self._apps_running:
                self._apps_done.unpark_all()
            server.release_request()
            self.cycle_finished(cycle)

    async def _serve_websocket(self) -> None:
        """Run the WebSocket session; read for it until its frame task reads."""
        assert self._nursery is not None
        assert self._websocket is not None
        self._nursery.start_soon(self._run_session, self._websocket)
        scope = self._scope = trio.CancelScope()
        with scope:
            # A client that goes away while the app decides on the handshake
            # is noticed here; bytes read go to the session (receive_bytes).
            try:
                data = await self._receive_some()(_READ_SIZE)
            except _READ_ERRORS:
                data = b""
            if data:
                self._inbox += data
                self._data_lot.unpark_all()
                self._reader_done = True
            else:
                self.client_gone()
            if not self._session_over:
                await trio.sleep_forever()  # until the session ends: _run_session

    async def _run_session(self, session: WebSocketSession) -> None:
        try:
            await session.run()
        finally:
            self._session_over = True
            self._wake()

    def _next_parser(self) -> None:
        """A fresh parser for the next request, holding what has arrived.

        Responses are written by ResponseWriter, not through h11, so h11's
        side of the connection never reaches DONE: each request gets its own
        parser, and bytes already received (a pipelined request) move over.
        """
        data, closed = self.parser.trailing_data
        if not data and not closed:
            self.parser = IDLE_PARSER
            return
        self.parser = self.server.new_parser()
        if data:
            self.parser.receive_data(data)
        if closed:
            self.parser.receive_data(b"")

    async def _discard_body(self, cycle: _RequestCycle) -> bool:
        """Read and drop an unread request body; False if the connection must close."""
        if self.parser.they_are_waiting_for_100_continue and not cycle.sent_100:
            return False  # they will not send it; we never asked for it.
        discarded = 0
        with trio.move_on_after(self.server.config.timeout_keep_alive):
            while discarded <= _MAX_DISCARD:
                try:
                    event = await self._read_event()
                except h11.RemoteProtocolError:
                    return False
                if type(event) is h11.EndOfMessage:
                    return True
                if type(event) is not h11.Data:
                    return False
                discarded += len(event.data)
        return False

    def _build_scope(self, request: RequestHead, head: _Head) -> dict[str, Any]:
        raw_path, query_string = split_target(request.target)
        server = self.server
        return self.finish_scope(
            {
                "type": "http",
                "asgi": dict(ASGI_VERSION),
                "http_version": request.http_version.decode("ascii"),
                "method": request.method.decode("ascii"),
                "scheme": self.scheme,
                "path": decode_path(raw_path),
                "raw_path": raw_path,
                "query_string": query_string,
                "root_path": server.config.root_path,
                "headers": head.headers,
                "client": self.client,
                "server": self.sockname,
                "state": server.state.copy(),
                "extensions": {},
            },
            forwarded=head.forwarded,
        )

    def finish_scope(
        self, scope: dict[str, Any], *, forwarded: bool = True
    ) -> dict[str, Any]:
        """Add what the edge knows to an HTTP or WebSocket scope.

        The ``tls`` extension on a TLS connection, and the client, scheme and
        server a trusted proxy forwarded (``proxy_headers``); ``forwarded``
        False says the request has no forwarding header at all.
        """
        if self.tls is not None:
            scope["extensions"]["tls"] = self.tls
        if forwarded and self.server.trusted_proxies is not None:
            apply_proxy_headers(scope, self.server.trusted_proxies)
        return scope

    def log_access(self, cycle: _RequestCycle) -> None:
        request = cycle.request
        entry = AccessEntry(
            client=cycle.scope["client"],
            method=request.method.decode("ascii"),
            target=request.target.decode("ascii", "replace"),
            http_version=request.http_version.decode("ascii"),
            scheme=cycle.scope["scheme"],
            status=cycle.status,
            body_bytes=cycle.bytes_sent,
            duration=time.perf_counter() - cycle.started_at,
            request_headers=request.headers,  # type: ignore[arg-type]
            response_headers=cycle._start_headers,
        )
        log_access(self.server.access_format, entry)


def _after(parts: tuple[bytes, ...], sent: int) -> list[memoryview]:
    """Views of what is left of ``parts`` once ``sent`` bytes have gone."""
    left = []
    for part in parts:
        if sent >= len(part):
            sent -= len(part)
            continue
        left.append(memoryview(part)[sent:])
        sent = 0
    return left


def _request_line_too_long(pending: bytes, limit: int) -> bool:
    """Whether an unparsed head already has a request line over ``limit``.

    RFC 9112 section 2.2 lets a server skip empty lines before the request
    line, so those do not count.
    """
    start = len(pending) - len(pending.lstrip(b"\r\n"))
    end = pending.find(b"\n", start, start + limit + 2)
    return end < 0 and len(pending) - start > limit + 1


_FORWARDING = frozenset(
    {
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
    }
)
_NOTABLE = _FORWARDING | {
    b"transfer-encoding",
    b"content-length",
    b"connection",
    b"upgrade",
}


class _Head:
    """What one pass over a request head found."""

    __slots__ = ("forwarded", "headers", "keep_alive", "problem", "upgrade")

    def __init__(
        self,
        headers: list[tuple[bytes, bytes]],
        problem: tuple[int, str] | None,
        keep_alive: bool,
        forwarded: bool,
        upgrade: bool,
    ) -> None:
        self.headers = headers
        self.problem = problem
        self.keep_alive = keep_alive
        self.forwarded = forwarded
        # Whether it has an Upgrade header, which a WebSocket request has.
        self.upgrade = upgrade


def _scan_head(request: RequestHead, config: Config, max_head: int) -> _Head:
    """Check a request head and collect what the connection needs, in one pass.

    Problems h11 lets through, as ``(status, reason)``, first found first:

    - h11 bounds only a head that arrives in pieces, so the size of a whole
      one is checked here (431).
    - RFC 9112 section 6.3: a message with both Transfer-Encoding and
      Content-Length may be an attempt at request smuggling; we reject it
      rather than guess (400).  Section 6.1: Transfer-Encoding in an HTTP/1.0
      message means faulty framing (400).
    - The configured limits: request line (414), number of header fields
      and size of one field (431, RFC 6585 section 5).
    """
    # h11's Headers iterates through the generic Sequence protocol, one
    # __getitem__ per item; its item list is read directly when present.
    # The httptools backend's headers are a list already.
    if type(request) is ParsedRequest:
        headers = request.headers.copy()
    else:
        items = getattr(request.headers, "_full_items", None)
        if items is not None:
            headers = [(name, value) for _, name, value in items]
        else:
            headers = list(request.headers)
    line = len(request.method) + len(request.target) + len(request.http_version) + 7
    size = len(request.method) + len(request.target) + 12
    field_limit = config.limit_request_field_size
    too_large_field = b""
    has_te = has_cl = forwarded = upgrade = False
    keep_alive = request.http_version == b"1.1"
    for name, value in headers:
        field = len(name) + len(value) + 2
        size += field + 2
        if field > field_limit and not too_large_field:
            too_large_field = name
        if name in _NOTABLE:
            if name == b"transfer-encoding":
                has_te = True
            elif name == b"content-length":
                has_cl = True
            elif name == b"connection":
                if has_close_token(value):
                    keep_alive = False
            elif name == b"upgrade":
                upgrade = True
            else:
                forwarded = True
    problem: tuple[int, str] | None = None
    if size > max_head:
        problem = 431, f"request head of {size} bytes"
    elif has_te and has_cl:
        problem = 400, "both Transfer-Encoding and Content-Length"
    elif has_te and request.http_version == b"1.0":
        problem = 400, "Transfer-Encoding in an HTTP/1.0 request"
    elif line > config.limit_request_line:
        problem = 414, f"request line of {line} bytes"
    elif len(headers) > config.limit_request_fields:
        problem = 431, f"{len(headers)} header fields"
    elif too_large_field:
        problem = 431, f"header field {too_large_field!r} over {field_limit} bytes"
    return _Head(headers, problem, keep_alive, forwarded, upgrade)
