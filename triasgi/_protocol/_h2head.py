"""An HTTP/2 request head from its header list: the pseudo-headers and the limits.

The same :class:`~triasgi._events.Request` as HTTP/1.1's parser gives, so
that the scope, the access log and the app see one kind of request; and
HTTP/1.1's limits on a head, with the same answers (431, 414) on the stream.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from .._events import ProtocolError, Request
from ._h1parse import FORWARDING

if TYPE_CHECKING:
    from ._h2 import H2Limits

# RFC 9113 section 8.2.1: a field name holds none of 0x00-0x20, upper-case
# letters, 0x7f-0xff, or a colon (which only starts a pseudo-header); a value
# none of NUL, CR, LF, and no whitespace at either end.
_NAME: Final = re.compile(rb"[^\x00-\x20A-Z\x7f-\xff:]+")
_BAD_VALUE: Final = re.compile(rb"[\x00\r\n]|^[ \t]|[ \t]$")
# RFC 9113 section 8.2.2: fields about one HTTP/1.1 connection.
_CONNECTION_FIELDS: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
    }
)


class MalformedRequest(Exception):
    """A request head RFC 9113 calls malformed (section 8.1.1): a stream
    error of type PROTOCOL_ERROR."""


def check_field(name: bytes, value: bytes) -> None:
    """Raise :class:`MalformedRequest` for a regular field HTTP/2 forbids.

    The rules of RFC 9113 section 8.2 for a request's fields and trailers:
    the characters of the name and the value, and no connection-specific
    field (``te`` only as ``trailers``).
    """
    if _NAME.fullmatch(name) is None:
        raise MalformedRequest(f"invalid field name {name!r}")
    if _BAD_VALUE.search(value) is not None:
        raise MalformedRequest(f"invalid value of {name.decode('latin-1')}")
    if name in _CONNECTION_FIELDS or (name == b"te" and value.lower() != b"trailers"):
        raise MalformedRequest(f"connection-specific field {name!r}")


def request_of(
    stream_id: int,
    headers: Sequence[tuple[bytes, bytes]],
    priority: Any,
    limits: H2Limits,
) -> Request | ProtocolError:
    """A :class:`Request` from a stream's header list, checked in one pass.

    The whole list is bounded by h2's decoder (``max_header_list_size``);
    HTTP/1.1's per-field limits give the same 431 (or 414) on the stream.

    Raises:
        MalformedRequest: the head breaks RFC 9113 section 8.2 or 8.3 (bad
            characters, pseudo-headers unknown, repeated, late or missing,
            connection-specific fields, :authority and host that differ).
    """
    method = path = authority = protocol = scheme = host = None
    fields: list[tuple[bytes, bytes]] = []
    cookies: list[bytes] = []
    forwarded = te_trailers = False
    for name, value in headers:
        if name[:1] == b":":
            if fields or cookies:
                raise MalformedRequest(f"{name!r} after a regular field")
            if name == b":method":
                if method is not None:
                    raise MalformedRequest("a second :method")
                method = value
            elif name == b":path":
                if path is not None:
                    raise MalformedRequest("a second :path")
                path = value
            elif name == b":authority":
                if authority is not None:
                    raise MalformedRequest("a second :authority")
                authority = value
            elif name == b":scheme":
                if scheme is not None:
                    raise MalformedRequest("a second :scheme")
                scheme = value
            elif name == b":protocol":
                if protocol is not None or not value:
                    raise MalformedRequest("a second or empty :protocol")
                protocol = value
            else:
                raise MalformedRequest(f"pseudo-header {name!r} in a request")
            if _BAD_VALUE.search(value) is not None:
                raise MalformedRequest(f"invalid value of {name.decode('latin-1')}")
            continue
        check_field(name, value)
        if name == b"cookie":
            cookies.append(value)
            continue
        if name in FORWARDING:
            forwarded = True
        elif name == b"te":
            te_trailers = True
        elif name == b"host":
            if host is not None:
                raise MalformedRequest("a second host")
            host = value
        fields.append((name, value))
    if method is None:
        raise MalformedRequest("no :method")
    if method == b"CONNECT" and protocol is None:
        if scheme is not None or path is not None:
            raise MalformedRequest("CONNECT with :scheme or :path")
    else:
        if scheme is None or not path:
            raise MalformedRequest("no :scheme or :path")
        if protocol is not None and method != b"CONNECT":
            raise MalformedRequest(":protocol without CONNECT")
    if authority is None and host is None:
        raise MalformedRequest("no :authority or host")
    if authority is not None and host is not None and authority != host:
        raise MalformedRequest(":authority and host differ")
    if cookies:
        # Browsers send each cookie as a field of its own, to compress
        # better; joined, they are the one field HTTP/1.1 would have had.
        fields.append((b"cookie", b"; ".join(cookies)))
    if path is None:
        return ProtocolError(stream_id, 405, "CONNECT is not served")
    if len(path) > limits.target:
        return ProtocolError(stream_id, 414, f":path of {len(path)} bytes")
    if len(fields) > limits.fields:
        return ProtocolError(stream_id, 431, f"{len(fields)} header fields")
    for name, value in fields:
        if len(name) + len(value) + 2 > limits.field_size:
            return ProtocolError(
                stream_id, 431, f"header field {name!r} over {limits.field_size} bytes"
            )
    if authority and host is None:
        fields.insert(0, (b"host", authority))
    return Request(
        stream_id,
        method,
        path,
        b"2",
        fields,
        keep_alive=True,
        forwarded=forwarded,
        upgrade=protocol is not None,
        te_trailers=te_trailers,
        priority=None if priority is None else (priority.weight, priority.depends_on),
        protocol=protocol or b"",
    )
