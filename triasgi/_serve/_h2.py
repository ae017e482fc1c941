"""One HTTP/2 connection: its nursery, its streams, and the one writer.

The protocol (``_protocol/_h2.py``, sans-io) turns bytes into events and
response steps into frames; each stream's app call (``H2Call`` in
``_h2call.py``, an ``AppCall`` over the same ``HTTPCycle`` as HTTP/1.1), or
WebSocket (``_h2websocket.py``), runs in the connection
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
writes the frames of every stream queued so far, so writes coalesce, and a
stream whose frames the writer under way will take does not wait for it.

Flow control.  A stream's ``send()`` sends what the client's windows allow,
and waits for WINDOW_UPDATE for the rest (bounded by the write timeout,
after which that stream alone is reset); request body is credited back only
as the app takes it with ``receive()``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from .._asgi._scope import add_edge_facts, http_scope
from .._errors import ClientDisconnected
from .._events import (
    Body,
    EndBody,
    ProtocolError,
    Request,
)
from .._protocol._h1writer import REASON_PHRASES
from .._protocol._h2 import (
    NO_ERROR,
    ConnectionEnded,
    H2Protocol,
    StreamGone,
    StreamReset,
    WindowOpened,
)
from .._protocol._websocket import is_extended_connect
from .._types import Address
from ._call import AppCall
from ._h2call import H2Call
from ._h2stream import Stream
from ._h2websocket import H2WebSocketSession
from ._transport import READ_ERRORS, READ_SIZE, Transport

if TYPE_CHECKING:
    from ._server import Server

logger = logging.getLogger("triasgi.error")

# How long a closing connection waits for the client's EOF after ours.
_LINGER_SECONDS = 1.0
# Framed bytes that may wait for the writer under way before a stream's
# send() waits for the write itself: bounds what a client that reads slowly
# makes us hold beyond the flow-control windows.
_QUEUED_BYTES = 65536


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

    async def flush(self) -> bool:
        """Write everything the protocol has framed, in order, under the lock.

        Shielded and bounded by the write timeout: a cancelled caller does
        not leave half a frame on the wire.  A cancellation point always.
        When another task's write is under way, that writer takes these
        frames too once its write is done, so the caller goes on without
        waiting for it, unless more than ``_QUEUED_BYTES`` wait to be
        written.  Otherwise the caller writes, and is a schedule point only
        when the write waits (as ``Transport.write``) or other streams are
        open: then it lets them run first, so that the frames of all the
        streams that answer at once go out in one write.

        Returns:
            Whether it waited, and so let the other tasks run.

        Raises:
            ClientDisconnected: the client has gone or stopped reading.
        """
        if self._gone:
            await trio.lowlevel.checkpoint()
            raise ClientDisconnected("The client has disconnected.")
        lock = self._write_lock
        if not lock.locked():
            await trio.lowlevel.checkpoint_if_cancelled()
            lock.acquire_nowait()
            try:
                if len(self.streams) > 1:
                    # Other streams' apps may be about to send too: they
                    # run first and queue their frames (without waiting, see
                    # above), and one write takes them all.
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    await self._write_out()
                    return True
                return await self._write_out()
            finally:
                lock.release()
        if self.protocol.output_size < _QUEUED_BYTES:
            await trio.lowlevel.checkpoint_if_cancelled()
            return False
        async with lock:
            await self._write_out()
        return True

    async def _write_out(self) -> bool:
        """Write what the protocol has framed until it has no more (lock held)."""
        if self._gone:
            # The write before this one found the client gone (or not
            # reading): another would only wait for the write timeout.
            raise ClientDisconnected("The client has disconnected.")
        waited = False
        data = self.protocol.data_to_send()
        while data:
            with trio.CancelScope(shield=not self._cancel_requested) as scope:
                self._write_scope = scope
                try:
                    if await self.write(data):
                        waited = True
                finally:
                    self._write_scope = None
            # Frames queued while this wrote, by the tasks that did not
            # wait for it.
            data = self.protocol.data_to_send()
        return waited

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
        return self.finish_scope(scope, forwarded=request.forwarded)

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
                # Under the lock, waiting for a stream's write under way: the
                # GOAWAY goes after its frames, and the EOF after the GOAWAY
                # (a stream's flush may have left both to that writer).
                async with self._write_lock:
                    await self._write_out()
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
