"""HTTP/2, sans-io: bytes in, neutral events out; responses in, frames out.

Theory of operation.  :class:`H2Protocol` holds one connection's HTTP/2
state over ``h2.connection.H2Connection`` and does no I/O and keeps no clock
(the serving layer passes the time in).  The serving layer
(``_serve/_h2.py``) feeds it what it reads with :meth:`receive_data`, acts
on the events it returns (``_events.py``, each with its stream id), changes
the state with the response calls (:meth:`respond`, :meth:`send_body`,
:meth:`send_trailers`, :meth:`informational`, :meth:`reset`), and writes
:meth:`data_to_send`, all of it, in order, under one lock: HPACK makes the
order of header blocks part of the state, so bytes are taken out only by
the writer, never framed ahead by a stream.

What this adds to h2:

- Flow control is credited as the app consumes (:meth:`consumed`), never on
  arrival, so what a slow app makes us buffer is bounded by the windows we
  advertise: ``initial_window`` per stream and ``connection_window`` for the
  connection.  :meth:`send_body` sends what the peer's windows allow now and
  says how much; the serving layer waits for :class:`WindowOpened`.
- ``max_concurrent_streams`` is advertised and enforced here: a stream over
  it gets RST_STREAM REFUSED_STREAM (RFC 9113 section 5.1.2), not the
  connection error h2 would make of it.  The serving layer counts a stream
  whose app call still runs after a reset as open (:meth:`refuse`), so a
  client cannot make more app calls run at once by resetting its streams.
- A graceful GOAWAY (:meth:`goaway`) is framed here without closing h2's
  state, so that streams in flight finish and a peer's WINDOW_UPDATE after
  it is still honoured; a peer's GOAWAY without an error lets ours finish
  too.  Streams opened after our GOAWAY are refused.
- Floods cost the attacker, not us: budgets that refill with time bound
  client resets of streams in flight (rapid reset), refused streams, and
  frames that make work without a request (PING, SETTINGS, PRIORITY, empty
  DATA, WINDOW_UPDATE, less two for each DATA frame we send, which a
  client may credit one by one); over a budget the connection ends with
  GOAWAY ENHANCE_YOUR_CALM.  h2 bounds CONTINUATION frames per header block (64)
  and the decoded header list (``max_header_list_size``: an HPACK bomb is a
  connection error).
- Requests: the pseudo-headers become the request line (``:path`` the
  target, ``:method`` the method, ``:authority`` the ``host`` header when
  there is none), ``cookie`` fields are joined (RFC 9113 section 8.2.3), and
  the request is one :class:`~triasgi._events.Request` as on HTTP/1.1.
  A malformed request head (RFC 9113 section 8.1.1) is a stream error,
  RST_STREAM PROTOCOL_ERROR: the other streams go on.  The checks are
  triasgi's own (``_h2head.py``), in one pass, with h2's turned off;
  malformed request trailers end the connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, final

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame

from .._events import Body, EndBody, ProtocolError, Request
from ._h1writer import valid_field
from ._h2head import MalformedRequest, check_field, request_of
from ._hpack import RepeatingDecoder, RepeatingEncoder

#: The first bytes of every HTTP/2 connection from a client (RFC 9113 3.4).
PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

_H2_CLOSED: Final = h2.connection.ConnectionState.CLOSED
# h2 forgets its closed streams when a stream opens and more than this many
# are kept, open or closed.
_SWEEP_STREAMS: Final = 32


NO_ERROR: Final = h2.errors.ErrorCodes.NO_ERROR
PROTOCOL_ERROR: Final = h2.errors.ErrorCodes.PROTOCOL_ERROR
INTERNAL_ERROR: Final = h2.errors.ErrorCodes.INTERNAL_ERROR
REFUSED_STREAM: Final = h2.errors.ErrorCodes.REFUSED_STREAM
CANCEL: Final = h2.errors.ErrorCodes.CANCEL
ENHANCE_YOUR_CALM: Final = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM

# Fields that are about one HTTP/1.1 connection and have no place in HTTP/2
# (RFC 9113 section 8.2.2), and TE, which only a request may carry: dropped
# from the app's response headers.
_CONNECTION_FIELDS = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Statuses whose response has no body (RFC 9110 sections 15.3.5, 15.4.5).
_NO_BODY = frozenset({204, 304})


@final
class H2Limits:
    """What an HTTP/2 connection advertises and enforces.

    Args:
        max_concurrent_streams: SETTINGS_MAX_CONCURRENT_STREAMS.
        max_header_list_size: SETTINGS_MAX_HEADER_LIST_SIZE, and the largest
            decoded header list accepted (an HPACK bomb is refused).
        initial_window: SETTINGS_INITIAL_WINDOW_SIZE: request body buffered
            per stream before the app reads it.
        connection_window: the same for the whole connection.
        max_frame_size: SETTINGS_MAX_FRAME_SIZE.
        enable_connect_protocol: SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441).
        fields, field_size, target: HTTP/1.1's limits on a request head
            (``limit_request_fields``, ``limit_request_field_size``,
            ``limit_request_line``), for the same answer on its stream: 431,
            or 414 for a ``:path`` over ``target`` bytes.
    """

    __slots__ = (
        "connection_window",
        "enable_connect_protocol",
        "field_size",
        "fields",
        "initial_window",
        "max_concurrent_streams",
        "max_frame_size",
        "max_header_list_size",
        "target",
    )

    def __init__(
        self,
        *,
        max_concurrent_streams: int = 100,
        max_header_list_size: int = 65536,
        initial_window: int = 65535,
        connection_window: int = 1024 * 1024,
        max_frame_size: int = 16384,
        enable_connect_protocol: bool = False,
        fields: int = 100,
        field_size: int = 8190,
        target: int = 8190,
    ) -> None:
        self.fields = fields
        self.field_size = field_size
        self.target = target
        self.max_concurrent_streams = max_concurrent_streams
        self.max_header_list_size = max_header_list_size
        self.initial_window = initial_window
        self.connection_window = connection_window
        self.max_frame_size = max_frame_size
        self.enable_connect_protocol = enable_connect_protocol


# -- events beyond HTTP/1.1's ---------------------------------------------------


@final
class StreamReset:
    """The client reset a stream (RST_STREAM): its request is gone."""

    __slots__ = ("code", "stream_id")

    def __init__(self, stream_id: int, code: int) -> None:
        self.stream_id = stream_id
        self.code = code


@final
class WindowOpened:
    """The client opened a flow-control window; stream 0 is the connection's."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


@final
class ConnectionEnded:
    """No more frames will be read: the connection ends once the writes are out.

    ``error`` is False when the client said goodbye (GOAWAY NO_ERROR): the
    streams in flight may finish.  Otherwise a GOAWAY with our error code is
    queued, and the streams are gone.
    """

    __slots__ = ("error", "reason")

    def __init__(self, error: bool, reason: str) -> None:
        self.error = error
        self.reason = reason


H2Event = (
    Request
    | Body
    | EndBody
    | ProtocolError
    | StreamReset
    | WindowOpened
    | ConnectionEnded
)


class StreamGone(Exception):
    """The stream can carry no more of the response: reset, or the connection closed."""


class _Budget:
    """A count that refills with time: how much of something a peer may do.

    ``burst`` at once, then ``rate`` per second.
    """

    __slots__ = ("_at", "_left", "burst", "rate")

    def __init__(self, burst: float, rate: float) -> None:
        self.burst = burst
        self.rate = rate
        self._left = burst
        self._at = 0.0

    def spend(self, now: float, amount: float = 1.0) -> bool:
        """Take ``amount``; False once the peer has overspent."""
        if now > self._at:
            self._left = min(self.burst, self._left + (now - self._at) * self.rate)
            self._at = now
        self._left -= amount
        return self._left >= 0

    def refund(self, amount: float) -> None:
        """Give back ``amount``, up to the burst."""
        self._left = min(self.burst, self._left + amount)


class _H2Connection(h2.connection.H2Connection):
    """h2's connection, minus two decisions that :class:`H2Protocol` makes."""

    @property
    def open_inbound_streams(self) -> int:
        # h2 makes a stream over SETTINGS_MAX_CONCURRENT_STREAMS a connection
        # error; H2Protocol refuses that stream alone (REFUSED_STREAM).  The
        # property's side effect, forgetting closed streams, is kept, but
        # only once they are a few: it walks every stream, for every stream
        # opened.
        if len(self.streams) > _SWEEP_STREAMS:
            h2.connection.H2Connection.open_inbound_streams.fget(self)  # type: ignore[attr-defined]
        return 0

    #: Frames read that made no event (DATA, HEADERS on a stream already
    #: reset, which h2 answers with a RST_STREAM each): H2Protocol spends
    #: its budget on them.
    silent_frames = 0

    def _receive_frame(self, frame: Any) -> list[Any]:
        events: list[Any] = super()._receive_frame(frame)
        if not events:
            self.silent_frames += 1
        return events

    def _receive_goaway_frame(self, frame: Any) -> tuple[list[Any], list[Any]]:
        # h2 closes its whole state on any GOAWAY, after which the streams in
        # flight could not be answered; a client's GOAWAY NO_ERROR only says
        # it will open no more (RFC 9113 section 6.8).
        if frame.error_code != NO_ERROR:
            return super()._receive_goaway_frame(frame)
        event = h2.events.ConnectionTerminated()
        event.error_code = NO_ERROR
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


@final
class H2Protocol:
    """One HTTP/2 connection's protocol state, server side.

    Args:
        limits: what to advertise and enforce.
    """

    __slots__ = (
        "_calm",
        "_conn",
        "_extra",
        "_goaway_sent",
        "_lengths",
        "_open",
        "_refusals",
        "_request_body_bytes",
        "_resets",
        "_window",
        "closed",
        "limits",
        "response_body_bytes",
    )

    def __init__(self, limits: H2Limits) -> None:
        self.limits = limits
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            # Request heads are checked, and their cookies joined, in one
            # pass by request_of; h2's pipeline of generators costs a
            # sixth of a request.
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
            # The response fields are checked and lower-cased here
            # (respond, informational, send_trailers), as HTTP/1.1's are:
            # h2's own pipeline would be a second pass over them.
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        conn = self._conn = _H2Connection(config)
        conn.encoder = RepeatingEncoder()
        conn.decoder = RepeatingDecoder()
        codes = h2.settings.SettingCodes
        settings: dict[h2.settings.SettingCodes, int] = {
            codes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            codes.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
            codes.INITIAL_WINDOW_SIZE: limits.initial_window,
            codes.MAX_FRAME_SIZE: limits.max_frame_size,
            codes.ENABLE_PUSH: 0,
        }
        if limits.enable_connect_protocol:
            settings[codes.ENABLE_CONNECT_PROTOCOL] = 1
        conn.local_settings = h2.settings.Settings(
            client=False, initial_values=settings
        )
        # h2 applies the header list limit once the client acknowledges the
        # setting; a bomb in the first request is bounded from the start.
        conn.decoder.max_header_list_size = limits.max_header_list_size
        # Frames we frame ourselves (the graceful GOAWAY), after h2's.
        self._extra = b""
        self._goaway_sent: int | None = None
        # Streams whose request has arrived and whose app call runs, as the
        # serving layer reports them (refuse/stream_done).
        self._open: set[int] = set()
        # [content-length, body bytes so far] of the requests with a body
        # and a content-length.
        self._lengths: dict[int, list[int]] = {}
        self._resets = _Budget(
            burst=max(200, 2 * limits.max_concurrent_streams), rate=100
        )
        self._refusals = _Budget(burst=max(100, limits.max_concurrent_streams), rate=50)
        self._calm = _Budget(burst=1000, rate=200)
        # Bytes still to credit back to the connection window beyond h2's own
        # 65535, sent once at the start.
        self._window = limits.connection_window - 65535
        #: No more frames will be read (the connection has ended).
        self.closed = False
        #: Response body bytes sent, per stream, for the access log.
        self.response_body_bytes: dict[int, int] = {}
        # Request body bytes received since the metrics last took them.
        self._request_body_bytes = 0

    # -- the connection ------------------------------------------------------

    def start(self) -> None:
        """Queue the server's preface: its SETTINGS (and a larger window)."""
        self._conn.initiate_connection()
        if self._window > 0:
            self._conn.increment_flow_control_window(self._window)

    def data_to_send(self) -> bytes:
        """Everything framed so far, in order; for the one writer."""
        data = self._conn.data_to_send()
        if self._extra:
            data += self._extra
            self._extra = b""
        return data

    @property
    def has_output(self) -> bool:
        """Whether :meth:`data_to_send` has anything."""
        return bool(self._conn._data_to_send) or bool(self._extra)

    @property
    def output_size(self) -> int:
        """How many bytes :meth:`data_to_send` has."""
        return len(self._conn._data_to_send) + len(self._extra)

    def receive_data(self, data: bytes, now: float) -> list[H2Event]:
        """Feed bytes from the client; the events they make, in order.

        ``now`` is the time, in seconds, on any monotonic clock: the flood
        budgets refill with it.  An empty ``data`` is the client's EOF.
        """
        if self.closed:
            return []
        if not data:
            self.closed = True
            return [ConnectionEnded(False, "the client closed the connection")]
        try:
            h2_events = self._conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued the GOAWAY with the error's code.
            self.closed = True
            return [ConnectionEnded(True, str(exc) or type(exc).__name__)]
        events: list[H2Event] = []
        silent = self._conn.silent_frames
        if silent:
            self._conn.silent_frames = 0
            if not self._calm.spend(now, silent):
                self._calm_down("too many frames on streams already closed", events)
                return events
        for event in h2_events:
            if isinstance(event, h2.events.DataReceived):
                self._data(event, events, now)
            elif isinstance(event, h2.events.RequestReceived):
                self._request(event, events, now)
            elif isinstance(event, h2.events.StreamEnded):
                if event.stream_id in self._open:
                    events.append(EndBody(event.stream_id))
            elif isinstance(event, h2.events.WindowUpdated):
                events.append(WindowOpened(event.stream_id or 0))
                if not self._spend_calm(now, events):
                    break
            elif isinstance(event, h2.events.StreamReset):
                if event.stream_id in self._open:
                    events.append(StreamReset(event.stream_id, event.error_code or 0))
                    if not self._resets.spend(now):
                        self._calm_down("too many streams reset", events)
                        break
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                # A new initial window can open every stream's window.
                events.append(WindowOpened(0))
                if not self._spend_calm(now, events):
                    break
            elif isinstance(event, h2.events.TrailersReceived):
                if not self._trailers(event, events):
                    break
                if not self._spend_calm(now, events):
                    break
            elif isinstance(event, h2.events.ConnectionTerminated):
                code = event.error_code or NO_ERROR
                self.closed = code != NO_ERROR
                events.append(
                    ConnectionEnded(
                        code != NO_ERROR,
                        f"the client sent GOAWAY ({_code_name(code)})",
                    )
                )
                if self.closed:
                    break
                # A goodbye without an error: what came after it (the body,
                # WINDOW_UPDATE or RST_STREAM of the streams in flight) counts.
            elif not self._spend_calm(now, events):
                # PING, PRIORITY, a SETTINGS ack, request trailers, an
                # unknown frame: work without a request.
                break
        return events

    def _spend_calm(self, now: float, events: list[H2Event]) -> bool:
        if self._calm.spend(now):
            return True
        self._calm_down("too many frames that carry no request", events)
        return False

    def _calm_down(self, reason: str, events: list[H2Event]) -> None:
        self._end(ENHANCE_YOUR_CALM, reason, events)

    def _end(self, code: int, reason: str, events: list[H2Event]) -> None:
        """End the connection with GOAWAY ``code`` while reading; say why."""
        self.close(code)
        events.append(ConnectionEnded(True, reason))

    def _request(
        self, event: h2.events.RequestReceived, events: list[H2Event], now: float
    ) -> None:
        stream_id = event.stream_id
        if self._goaway_sent is not None and stream_id > self._goaway_sent:
            self.reset(stream_id, REFUSED_STREAM)
            return
        if len(self._open) >= self.limits.max_concurrent_streams:
            self.reset(stream_id, REFUSED_STREAM)
            if not self._refusals.spend(now):
                self._calm_down("too many streams over the limit", events)
            return
        try:
            request = request_of(
                stream_id, event.headers or [], event.priority_updated, self.limits
            )
        except MalformedRequest:
            # A stream error (RFC 9113 section 8.1.1): the other streams go
            # on.  Each costs a decode, so they spend the refusals' budget.
            self.reset(stream_id, PROTOCOL_ERROR)
            if not self._refusals.spend(now):
                self._calm_down("too many malformed requests", events)
            return
        if type(request) is ProtocolError:
            # A request h2 let through that HTTP cannot take: answered on
            # its stream, which then counts as open until that is done.
            self._open.add(stream_id)
            events.append(request)
            return
        self._open.add(stream_id)
        events.append(request)  # h2's StreamEnded follows when it has no body
        if event.stream_ended is None:
            # h2 holds the body to its content-length only when DATA ends
            # the stream: when trailers end it, _trailers does.
            for name, value in request.headers:
                if name == b"content-length" and value.isdigit():
                    self._lengths[stream_id] = [int(value), 0]
                    break

    def _trailers(
        self, event: h2.events.TrailersReceived, events: list[H2Event]
    ) -> bool:
        # Request trailers are not passed on (ASGI has no message for them).
        # A malformed block ends the connection (PROTOCOL_ERROR): the
        # stream's body has ended by then, and the app may be reading it.
        try:
            for name, value in event.headers or []:
                if name[:1] == b":":
                    raise MalformedRequest(f"pseudo-header {name!r} in trailers")
                check_field(name, value)
            counts = self._lengths.pop(event.stream_id, None)
            if counts is not None and counts[0] != counts[1]:
                # RFC 9113 section 8.1.1: a body short of (or over) its
                # content-length makes the request malformed.
                raise MalformedRequest(
                    f"a body of {counts[1]} bytes, content-length {counts[0]}"
                )
        except MalformedRequest as exc:
            self._end(PROTOCOL_ERROR, str(exc), events)
            return False
        return True

    def _data(
        self, event: h2.events.DataReceived, events: list[H2Event], now: float
    ) -> None:
        stream_id = event.stream_id
        length = event.flow_controlled_length or 0
        data = event.data or b""
        if stream_id not in self._open:
            self._credit(stream_id, length)
            return
        padding = length - len(data)
        if padding:
            self._credit(stream_id, padding)
        if data:
            self._request_body_bytes += len(data)
            counts = self._lengths.get(stream_id)
            if counts is not None:
                counts[1] += len(data)
            events.append(Body(stream_id, data))
        elif not event.stream_ended and not self._calm.spend(now):
            self._calm_down("too many empty DATA frames", events)

    def _credit(self, stream_id: int, length: int) -> None:
        # h2 sends a WINDOW_UPDATE once enough is credited; for a stream that
        # has closed, the connection's window alone.
        if length > 0 and not self._h2_closed:
            self._conn.acknowledge_received_data(length, stream_id)

    def take_request_body_bytes(self) -> int:
        """Request body bytes received since the last call (for the metrics)."""
        count, self._request_body_bytes = self._request_body_bytes, 0
        return count

    def consumed(self, stream_id: int, length: int) -> None:
        """The app has taken ``length`` bytes of a stream's body: credit them."""
        self._credit(stream_id, length)

    @property
    def _h2_closed(self) -> bool:
        return self._conn.state_machine.state is _H2_CLOSED

    def goaway(self) -> None:
        """A graceful GOAWAY (NO_ERROR): no new streams; those open go on."""
        if self._goaway_sent is not None or self.closed:
            return
        last = self._conn.highest_inbound_stream_id
        self._goaway_sent = last
        frame = GoAwayFrame(0)
        frame.last_stream_id = last
        frame.error_code = NO_ERROR
        self._extra += frame.serialize()

    def close(self, code: int = NO_ERROR) -> None:
        """End the connection with GOAWAY ``code``; nothing more is sent after it."""
        if not self._h2_closed:
            # After our graceful GOAWAY, its last stream id again: the id a
            # GOAWAY names must never grow (RFC 9113 section 6.8), and h2
            # would name the highest stream opened, refused ones too.
            self._conn.close_connection(
                error_code=code, last_stream_id=self._goaway_sent
            )
        self.closed = True

    @property
    def goaway_sent(self) -> bool:
        return self._goaway_sent is not None

    # -- streams --------------------------------------------------------------

    @property
    def open_streams(self) -> int:
        """Streams whose request has arrived and whose app call has not ended."""
        return len(self._open)

    def stream_done(self, stream_id: int) -> None:
        """The serving layer is done with a stream (its app call has ended)."""
        self._open.discard(stream_id)
        self.response_body_bytes.pop(stream_id, None)
        self._lengths.pop(stream_id, None)

    def _check_open(self, stream_id: int) -> None:
        """Raise StreamGone unless the stream can still carry response frames."""
        if self._h2_closed:
            raise StreamGone("the connection has closed")
        stream = self._conn.streams.get(stream_id)
        if stream is None or stream.closed:
            raise StreamGone("the stream was reset")

    def respond(
        self,
        stream_id: int,
        status: int,
        headers: Sequence[tuple[bytes, bytes]],
        defaults: Sequence[tuple[bytes, bytes]],
        end_stream: bool,
    ) -> None:
        """Queue the response head; ``defaults`` are added where the app has none.

        Raises:
            StreamGone: the stream was reset or the connection closed.
            ValueError: a header h2 refuses.
        """
        self._check_open(stream_id)
        fields = [(b":status", b"%d" % status)]
        present = set()
        for name, value in headers:
            lower = name.lower()
            if lower in _CONNECTION_FIELDS or (
                # RFC 9110 section 8.6: never on a 204.
                status == 204 and lower == b"content-length"
            ):
                continue
            _check_field(name, value)
            present.add(lower)
            fields.append((lower, value))
        for name, value in defaults:
            if name not in present:
                fields.append((name, value))
        self._send_headers(stream_id, fields, end_stream)
        self.response_body_bytes[stream_id] = 0

    def informational(
        self, stream_id: int, status: int, headers: Sequence[tuple[bytes, bytes]]
    ) -> None:
        """Queue an interim response (1xx) on a stream (raises as :meth:`respond`)."""
        self._check_open(stream_id)
        fields = [(b":status", b"%d" % status)]
        for name, value in headers:
            lower = name.lower()
            if lower not in _CONNECTION_FIELDS:
                _check_field(name, value)
                fields.append((lower, value))
        self._send_headers(stream_id, fields, False)

    def send_trailers(
        self, stream_id: int, headers: Sequence[tuple[bytes, bytes]]
    ) -> None:
        """Queue the trailer fields, which end the stream (raises as ``respond``)."""
        self._check_open(stream_id)
        fields = []
        for name, value in headers:
            _check_field(name, value)
            fields.append((name.lower(), value))
        self._send_headers(stream_id, fields, True)

    def _send_headers(
        self, stream_id: int, fields: list[tuple[bytes, bytes]], end_stream: bool
    ) -> None:
        try:
            self._conn.send_headers(stream_id, fields, end_stream=end_stream)
        except h2.exceptions.ProtocolError as exc:
            raise ValueError(str(exc)) from None

    def send_window(self, stream_id: int) -> int:
        """How many body bytes the client's windows let a stream send now."""
        self._check_open(stream_id)
        return self._conn.local_flow_control_window(stream_id)

    def send_body(self, stream_id: int, data: memoryview, end_stream: bool) -> int:
        """Queue as much of ``data`` as the windows allow; how many bytes went.

        The stream is ended only when all of ``data`` went.

        Raises:
            StreamGone: the stream was reset or the connection closed.
        """
        self._check_open(stream_id)
        conn = self._conn
        size = len(data)
        window = conn.local_flow_control_window(stream_id)
        frame = conn.max_outbound_frame_size
        sent = frames = 0
        while sent < size and window > 0:
            n = min(size - sent, window, frame)
            conn.send_data(
                stream_id,
                data[sent : sent + n],
                end_stream=end_stream and sent + n == size,
            )
            sent += n
            window -= n
            frames += 1
        if frames:
            # Each DATA frame may bring the stream's and the connection's
            # WINDOW_UPDATE back (browsers credit every frame): frames that
            # answer ours are no flood.
            self._calm.refund(2 * frames)
        if end_stream and not size:
            conn.end_stream(stream_id)
        self.response_body_bytes[stream_id] = (
            self.response_body_bytes.get(stream_id, 0) + sent
        )
        return sent

    def reset(self, stream_id: int, code: int = INTERNAL_ERROR) -> None:
        """Reset a stream that cannot be finished (RST_STREAM), if it is open."""
        if self._h2_closed:
            return
        stream = self._conn.streams.get(stream_id)
        if stream is not None and not stream.closed:
            self._conn.reset_stream(stream_id, code)


def _check_field(name: bytes, value: bytes) -> None:
    """Raise ValueError for a field of the app's that must not be sent.

    Checked before h2 sees it: h2 lets a bad value through, and the client
    then ends the whole connection; and a field h2 refuses is found after the
    fields before it went into HPACK's table and the stream's state moved
    on, which no 500 can repair.
    """
    if not valid_field(name, value):
        raise ValueError(f"invalid field {name!r}: {value!r}")


def _code_name(code: int) -> str:
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return str(code)
