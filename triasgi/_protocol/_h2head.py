"""An HTTP/2 request head from its header list: the pseudo-headers and the limits.

The same :class:`~triasgi._events.Request` as HTTP/1.1's parser gives, so
that the scope, the access log and the app see one kind of request; and
HTTP/1.1's limits on a head, with the same answers (431, 414) on the stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._events import ProtocolError, Request
from ._h1 import FORWARDING

if TYPE_CHECKING:
    from ._h2 import H2Limits


def request_of(
    stream_id: int,
    headers: Sequence[tuple[bytes, bytes]],
    priority: Any,
    limits: H2Limits,
) -> Request | ProtocolError:
    """A :class:`Request` from a stream's header list (validated by h2).

    The whole list is bounded by h2's decoder (``max_header_list_size``);
    HTTP/1.1's per-field limits give the same 431 (or 414) on the stream.
    """
    method = path = authority = protocol = b""
    scheme = b""
    fields: list[tuple[bytes, bytes]] = []
    cookies: list[bytes] = []
    forwarded = te_trailers = False
    for name, value in headers:
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name == b":scheme":
                scheme = value
            elif name == b":protocol":
                protocol = value
            continue
        if name == b"cookie":
            cookies.append(value)
            continue
        if name in FORWARDING:
            forwarded = True
        elif name == b"te":
            te_trailers = True
        fields.append((name, value))
    if cookies:
        # Browsers send each cookie as a field of its own, to compress
        # better; joined, they are the one field HTTP/1.1 would have had.
        fields.append((b"cookie", b"; ".join(cookies)))
    if len(path) > limits.target:
        return ProtocolError(stream_id, 414, f":path of {len(path)} bytes")
    if len(fields) > limits.fields:
        return ProtocolError(stream_id, 431, f"{len(fields)} header fields")
    for name, value in fields:
        if len(name) + len(value) + 2 > limits.field_size:
            return ProtocolError(
                stream_id, 431, f"header field {name!r} over {limits.field_size} bytes"
            )
    if authority and not any(name == b"host" for name, _ in fields):
        fields.insert(0, (b"host", authority))
    if method == b"CONNECT" and not protocol:
        return ProtocolError(stream_id, 405, "CONNECT is not served")
    if not path:
        return ProtocolError(stream_id, 400, "no :path")
    del scheme
    return Request(
        stream_id,
        method,
        path,
        b"2",
        fields,
        keep_alive=True,
        forwarded=forwarded,
        upgrade=bool(protocol),
        te_trailers=te_trailers,
        priority=None if priority is None else (priority.weight, priority.depends_on),
        protocol=protocol,
    )
