"""One HTTP/1.1 connection: its nursery, its deadlines, and its read loop.

The protocol (``_protocol/_h1.py``, sans-io) turns bytes into events and
responses into bytes; each request's app call (``_call.py``) drives an ASGI
cycle; this module owns the tasks and the time.

Shape of a connection (docs/architecture.md)::

    connection nursery (its cancel scope gets the disconnect deadline)
    ├── the connection task: reads the socket, starts each app call, and
    │   does what lies between requests (error answers, an unread body to
    │   discard, closing).  Its reads run in a cancel scope of its own,
    │   which holds the keep-alive and request-header deadlines.
    └── the app call of each request, or the WebSocket session

The connection task keeps reading while an app runs, so a client that goes
away is noticed even while the app is busy; it stops once ``_HIGH_WATER``
bytes wait unparsed, so a client can make us buffer at most that and one
read (``LARGE_READ_SIZE``).
A WebSocket session, whose own task reads all the time, takes reading over.

When a response ends the common way (complete, keep-alive, the request read
to its end), the app's task readies the connection for the next request
itself, and the connection task, already waiting for the next bytes, is
not woken.  Any other ending wakes it (``_wake``) by cancelling its read
scope.  A keep-alive request then takes two task steps, this task's and
the app's (docs/performance.md).

Graceful shutdown (``begin_shutdown``) must not lose a request that has
reached us.  Closing a socket with unread bytes makes the kernel answer with
a reset, which can also destroy a response still on its way to the client;
and an idle keep-alive connection is idle only until its client's next
request, which may be on the wire as we decide.  So a closing connection
answers every request it gets with ``connection: close``; an idle one waits
for a request until the server's ``close_idle_at`` (a worker's first-request
grace) and then once more serves bytes already waiting in the socket; and a
connection closed for shutdown sends its EOF first and reads what still
comes until the client's EOF (``_close``), instead of closing on it.
"""

from __future__ import annotations

import logging
from math import inf
from typing import TYPE_CHECKING, Any

import trio

from .._asgi._http import Outcome
from .._asgi._messages import ResponseState
from .._asgi._scope import add_edge_facts, http_scope
from .._errors import ClientDisconnected
from .._events import NEED_DATA, Body, EndBody, ProtocolError, Request
from .._metrics import http_protocol
from .._protocol._h1 import H1Protocol
from .._protocol._h2 import PREFACE
from .._protocol._websocket import is_websocket_upgrade
from .._types import Address
from ._call import AppCall
from ._inbox import Inbox
from ._transport import NO_WRITE_TIMEOUT, READ_ERRORS, READ_SIZE
from ._waiters import Waiters
from ._websocket import WebSocketSession

if TYPE_CHECKING:
    from ._server import Server

logger = logging.getLogger("triasgi.error")

_HIGH_WATER = 64 * 1024
# How long a closing connection waits for the client's EOF after ours, so that
# unread bytes from the client do not turn our close into a reset that could
# destroy the response in flight.
_LINGER_SECONDS = 1.0
# Unread request body we are willing to read and discard to keep a keep-alive
# connection open after the app has responded without reading it all.
_MAX_DISCARD = 1024 * 1024

# What the connection task's reads return for it to act on (besides an
# error status to answer with), and what it acts on when its read deadline
# passes.
_END = object()
_WEBSOCKET = object()
_HTTP2 = object()
_TIMED_OUT = object()
_DONE = ResponseState.DONE
# The name of each app call's task: the one trio would give it, written out,
# since trio would otherwise build it from the method for every request.
_APP_TASK = "triasgi._serve._call.AppCall.run"


class HTTP11Connection(Inbox):
    """Serves HTTP/1.1 requests on one stream until either side closes it."""

    # Slots: every idle connection holds one of these.
    __slots__ = (
        "_apps_done",
        "_cancel_requested",
        "_cycle",
        "_head_deadline",
        "_idle_since",
        "_nursery",
        "_scope",
        "_session_over",
        "_sniff",
        "_websocket",
        "_woken",
        "apps_running",
        "closing",
        "h2_preface",
        "scheme",
        "server",
        "sockname",
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
        super().__init__(
            stream,
            client,
            server.config.timeout_write,
            H1Protocol(server.new_parser, server.h1_limits),
        )
        self.server = server
        self.sockname = sockname
        self.scheme = scheme
        self.tls = tls
        self.closing = False
        self.apps_running = 0
        self._apps_done = Waiters()
        self._nursery: trio.Nursery | None = None
        self._cancel_requested = False
        self._cycle: AppCall | None = None
        self._websocket: WebSocketSession | None = None
        self._session_over = False
        # Whether the first bytes may still be the HTTP/2 client preface
        # (cleartext, with HTTP/2 on), and what was read once they were:
        # the server then serves the connection as HTTP/2.
        self._sniff = server.config.http2 and tls is None
        self.h2_preface: bytes | None = None
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

    async def run(self) -> bool:
        """Serve until the connection is done, then close the stream.

        Returns:
            Whether the disconnect grace period ran out and cancelled what the
            connection ran (for the metrics).
        """
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self._cancel_requested:
                    nursery.cancel_scope.cancel()
                try:
                    await self._drive()
                finally:
                    await self._close()
                if self.apps_running:
                    # An app call outlives its response (a BackgroundTask):
                    # the client is done with, so it is not kept waiting for
                    # the connection to close; the task runs on.
                    await trio.aclose_forcefully(self.stream)
                    while self.apps_running:
                        await self._apps_done.park()
        finally:
            if self.h2_preface is None:
                await trio.aclose_forcefully(self.stream)
        # Only the grace period's deadline, or cancel(), cancels the nursery.
        return nursery.cancel_scope.cancelled_caught and not self._cancel_requested

    def cancel(self) -> None:
        """Stop serving at once: the app call in flight is cancelled."""
        self._cancel_requested = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def begin_shutdown(self) -> None:
        """Graceful shutdown: finish the request in flight, then close.

        Each response from now on says ``connection: close``.  An idle
        connection serves the request it gets until ``server.close_idle_at``,
        or that it finds waiting then, and closes (see the module docstring).
        """
        self.closing = True
        self.protocol.closing = True
        if self._websocket is not None:
            self._websocket.begin_shutdown()
        elif self._cycle is None:
            self._wake()

    def client_gone(self) -> None:
        """The client closed or reset the connection."""
        self._eof = True
        self._data_lot.unpark_all()
        cycle = self._cycle
        # Not finished: the response's last bytes may have been handed to a
        # write (its state DONE) that the client never took.
        if cycle is not None and not cycle.disconnected and not cycle.finished:
            cycle.on_disconnect()
            self.grant_disconnect_grace()
            metrics = self.server.metrics
            if metrics is not None:
                metrics.disconnected(http_protocol(cycle.request.http_version))
        if self._websocket is not None:
            self._websocket.client_gone()

    def request_broken(self, cycle: AppCall) -> None:
        """The request body broke the protocol: the app's request ends now.

        The app sees a disconnect and gets the grace period, as when the
        client goes; the client is still there to get the error answer.
        """
        if not cycle.disconnected and cycle.state is not _DONE:
            cycle.on_disconnect()
            self.grant_disconnect_grace()

    def grant_disconnect_grace(self) -> None:
        """Cancel what the connection runs ``disconnect_grace_period`` from now."""
        assert self._nursery is not None
        scope = self._nursery.cancel_scope
        scope.deadline = min(
            scope.deadline,
            trio.current_time() + self.server.config.disconnect_grace_period,
        )

    def app_call_done(self) -> None:
        """An app call has returned (its cycle may still be finishing)."""
        self.apps_running -= 1
        if not self.apps_running and self._apps_done.tasks is not None:
            self._apps_done.unpark_all()

    def _wake(self) -> None:
        """Make the connection task leave its reads and look at the connection."""
        if self._scope is not None:
            self._woken = True
            self._scope.cancel()

    async def _close(self) -> None:
        # Lingering matters only when the client may still be sending: after
        # an error, with a request (body) we did not read to the end, or on a
        # graceful shutdown, when the client may be sending its next request
        # as we close.
        if self.h2_preface is not None:
            return  # the stream goes on as HTTP/2
        protocol = self.protocol
        while protocol.body_pending:
            if type(self.next_event_nowait()) not in (Body, EndBody):
                break
        if self._eof or (not self._inbox and protocol.quiet and not self.closing):
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
            while await self.receive_directly():
                pass
            self._eof = True

    async def _send_error(self, status: int) -> None:
        """Answer with a plain-text error; the connection closes after it."""
        if self._cycle is not None and self.server.metrics is not None:
            self._cycle.count(status)  # a request the app did not answer
        data = self.protocol.error_response(status, self.server.default_header_lines())
        try:
            await self.write(data)
        except ClientDisconnected:
            pass

    # -- the connection task ------------------------------------------------

    async def _drive(self) -> None:
        """The connection task: read, start each app call, act between them."""
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
                elif self._eof:
                    return
                # Otherwise a pipelined request, or a shutdown, which
                # _await_head handles.
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
            if action is _HTTP2:
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
        receive = self.receive_some()
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
                data = await receive(READ_SIZE)
            except READ_ERRORS:
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
            if self._data_lot.tasks is not None:
                self._data_lot.unpark_all()

    def _dispatch(self) -> object:
        """Start the next app call if its request head is here.

        None when a call has started or more bytes are needed; otherwise
        what the connection task must do (see :meth:`_read_and_dispatch`).
        """
        if self._sniff:
            if self._preface_undecided():
                return self._await_head()
            if self.h2_preface is not None:
                return _HTTP2
        event = self.next_event_nowait()
        if event is NEED_DATA:
            return self._await_head()
        if type(event) is not Request:
            if type(event) is ProtocolError:
                logger.debug(
                    "Rejected request from %s: %s (%d)",
                    self.client,
                    event.reason,
                    event.status,
                )
                return event.status
            return _END  # the client closed
        if event.upgrade and is_websocket_upgrade(event):
            self._websocket = WebSocketSession(self, event)
            return _WEBSOCKET
        # The request's scope: what the edge knows is added only when there is
        # something to add (TLS, a proxy's forwarding headers).
        server = self.server
        scope = http_scope(
            event,
            scheme=self.scheme,
            client=self.client,
            server=self.sockname,
            root_path=server.config.root_path,
            state=server.state,
        )
        if self.tls is not None or (
            server.trusted_proxies is not None and event.forwarded
        ):
            scope = self.finish_scope(scope, forwarded=event.forwarded)
        cycle = AppCall(self, event, scope)
        self._cycle = cycle
        if not server.admit_request():
            return 503
        assert self._nursery is not None
        self._head_deadline = inf
        # A body already here (or its absence: a GET's end of message) is
        # taken now, so the request is complete on our side as early as
        # possible and nothing is left to discard after the response.
        first = self.next_event_nowait()
        if type(first) is Body or type(first) is EndBody:
            cycle.pending_body = first
        self._nursery.start_soon(cycle.run, name=_APP_TASK)
        return None

    def _preface_undecided(self) -> bool:
        """Whether the bytes so far may still be the start of the HTTP/2 preface.

        Once the whole preface is here, ``h2_preface`` holds what was read,
        for the HTTP/2 connection that takes the stream over.
        """
        inbox = self._inbox
        if not inbox:
            return not self._eof
        start = inbox[: len(PREFACE)]
        if PREFACE.startswith(start):
            if len(start) == len(PREFACE):
                self._sniff = False
                self.h2_preface = inbox
                self._inbox = b""
                return False
            if not self._eof:
                return True
        self._sniff = False
        return False

    def _await_head(self) -> object:
        """Deadlines and limits for a head still to come; None to read on.

        An idle connection gets ``timeout_keep_alive``; once the first byte of
        a head is here, the whole head gets ``timeout_request_header`` and the
        request line ``limit_request_line`` bytes (slowloris, or a line that
        never ends: 408 from :meth:`_drive`, or 414 here).
        """
        config = self.server.config
        scope = self._scope
        assert scope is not None
        if not self.protocol.pending_head_size():
            if self.closing:
                return self._await_head_at_shutdown(scope)
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
        if self.protocol.request_line_too_long():
            logger.debug("Request head from %s: %d", self.client, 414)
            return 414
        return None

    def _await_head_at_shutdown(self, scope: trio.CancelScope) -> object:
        """An idle connection on a graceful shutdown: wait, serve, or close.

        Until ``server.close_idle_at`` it reads on, and the request that comes
        is served with ``connection: close``.  Then it ends, unless bytes wait
        in the socket: a request sent as we decided to close, which a close
        would turn into a reset.  A head that has begun to arrive is not
        idle, and gets the request-header deadline as usual.
        """
        now = trio.current_time()
        close_at = self.server.close_idle_at
        if now < close_at:
            if scope.deadline > close_at:
                scope.deadline = close_at
            return None
        if self.bytes_waiting():
            self._head_deadline = now + self.server.config.timeout_request_header
            scope.deadline = self._head_deadline
            return None
        return _END

    def cycle_finished(self, cycle: AppCall) -> None:
        """A request's response is complete, or its app call has returned.

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
        protocol = self.protocol
        if (
            cycle.state is _DONE
            and not (cycle.must_close or cycle.disconnected)
            and not (self._eof or self.closing)
            and (idle := protocol.next_request()) is not None
        ):
            self._cycle = None
            self._idle_since = now = trio.current_time()
            if idle and not self._inbox:
                scope = self._scope
                assert scope is not None
                if scope.deadline == inf:
                    scope.deadline = now + self.server.config.timeout_keep_alive
                return
        self._wake()

    async def _after_response(self, cycle: AppCall) -> bool:
        """A request cycle that ended off the common path; False to close."""
        if self._eof:
            return False
        outcome = cycle.outcome()
        if outcome is not Outcome.KEEP_ALIVE:
            if outcome is Outcome.ANSWER_500:
                await self._send_error(500)
            elif outcome is Outcome.REJECT:
                await self._send_error(cycle.error_status)
            return False
        protocol = self.protocol
        if self.closing or not protocol.keep_alive:
            return False
        if protocol.body_pending and not await self._discard_body(cycle):
            return False
        if protocol.next_request() is None:
            return False
        self._cycle = None
        self._idle_since = trio.current_time()
        return True

    async def _serve_websocket(self) -> None:
        """Run the WebSocket session; read for it until its frame task reads."""
        assert self._nursery is not None
        assert self._websocket is not None
        self._nursery.start_soon(self._run_session, self._websocket)
        self.write_timeout = NO_WRITE_TIMEOUT  # the session's own liveness rules
        scope = self._scope = trio.CancelScope()
        with scope:
            # A client that goes away while the app decides on the handshake
            # is noticed here; bytes read go to the session (receive_bytes).
            try:
                data = await self.receive_some()(READ_SIZE)
            except READ_ERRORS:
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

    async def _discard_body(self, cycle: AppCall) -> bool:
        """Read and drop an unread request body; False if the connection must close."""
        if self.protocol.expects_100_continue and not cycle.sent_100:
            return False  # they will not send it; we never asked for it.
        discarded = 0
        with trio.move_on_after(self.server.config.timeout_keep_alive):
            while discarded <= _MAX_DISCARD:
                event = await self.read_event()
                if type(event) is EndBody:
                    return True
                if type(event) is not Body:
                    return False
                discarded += len(event.data)
        return False

    def finish_scope(
        self, scope: dict[str, Any], *, forwarded: bool = True
    ) -> dict[str, Any]:
        """Add what the edge knows to an HTTP or WebSocket scope."""
        return add_edge_facts(
            scope, self.tls, self.server.trusted_proxies, forwarded=forwarded
        )
