"""Serialize one HTTP/1.1 response (sans-io): head, framing, body, end.

h11 parses the requests; responses are written here, because this is the
hot path and the rules are few (RFC 9112 section 6 and RFC 9110 section
6.4.1):

- 1xx, 204 and 304 responses, and any response to HEAD, have no body.
- A response with a valid ``content-length`` is framed by it; sending more
  or less than declared is an error.
- Otherwise an HTTP/1.1 client gets ``transfer-encoding: chunked`` and an
  HTTP/1.0 client gets a body delimited by closing the connection.
- A ``transfer-encoding`` header from the app is dropped: framing is the
  server's business (ASGI HTTP spec).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from http import HTTPStatus

# RFC 9110 section 5.1 (token) and 5.5 (field value: no CR, LF or NUL).
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_BAD_VALUE = re.compile(rb"[\x00\r\n]|^[ \t]|[ \t]$")
_NO_BODY_STATUS = frozenset({204, 304})
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection"})
# Header lines already checked, by (name, value) as the app gave them: apps
# send the same content-type and the like with every response.  Framing
# headers are never in it.  Cleared when full, so it stays small.
_checked_lines: dict[tuple[bytes, bytes], tuple[bytes, bytes]] = {}
_CHECKED_LINES_MAX = 512

#: Reason phrases for status lines: Python's table, with the RFC 9110 names
#: that older Pythons still spell the RFC 7231 way, so every version agrees.
REASON_PHRASES = {status.value: status.phrase.encode() for status in HTTPStatus} | {
    413: b"Content Too Large",
    414: b"URI Too Long",
    416: b"Range Not Satisfiable",
    422: b"Unprocessable Content",
}
# Whole status lines of the statuses with a reason phrase: apps answer with
# few statuses, and a line is then one lookup.
_STATUS_LINES = {
    status: b"HTTP/1.1 %d %s\r\n" % (status, reason)
    for status, reason in REASON_PHRASES.items()
}


def has_close_token(value: bytes) -> bool:
    """Whether a Connection header value holds the ``close`` option.

    The value is a list of tokens (RFC 9110 section 7.6.1), read as h11
    reads it: "keep-alive, closed-captions" holds no ``close``.
    """
    lowered = value.lower()
    return b"close" in lowered and b"close" in [
        token.strip(b" \t") for token in lowered.split(b",")
    ]


def has_token(value: bytes, token: bytes) -> bool:
    """Whether a comma-separated header value holds ``token`` (lowercase).

    Parameters after a ``;`` do not count: ``TE: trailers;q=1`` holds
    ``trailers`` (RFC 9110 section 10.1.4).
    """
    lowered = value.lower()
    return token in lowered and token in [
        item.split(b";", 1)[0].strip(b" \t") for item in lowered.split(b",")
    ]


class ResponseError(Exception):
    """The app's response cannot be sent as given (bad header, wrong length)."""


class ResponseWriter:
    """The bytes of one response, with its framing checked.

    Args:
        http_version: the request's version, ``b"1.0"`` or ``b"1.1"``.
        head_only: the request was HEAD: headers as for GET, no body.
        keep_alive: whether the connection may carry another request after
            this one, as far as the request is concerned.
    """

    __slots__ = (
        "_chunked",
        "_head_only",
        "_http10",
        "_remaining",
        "_trailers",
        "keep_alive",
        "no_body",
    )

    def __init__(
        self, *, http_version: bytes, head_only: bool, keep_alive: bool
    ) -> None:
        self._http10 = http_version == b"1.0"
        self._head_only = head_only
        self.keep_alive = keep_alive and not self._http10
        self._chunked = False
        #: The response has no body (HEAD, 1xx, 204, 304), as far as known.
        self.no_body = head_only
        self._remaining: int | None = None
        # A trailer section goes after the body (chunked framing).
        self._trailers = False

    def head(
        self,
        status: int,
        reason: bytes | None,
        headers: list[tuple[bytes, bytes]],
        *,
        defaults: Sequence[tuple[bytes, bytes]] = (),
        final_body: bytes | None = None,
        final_size: int | None = None,
        trailers: bool = False,
        whole: bool = False,
    ) -> bytes:
        """The status line and headers.

        Args:
            reason: the reason phrase; None for the usual one of ``status``.
            defaults: the server's own headers, as ``(lowercased name, whole
                header line)``; each goes out unless the app set that header.
            final_body: the whole body, when it is known now: it gets a
                ``content-length`` instead of chunked framing.
            final_size: the size of the whole body, when it is known but
                not in memory (a file).
            trailers: a trailer section will follow the body.  It needs
                chunked framing (RFC 9112 section 7.1.2), which an HTTP/1.1
                response with a body then gets, in place of any
                ``content-length``; without a body (HEAD, 204, 304) or on
                HTTP/1.0 the trailers are dropped.
            whole: ``final_body`` is the whole response after the head: the
                bytes returned are the head, the framed body and the end, as
                :meth:`body` and :meth:`end` give them, in one buffer.

        Raises:
            ResponseError: a header name or value is not allowed, or
                ``content-length`` is malformed or given twice differently;
                with ``whole``, the body is not as long as it.
        """
        no_body_status = status in _NO_BODY_STATUS or status < 200
        self.no_body = self._head_only or no_body_status
        status_line = _STATUS_LINES.get(status) if reason is None else None
        if status_line is None:
            status_line = b"HTTP/1.1 %d %s\r\n" % (
                status,
                REASON_PHRASES.get(status, b"") if reason is None else reason,
            )
        lines = [status_line]
        names = []
        length: bytes | None = None
        close = not self.keep_alive
        for header in headers:
            known = _checked_lines.get(header)
            if known is not None:
                names.append(known[0])
                lines.append(known[1])
                continue
            name, value = header
            if name == b"content-length" and value.isdigit():
                # Valid as it is: the usual spelling, digits only.
                names.append(name)
                if length is not None and value != length:
                    raise ResponseError(f"Invalid content-length {value!r}")
                length = value
                continue
            if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
                raise ResponseError(f"Invalid response header {name!r}: {value!r}")
            lower = name.lower()
            names.append(lower)
            if lower not in _FRAMING:
                line = b"%s: %s\r\n" % (name, value)
                lines.append(line)
                if len(_checked_lines) >= _CHECKED_LINES_MAX:
                    _checked_lines.clear()
                _checked_lines[name, value] = (lower, line)
                continue
            if lower == b"content-length":
                value = value.strip()
                if not value.isdigit() or (length is not None and value != length):
                    raise ResponseError(f"Invalid content-length {value!r}")
                length = value
                continue
            elif lower == b"transfer-encoding":
                continue
            elif lower == b"connection":
                if has_close_token(value):
                    close = True
                    continue
                # Hop-by-hop tokens other than close are kept as given.
            lines.append(b"%s: %s\r\n" % (name, value))
        for name, line in defaults:
            if name not in names:
                lines.append(line)
        if no_body_status:
            # RFC 9110 section 8.6: a 304 may carry the length the GET would
            # have; 1xx and 204 carry none.
            if length is not None and status == 304:
                lines.append(b"content-length: %s\r\n" % length)
            self._remaining = 0
        elif trailers and not self._head_only and not self._http10:
            self._chunked = self._trailers = True
            lines.append(b"transfer-encoding: chunked\r\n")
        elif length is not None:
            lines.append(b"content-length: %s\r\n" % length)
            self._remaining = 0 if self._head_only else int(length)
        elif final_body is not None or final_size is not None:
            size = len(final_body) if final_body is not None else int(final_size or 0)
            lines.append(b"content-length: %d\r\n" % size)
            self._remaining = 0 if self._head_only else size
        elif self._head_only:
            self._remaining = 0
        elif self._http10:
            close = True
        else:
            self._chunked = True
            lines.append(b"transfer-encoding: chunked\r\n")
        if close:
            self.keep_alive = False
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        if whole and final_body is not None:
            if (
                self._remaining == len(final_body)
                and not self._chunked
                and not self.no_body
            ):
                # body() and end(), inline for the usual whole response: a
                # body exactly as long as its content-length.
                self._remaining = 0
                lines.append(final_body)
                return b"".join(lines)
            if final_body:
                framed = self.body(final_body)
                if framed:
                    lines.append(framed)
            end = self.end()
            if end:
                lines.append(end)
        return b"".join(lines)

    def body(self, data: bytes) -> bytes:
        """Frame one piece of the body (nothing for HEAD, 204 and 304).

        Raises:
            ResponseError: more data than the declared content-length.
        """
        if self.no_body or not data:
            return b""
        if self._chunked:
            return b"%x\r\n%s\r\n" % (len(data), data)
        if self._remaining is not None:
            self._remaining -= len(data)
            if self._remaining < 0:
                self.keep_alive = False
                raise ResponseError("Response body longer than its content-length")
        return bytes(data)

    def file_frame(self, size: int) -> tuple[bytes, bytes] | None:
        """What goes before and after ``size`` bytes of body sent from a file.

        None when the response has no body (HEAD, 204, 304).

        Raises:
            ResponseError: more data than the declared content-length.
        """
        if self.no_body:
            return None
        if self._chunked:
            return (b"%x\r\n" % size, b"\r\n") if size else (b"", b"")
        if self._remaining is not None:
            self._remaining -= size
            if self._remaining < 0:
                self.keep_alive = False
                raise ResponseError("Response body longer than its content-length")
        return b"", b""

    def finish(self, trailers: Sequence[tuple[bytes, bytes]]) -> bytes:
        """The end of a response whose start announced trailers.

        The trailer section when one can go (see :meth:`head`), else the
        plain end: trailers are dropped, never an error.

        Raises:
            ResponseError: a trailer field name or value is not allowed, or
                less data than the declared content-length.
        """
        if not self._trailers:
            return self.end()
        return b"".join([b"0\r\n", *_field_lines(trailers, "trailer field"), b"\r\n"])

    def end(self) -> bytes:
        """The end of the response.

        Raises:
            ResponseError: less data than the declared content-length.
        """
        if self._chunked:
            return b"0\r\n\r\n"
        if self._remaining and not self.no_body:
            self.keep_alive = False
            raise ResponseError("Response body shorter than its content-length")
        return b""


def informational_head(
    status: int, headers: Sequence[tuple[bytes, bytes]], reason: bytes = b""
) -> bytes:
    """An interim (1xx) response head, such as a WebSocket handshake's 101.

    Raises:
        ResponseError: a header name or value is not allowed.
    """
    status_line = b"HTTP/1.1 %d %s\r\n" % (
        status,
        reason or REASON_PHRASES.get(status, b""),
    )
    return b"".join([status_line, *_field_lines(headers, "response header"), b"\r\n"])


def valid_field(name: bytes, value: bytes) -> bool:
    """Whether a header or trailer field may be sent: its name a token, its
    value free of CR, LF and NUL and of whitespace at either end (RFC 9110
    section 5; HTTP/2 has the same rules, RFC 9113 section 8.2.1)."""
    return _TOKEN.fullmatch(name) is not None and _BAD_VALUE.search(value) is None


def _field_lines(fields: Sequence[tuple[bytes, bytes]], what: str) -> list[bytes]:
    """``name: value`` lines of header or trailer fields, each checked.

    Raises:
        ResponseError: a name is not a token, or a value holds CR, LF or NUL.
    """
    lines = []
    for name, value in fields:
        if not valid_field(name, value):
            raise ResponseError(f"Invalid {what} {name!r}: {value!r}")
        lines.append(b"%s: %s\r\n" % (name, value))
    return lines
