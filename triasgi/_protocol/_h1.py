"""HTTP/1.1, sans-io: bytes in, neutral events out; a response in, bytes out.

Theory of operation.  :class:`H1Protocol` holds one connection's protocol
state and does no I/O, keeps no clock and starts no task: the serving layer
(``_serve/_connection.py``) feeds it what it reads with :meth:`receive_data`,
takes events with :meth:`next_event` (``_events.py``), and writes the bytes
that :meth:`response_data`, :meth:`error_response` and :data:`CONTINUE_100`
give it.

- Parsing is one request per parser object (h11, or the httptools backend
  of ``_h1parse.py``).  Responses are not written through h11
  (``_h1writer.py`` is faster), so h11's side of a connection never reaches
  DONE: :meth:`next_request` gives each request a fresh parser, and
  bytes already received (a pipelined request) move over.  Between requests
  the connection holds the shared idle parser, which costs no memory.
- The head checks h11 leaves to us (:func:`scan_head`) run in the one pass
  that collects what the connection needs from a head; a plain head within
  the limits gets them in the parser's own pass (``_h1parse.py``).
- The keep-alive decision after a response: the request must let the
  connection live (``Connection: close``, HTTP/1.0), the response too
  (its framing, the app's own ``Connection: close``), and the request must
  have been read to its end (:attr:`request_complete`) before the next one
  is parsed, or the rest of its body would be read as a request
  (smuggling).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, final

import h11

from .._events import (
    CONNECTION_LOST,
    H1_END_BODY,
    H1_STREAM,
    NEED_DATA,
    Body,
    Event,
    ProtocolError,
    Request,
)
from ._h1parse import FORWARDING, IDLE_PARSER, H1Limits, ParsedRequest
from ._h1writer import (
    REASON_PHRASES,
    ResponseWriter,
    has_close_token,
    has_token,
    informational_head,
)

#: The interim answer to ``Expect: 100-continue`` (RFC 9110 section 10.1.1).
CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"

_H11_NEED_DATA = h11.NEED_DATA
# The largest chunk a 64-bit size can say (16 hex digits).
_MAX_CHUNK = 2**64 - 1
_QUIET_STATES = frozenset({h11.IDLE, h11.DONE, h11.MUST_CLOSE, h11.CLOSED})

_NOTABLE = FORWARDING | {
    b"transfer-encoding",
    b"content-length",
    b"connection",
    b"upgrade",
    b"te",
}


@final
class H1Protocol:
    """One HTTP/1.1 connection, sans-io.

    Args:
        new_parser: gives a fresh request parser (``_h1parse.parser_factory``).
        limits: the limits on a request head.
    """

    # Slots: every idle connection holds one of these.
    __slots__ = (
        "_head_only",
        "_interim",
        "_limits",
        "_new_parser",
        "_parser",
        "_request_body_bytes",
        "_te_trailers",
        "_writer",
        "closing",
        "response_body_bytes",
    )

    def __init__(self, new_parser: Callable[[], Any], limits: H1Limits) -> None:
        self._new_parser = new_parser
        self._limits = limits
        self._parser: Any = IDLE_PARSER
        self._writer: ResponseWriter | None = None
        self._head_only = False
        # What the request allows: interim responses (not to HTTP/1.0
        # clients, RFC 9110 section 15.2) and a trailer section.
        self._interim = False
        self._te_trailers = False
        #: Set for a graceful shutdown: the next response head says close.
        self.closing = False
        #: Body bytes of the current response framed so far (the access log).
        self.response_body_bytes = 0
        # Request body bytes parsed since the metrics last took them.
        self._request_body_bytes = 0

    # -- bytes in, events out ------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Take bytes from the client; ``b""`` says the client closed its side."""
        parser = self._parser
        if parser is IDLE_PARSER:
            parser = self._parser = self._new_parser()
        parser.receive_data(data)

    def next_event(self) -> Event:
        """The next event from what has been received (maybe ``NEED_DATA``)."""
        parser = self._parser
        if parser is IDLE_PARSER:
            return NEED_DATA
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            if status == 431 and self.request_line_too_long():
                # h11's buffer limit caught a head whose request line alone
                # is over the limit: that is the request line's status.
                status = 414
            return ProtocolError(H1_STREAM, status, str(exc))
        if event is _H11_NEED_DATA:
            return NEED_DATA
        kind = type(event)
        if kind is h11.Data:
            if event.chunk_start and _chunk_size(self._parser, event) > _MAX_CHUNK:
                # RFC 9112 section 7.1 sets no bound, but a proxy in front
                # that keeps sizes in 64 bits reads a size past them as a
                # small one, and the bytes after it as the next request.
                reason = "a chunk size over 16 hex digits"
                self._parser = _FailedParser(reason)
                return ProtocolError(H1_STREAM, 400, reason)
            self._request_body_bytes += len(event.data)
            return Body(H1_STREAM, event.data)
        if kind is h11.EndOfMessage:
            return H1_END_BODY
        if kind is Request or kind is ParsedRequest or kind is h11.Request:
            # A plain head within the limits comes checked (_h1parse.py).
            request = event if kind is Request else scan_head(event, self._limits)
            if type(request) is Request:
                self._head_only = head_only = request.method == b"HEAD"
                self._writer = ResponseWriter(
                    http_version=request.http_version,
                    head_only=head_only,
                    keep_alive=request.keep_alive,
                )
                self._interim = request.http_version == b"1.1"
                self._te_trailers = request.te_trailers
                self.response_body_bytes = 0
            return request
        # ConnectionClosed: the client closed.  PAUSED (a next request is
        # here, but this request's parser is done) is never asked for: the
        # serving layer starts the next request first.
        return CONNECTION_LOST

    def take_request_body_bytes(self) -> int:
        """Request body bytes parsed since the last call (for the metrics)."""
        count = self._request_body_bytes
        self._request_body_bytes = 0
        return count

    @property
    def expects_100_continue(self) -> bool:
        """The client waits for ``100 Continue`` before it sends the body."""
        return bool(self._parser.they_are_waiting_for_100_continue)

    @property
    def request_complete(self) -> bool:
        """The request in progress has been read to its end."""
        return bool(self._parser.their_state is h11.DONE)

    @property
    def body_pending(self) -> bool:
        """Part of the request body has not been read yet."""
        return bool(self._parser.their_state is h11.SEND_BODY)

    @property
    def quiet(self) -> bool:
        """Nothing unread is on its way from the client, as far as parsing knows.

        A closing connection that is not quiet lingers: our close would
        otherwise meet unread bytes, and the kernel would answer with a reset
        that can destroy the response in flight.
        """
        return bool(self._parser.their_state in _QUIET_STATES)

    def pending_head_size(self) -> int:
        """Bytes of a head that has begun to arrive (0 when none has)."""
        return len(self._parser.trailing_data[0])

    def request_line_too_long(self) -> bool:
        """Whether the head now arriving already has a request line over the limit.

        RFC 9112 section 2.2 lets a server skip empty lines before the request
        line, so those do not count.
        """
        pending = self._parser.trailing_data[0]
        limit = self._limits.request_line
        start = len(pending) - len(pending.lstrip(b"\r\n"))
        end = pending.find(b"\n", start, start + limit + 2)
        return end < 0 and len(pending) - start > limit + 1

    def unparsed_data(self) -> bytes:
        """What has been received after the request: for a protocol taking over."""
        return bytes(self._parser.trailing_data[0])

    def next_request(self) -> bool | None:
        """Ready the connection for the next request, if this one allows it.

        Call once the response is written.  Returns None when the connection
        must not carry another request: the request or the response said so,
        or the request was not read to its end (the rest of its body would be
        parsed as a request).  Otherwise a fresh parser takes over what has
        arrived (a pipelined request), and this returns True when nothing of
        the next request is here yet (the connection holds the idle parser),
        False when it has begun to arrive.
        """
        writer = self._writer
        parser = self._parser
        if (
            writer is None
            or not writer.keep_alive
            or parser.their_state is not h11.DONE
        ):
            return None
        self._head_only = False
        self._writer = None
        data, closed = parser.trailing_data
        if not data and not closed:
            self._parser = IDLE_PARSER
            return True
        parser = self._parser = self._new_parser()
        if data:
            parser.receive_data(data)
        if closed:
            parser.receive_data(b"")
        return False

    # -- a response in, bytes out --------------------------------------------

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may serve another request after this response."""
        writer = self._writer
        return writer is not None and writer.keep_alive

    def response_data(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        final: bool,
        defaults: Sequence[tuple[bytes, bytes]],
        trailers: bool = False,
    ) -> list[bytes]:
        """The bytes of one step of the response: its head, a body part, its end.

        Args:
            status: the status, when the head goes now (with the first body
                message); 0 once it has gone.
            headers: the app's response headers (with ``status``).
            body: a part of the body, maybe empty.
            final: the last part: a response given in one piece with no
                framing header gets a ``content-length``.
            defaults: the server's own headers, ``(lowercased name, line)``.
            trailers: the response announced trailers; its end waits for
                them (:meth:`trailers_data`).

        Raises:
            ResponseError: the response cannot be sent as given.
        """
        writer = self._writer
        assert writer is not None
        if status:
            if self.closing:
                writer.keep_alive = False
            if final and not trailers:
                # The usual response, given whole: one buffer.
                data = writer.head(
                    status,
                    None,
                    headers,
                    defaults=defaults,
                    final_body=body,
                    whole=True,
                )
                if body and not writer.no_body:
                    self.response_body_bytes += len(body)
                return [data]
            chunks = [
                writer.head(
                    status,
                    None,
                    headers,
                    defaults=defaults,
                    final_body=body if final else None,
                    trailers=trailers and self._te_trailers,
                )
            ]
        else:
            chunks = []
        if body:
            framed = writer.body(body)
            if framed:
                chunks.append(framed)
                self.response_body_bytes += len(body)
        if final and not trailers:
            end = writer.end()
            if end:
                chunks.append(end)
        return chunks

    def informational(self, status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
        """An interim response (``103 Early Hints``, another 1xx); b"" for HTTP/1.0.

        Raises:
            ResponseError: a header is not allowed.
        """
        if not self._interim:
            return b""
        return informational_head(status, headers)

    def file_response(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        size: int,
        defaults: Sequence[tuple[bytes, bytes]],
        trailers: bool = False,
    ) -> tuple[bytes, bytes, bool]:
        """The head of a response whose body is ``size`` bytes from a file.

        Returns what goes before the file's bytes, what goes after them (the
        end, unless trailers follow), and whether the file's bytes go at all:
        not when the response has no body (HEAD, 204, 304).

        Raises:
            ResponseError: the response cannot be sent as given (a declared
                content-length other than the file's size).
        """
        writer = self._writer
        assert writer is not None
        if self.closing:
            writer.keep_alive = False
        head = writer.head(
            status,
            None,
            headers,
            defaults=defaults,
            final_size=size,
            trailers=trailers and self._te_trailers,
        )
        frame = writer.file_frame(size)
        end = b"" if trailers else writer.end()
        if frame is None:
            return head + end, b"", False
        self.response_body_bytes += size
        return head + frame[0], frame[1] + end, True

    def trailers_data(self, trailers: Sequence[tuple[bytes, bytes]]) -> bytes:
        """The end of a response that announced trailers, with them if they can go.

        Raises:
            ResponseError: a trailer field is not allowed, or the body was
                shorter than its declared content-length.
        """
        writer = self._writer
        assert writer is not None
        return writer.finish(trailers)

    def error_response(
        self,
        status: int,
        defaults: Sequence[tuple[bytes, bytes]],
        extra: Sequence[tuple[bytes, bytes]] = (),
    ) -> bytes:
        """A plain-text error answer that closes the connection.

        ``extra`` headers go after the framing ones (a WebSocket handshake's
        ``sec-websocket-version``).  A HEAD request's answer has the head only.
        """
        reason = REASON_PHRASES.get(status, b"Error")
        body = reason + b"\n"
        lines = [
            b"HTTP/1.1 %d %s\r\n" % (status, reason),
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n",
        ]
        lines += [b"%s: %s\r\n" % header for header in extra]
        lines += [line for _, line in defaults]
        lines.append(b"\r\n")
        if not self._head_only:
            lines.append(body)
        return b"".join(lines)


def _chunk_size(parser: Any, data: h11.Data) -> int:
    """The declared size of the chunk whose first bytes ``data`` holds.

    h11 keeps what is left of a chunk to itself: this reads it, and says 0
    if a later h11 keeps it elsewhere (then tests/test_request_framing.py
    fails, rather than the bound going silently).
    """
    connection = parser if type(parser) is h11.Connection else parser._h11
    reader = getattr(connection, "_reader", None)
    return len(data.data) + int(getattr(reader, "_bytes_in_chunk", 0))


def _authority_as_host(
    target: bytes, headers: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """The headers of a request in absolute form, its authority as the Host.

    RFC 9112 section 3.2.2: a server must ignore the Host header of such a
    request and use the target's authority instead (without userinfo).
    """
    rest = target.partition(b"://")[2]
    end = len(rest)
    for stop in (b"/", b"?", b"#"):
        found = rest.find(stop)
        if 0 <= found < end:
            end = found
    authority = rest[:end].rpartition(b"@")[2]
    if not authority:
        return headers
    replaced = []
    placed = False
    for name, value in headers:
        if name == b"host":
            if not placed:
                replaced.append((b"host", authority))
                placed = True
            continue
        replaced.append((name, value))
    if not placed:
        replaced.insert(0, (b"host", authority))
    return replaced


class _FailedParser:
    """The parser of a request whose body broke the protocol: it stays broken."""

    __slots__ = ("_reason",)

    their_state = h11.ERROR
    they_are_waiting_for_100_continue = False
    trailing_data = (b"", False)

    def __init__(self, reason: str) -> None:
        self._reason = reason

    def next_event(self) -> Any:
        raise h11.RemoteProtocolError(self._reason, error_status_hint=400)

    def receive_data(self, data: bytes) -> None:
        pass


def scan_head(head: Any, limits: H1Limits) -> Request | ProtocolError:
    """Check a request head and collect what the connection needs, in one pass.

    Problems h11 lets through, as a :class:`ProtocolError`, first found first:

    - A request line over its limit (414), before the size of the whole head:
      a long target is what the client must shorten, whatever else is large.
    - h11 bounds only a head that arrives in pieces, so the size of a whole
      one is checked here (431).
    - RFC 9112 section 6.3: a message with both Transfer-Encoding and
      Content-Length may be an attempt at request smuggling; we reject it
      rather than guess (400).  Section 6.1: Transfer-Encoding in an HTTP/1.0
      message means faulty framing (400).
    - The configured limits: number of header fields and size of one field
      (431, RFC 6585 section 5).
    - A version other than 1.0 and 1.1 (505): the HTTP/2 preface, say, on a
      server with HTTP/2 off.
    """
    # h11's Headers iterates through the generic Sequence protocol, one
    # __getitem__ per item; its item list is read directly when present.
    # The httptools backend's headers are a list already, made for this
    # request alone: it is taken as it is.
    if type(head) is ParsedRequest:
        headers = head.headers
    else:
        items = getattr(head.headers, "_full_items", None)
        if items is not None:
            headers = [(name, value) for _, name, value in items]
        else:
            headers = list(head.headers)
    method = head.method
    target = head.target
    version = head.http_version
    line = len(method) + len(target) + len(version) + 7
    size = len(method) + len(target) + 12
    field_limit = limits.field_size
    too_large_field = b""
    has_te = has_cl = forwarded = upgrade = te_trailers = False
    keep_alive = version == b"1.1"
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
            elif name == b"te":
                te_trailers = te_trailers or has_token(value, b"trailers")
            else:
                forwarded = True
    if not keep_alive and version != b"1.0" and version != b"1.1":
        # HTTP/2's preface with HTTP/2 off, or an HTTP/2.0 or 1.2 request.
        return ProtocolError(
            H1_STREAM, 505, f"HTTP/{version.decode('ascii', 'replace')} request"
        )
    if line > limits.request_line:
        return ProtocolError(H1_STREAM, 414, f"request line of {line} bytes")
    if size > limits.max_head:
        return ProtocolError(H1_STREAM, 431, f"request head of {size} bytes")
    if has_te and has_cl:
        return ProtocolError(
            H1_STREAM, 400, "both Transfer-Encoding and Content-Length"
        )
    if has_te and version == b"1.0":
        return ProtocolError(H1_STREAM, 400, "Transfer-Encoding in an HTTP/1.0 request")
    if len(headers) > limits.fields:
        return ProtocolError(H1_STREAM, 431, f"{len(headers)} header fields")
    if too_large_field:
        return ProtocolError(
            H1_STREAM,
            431,
            f"header field {too_large_field!r} over {field_limit} bytes",
        )
    if target[:1] != b"/" and b"://" in target[:10]:
        headers = _authority_as_host(target, headers)
    return Request(
        H1_STREAM,
        method,
        target,
        version,
        headers,
        keep_alive=keep_alive,
        forwarded=forwarded,
        upgrade=upgrade,
        te_trailers=te_trailers,
    )
