"""Request parser backends of an HTTP/1.1 connection (``--http``).

Sans-io, like h11: bytes go in with ``receive_data``, events come out of
``next_event``.  The connection speaks to one object with the part of
``h11.Connection``'s interface it uses, so the two backends are:

- ``h11``: :class:`PlainParser`, pure Python.  A plain request, the kind
  nearly every client sends, is split here in a few steps; any other request
  goes to an ``h11.Connection``, so that the verdict on anything unusual is
  h11's own.
- ``httptools``: :class:`HttptoolsParser`, the same with the plain head
  parsed by httptools (llhttp) instead, which must accept it too.

Why both answer exactly as h11: the fast path takes a request only when its
whole head is here and

1. the head matches ``_PLAIN_HEAD``, a subset of h11's grammar (RFC 9112
   sections 3 and 5): a token method, a target of visible characters,
   ``HTTP/1.0`` or ``HTTP/1.1``, CRLF line ends, ``token:value`` fields whose
   values hold visible characters, obs-text, spaces and tabs.  Such a head
   splits one way only: lines at CRLF, the request line at its two spaces, a
   field at its first colon, its value stripped of spaces and tabs, which is
   what h11's own patterns make of it;
2. (httptools only) llhttp parses it without complaint;
3. its framing is simple: no Transfer-Encoding, at most one Content-Length
   made of digits, and none of the headers that change h11's state machine
   (Upgrade, Expect), no CONNECT; and the Host rule h11 enforces holds
   (RFC 9112 section 3.2: exactly one in HTTP/1.1, at most one in 1.0).

Anything else, including a head that has not fully arrived yet, goes to an
h11 connection that gets the same bytes: then h11 accepts it, answers with
the same error status, or frames the chunked body.  For requests the fast
path takes, h11 would produce the same request: tests/test_h1parse.py checks
that, for both backends, on generated and hostile heads.

A plain head clearly within the limits (``H1Limits``, bounded by the
head's size) also gets the checks of ``_h1.scan_head`` in the same pass,
and comes out as the connection's ``Request``; any other plain head, or one
with a target not in origin form, comes out as a :class:`ParsedRequest`,
which ``scan_head`` checks as it checks h11's (tests/test_h1parse.py holds
the two ways to the same events).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from typing import Any, final

import h11

from .._events import H1_STREAM, Request
from ._h1writer import has_close_token, has_token

try:
    import httptools
except ImportError:  # the triasgi[fast] extra is not installed.
    httptools = None  # type: ignore[assignment]

HAVE_HTTPTOOLS = httptools is not None

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_PLAIN_HEAD = re.compile(
    _TOKEN + rb" [\x21-\x7e]+ HTTP/1\.[01]\r\n"
    rb"(?:" + _TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\r\n)*"
    rb"\r\n"
)
# h11 refuses longer ones (a bad Content-Length).
_MAX_LENGTH_DIGITS = 20
# Requests with one of these headers go to h11, which gives them meaning.
_H11_HEADERS = frozenset({b"transfer-encoding", b"upgrade", b"expect"})
_END_OF_MESSAGE = h11.EndOfMessage()
_CONNECTION_CLOSED = h11.ConnectionClosed()

#: The fields a proxy forwards the client, scheme and host in (both protocols).
FORWARDING = frozenset(
    {
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
    }
)
# The fields the fast path looks at, by what it does with them.
_CONTENT_LENGTH, _HOST, _CONNECTION, _FORWARDING, _TE, _TO_H11 = range(6)
_NOTABLE = {
    b"content-length": _CONTENT_LENGTH,
    b"host": _HOST,
    b"connection": _CONNECTION,
    b"te": _TE,
    **dict.fromkeys(FORWARDING, _FORWARDING),
    **dict.fromkeys(_H11_HEADERS, _TO_H11),
}

MISSING_HTTPTOOLS = (
    "--http httptools needs the httptools package: pip install 'triasgi[fast]'."
)


@final
class H1Limits:
    """The limits on a request head (the ``limit_*`` settings), in bytes or fields.

    Attributes:
        max_head: the whole head (``h11_max_incomplete_event_size``).
        request_line: the request line (``limit_request_line``).
        fields: the number of header fields (``limit_request_fields``).
        field_size: one header field, name and value (``limit_request_field_size``).
    """

    __slots__ = ("field_size", "fields", "max_head", "request_line")

    def __init__(
        self, *, max_head: int, request_line: int, fields: int, field_size: int
    ) -> None:
        self.max_head = max_head
        self.request_line = request_line
        self.fields = fields
        self.field_size = field_size


class ParsedRequest:
    """A request head from the fast path, shaped like ``h11.Request``.

    ``headers`` is a list of ``(lowercased name, value)`` pairs, which is
    what iterating an ``h11.Request``'s headers gives.
    """

    __slots__ = ("headers", "http_version", "method", "target")

    def __init__(
        self,
        method: bytes,
        target: bytes,
        http_version: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        self.method = method
        self.target = target
        self.http_version = http_version
        self.headers = headers


class PlainParser:
    """One request's parser: a plain request split here, h11 for the rest.

    Implements what the connection uses of ``h11.Connection``:
    ``receive_data``, ``next_event``, ``their_state``,
    ``they_are_waiting_for_100_continue`` and ``trailing_data``.
    """

    __slots__ = (
        "_buffer",
        "_closed",
        "_h11",
        "_keep_alive",
        "_limits",
        "_remaining",
        "_state",
    )

    def __init__(self, limits: H1Limits) -> None:
        self._h11: h11.Connection | None = None
        self._limits = limits
        self._buffer = b""
        self._closed = False
        self._state: Any = h11.IDLE
        # Body bytes still to come, once the head is parsed.
        self._remaining = 0
        self._keep_alive = True

    # -- the h11.Connection interface ----------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self._h11 is not None:
            self._h11.receive_data(data)
        elif data:
            if self._closed:
                raise RuntimeError("received close, then received more data?")
            self._buffer += data
        else:
            self._closed = True

    def next_event(self) -> Any:
        if self._h11 is not None:
            return self._h11.next_event()
        state = self._state
        if state is h11.IDLE:
            return self._next_head()
        if state is h11.SEND_BODY:
            return self._next_body_event()
        # After the request, as h11 has it: the next request waits (PAUSED)
        # for a new parser; after a request that ends the connection, more
        # data is an error.
        if state is h11.ERROR:
            raise h11.RemoteProtocolError("Can't receive data when peer state is ERROR")
        if self._buffer:
            if state is h11.DONE:
                return h11.PAUSED
            self._state = h11.ERROR
            raise h11.RemoteProtocolError("Got data when expecting EOF")
        if self._closed:
            self._state = h11.CLOSED
            return _CONNECTION_CLOSED
        return h11.NEED_DATA

    @property
    def their_state(self) -> Any:
        if self._h11 is not None:
            return self._h11.their_state
        return self._state

    @property
    def they_are_waiting_for_100_continue(self) -> bool:
        # The fast path never takes a request with an Expect header.
        if self._h11 is not None:
            return self._h11.they_are_waiting_for_100_continue
        return False

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        if self._h11 is not None:
            return self._h11.trailing_data
        return self._buffer, self._closed

    # -- parsing -------------------------------------------------------------

    def _fall_back(self) -> h11.Connection:
        """Give the request, and all bytes from its first one on, to h11."""
        conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self._limits.max_head
        )
        if self._buffer:
            conn.receive_data(self._buffer)
        if self._closed:
            conn.receive_data(b"")
        self._buffer = b""
        self._h11 = conn
        return conn

    def _next_head(self) -> Any:
        buffer = self._buffer
        if not buffer:
            if self._closed:
                self._state = h11.CLOSED
                return _CONNECTION_CLOSED
            return h11.NEED_DATA
        end = buffer.find(b"\r\n\r\n") + 4
        if end < 4 or _PLAIN_HEAD.fullmatch(buffer, 0, end) is None:
            return self._fall_back().next_event()
        return self._parse_plain(buffer, end)

    def _parse_plain(self, buffer: bytes, end: int) -> Any:
        """The request of the plain head of ``end`` bytes at the buffer's start."""
        # The pattern leaves one way to split it (the module docstring).
        lines = buffer[: end - 4].split(b"\r\n")
        method, target, version = lines[0].split(b" ")
        headers: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.lower(), value.strip(b" \t")))
        return self._take(method, target, version[5:], headers, end)

    def _take(
        self,
        method: bytes,
        target: bytes,
        version: bytes,
        headers: list[tuple[bytes, bytes]],
        end: int,
    ) -> Any:
        """The request of a plain head of ``end`` bytes, if its framing is simple.

        The connection's :class:`Request` when the head is also clearly
        within the limits; a :class:`ParsedRequest` for ``scan_head``
        otherwise, which finds which limit a head is over, if any.
        """
        length = b"0"
        lengths = hosts = 0
        keep_alive = True
        forwarded = te_trailers = False
        for name, value in headers:
            kind = _NOTABLE.get(name)
            if kind is None:
                continue
            if kind == _CONTENT_LENGTH:
                lengths += 1
                length = value
            elif kind == _HOST:
                hosts += 1
            elif kind == _CONNECTION:
                if has_close_token(value):
                    keep_alive = False
            elif kind == _FORWARDING:
                forwarded = True
            elif kind == _TE:
                te_trailers = te_trailers or has_token(value, b"trailers")
            else:  # Transfer-Encoding, Upgrade, Expect
                return self._fall_back().next_event()
        if (
            lengths > 1
            or not (length.isdigit() and len(length) <= _MAX_LENGTH_DIGITS)
            or hosts > 1
            or (hosts == 0 and version == b"1.1")
            or method == b"CONNECT"
        ):
            return self._fall_back().next_event()
        self._buffer = self._buffer[end:]
        self._remaining = int(length)
        self._state = h11.SEND_BODY
        keep_alive = self._keep_alive = keep_alive and version == b"1.1"
        # Bounds of scan_head's measures, from the head's size: a field
        # there is its name and value and 2, the head each field's and 4 more
        # and the request line's.  In the head a field takes its name, a
        # colon, its value and its CRLF at least (so end - 2 + one byte per
        # field bounds the head's measure, and end any field's); the request
        # line's measure is exact.
        limits = self._limits
        if (
            end - 2 + len(headers) > limits.max_head
            or end > limits.field_size
            or len(headers) > limits.fields
            or len(method) + len(target) + 10 > limits.request_line
            or target[:1] != b"/"
        ):
            return ParsedRequest(method, target, version, headers)
        return Request(
            H1_STREAM,
            method,
            target,
            version,
            headers,
            keep_alive=keep_alive,
            forwarded=forwarded,
            upgrade=False,
            te_trailers=te_trailers,
        )

    def _next_body_event(self) -> Any:
        remaining = self._remaining
        if not remaining:
            self._state = h11.DONE if self._keep_alive else h11.MUST_CLOSE
            return _END_OF_MESSAGE
        buffer = self._buffer
        if buffer:
            data = buffer[:remaining]
            self._buffer = buffer[remaining:]
            self._remaining = remaining - len(data)
            return h11.Data(data=data)
        if self._closed:
            self._state = h11.ERROR
            raise h11.RemoteProtocolError(
                "peer closed connection without sending complete message body: "
                f"{remaining} bytes missing",
                error_status_hint=400,
            )
        return h11.NEED_DATA


class HttptoolsParser(PlainParser):
    """A request's parser whose plain heads httptools (llhttp) parses too."""

    __slots__ = ("_headers", "_url")

    # The httptools callbacks of the head (this object is its protocol, so
    # that no other is made per request).

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value.strip(b" \t")))

    def _parse_plain(self, buffer: bytes, end: int) -> Any:
        self._url = b""
        headers: list[tuple[bytes, bytes]] = []
        self._headers = headers
        parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(buffer[:end])
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            return self._fall_back().next_event()
        version = parser.get_http_version().encode("ascii")
        return self._take(parser.get_method(), self._url, version, headers, end)


class _IdleParser:
    """The parser of a connection waiting for its next request's first byte.

    Shared by all idle connections, so that one holds no parser of its own;
    the connection swaps in a real one before giving it data.
    """

    __slots__ = ()

    their_state = h11.IDLE
    they_are_waiting_for_100_continue = False
    trailing_data = (b"", False)

    def next_event(self) -> Any:
        return h11.NEED_DATA

    def receive_data(self, data: bytes) -> None:
        raise RuntimeError("The idle parser takes no data.")


IDLE_PARSER = _IdleParser()


def parser_factory(backend: str, limits: H1Limits) -> Callable[[], Any]:
    """A callable giving a fresh parser for each request, for ``--http``.

    Raises:
        ValueError: ``backend`` is ``"httptools"`` and httptools is missing.
    """
    if backend == "httptools" and httptools is None:
        raise ValueError(MISSING_HTTPTOOLS)
    # partial, not a lambda: one Python call less for each request.
    if backend == "h11" or httptools is None:
        return partial(PlainParser, limits)
    return partial(HttptoolsParser, limits)
