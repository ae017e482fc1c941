"""The events between the layers: what a protocol found in the bytes it was fed.

A protocol in ``_protocol/`` turns bytes into these; the serving layer hands
them to the ASGI cycle in ``_asgi/``.  Each carries the id of the stream it
belongs to, so that a multiplexed protocol gives the same events as
HTTP/1.1, whose one stream at a time has the id :data:`H1_STREAM`.

The events are plain ``__slots__`` classes: one or two are made for every
request.
"""

from __future__ import annotations

from typing import Final, final

#: The stream id of every request on an HTTP/1.1 connection.
H1_STREAM: Final = 1


@final
class _NeedData:
    """The sentinel :data:`NEED_DATA`: nothing more until more bytes arrive."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


@final
class Request:
    """A request head that passed the protocol's checks.

    Attributes:
        method, target, http_version: as they came on the wire (bytes).
        headers: ``(lowercased name, value)`` pairs, in order.
        keep_alive: whether the request lets the connection carry another.
        forwarded: it has a forwarding header (``X-Forwarded-*``,
            ``Forwarded``), which a trusted proxy's scope rewrite looks at.
        upgrade: it has an ``Upgrade`` header.
        te_trailers: its ``TE`` header accepts trailers.
        priority: HTTP/2: the stream's ``(weight, depends_on)``, when its
            HEADERS frame said.
        protocol: HTTP/2: the ``:protocol`` of an extended CONNECT (RFC 8441).
    """

    __slots__ = (
        "forwarded",
        "headers",
        "http_version",
        "keep_alive",
        "method",
        "priority",
        "protocol",
        "stream_id",
        "target",
        "te_trailers",
        "upgrade",
    )

    def __init__(
        self,
        stream_id: int,
        method: bytes,
        target: bytes,
        http_version: bytes,
        headers: list[tuple[bytes, bytes]],
        *,
        keep_alive: bool,
        forwarded: bool,
        upgrade: bool,
        te_trailers: bool = False,
        priority: tuple[int, int] | None = None,
        protocol: bytes = b"",
    ) -> None:
        self.stream_id = stream_id
        self.method = method
        self.target = target
        self.http_version = http_version
        self.headers = headers
        self.keep_alive = keep_alive
        self.forwarded = forwarded
        self.upgrade = upgrade
        self.te_trailers = te_trailers
        self.priority = priority
        self.protocol = protocol


@final
class Body:
    """A piece of a request body."""

    __slots__ = ("data", "stream_id")

    def __init__(self, stream_id: int, data: bytes) -> None:
        self.stream_id = stream_id
        self.data = data


@final
class EndBody:
    """The end of a request body (also of a request without one)."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


@final
class ConnectionLost:
    """The client closed its side; no more requests or body will come."""

    __slots__ = ()


@final
class ProtocolError:
    """The client broke the protocol.

    Attributes:
        status: the HTTP status to answer with, when an answer can still go
            out (400, 408, 413, 414, 431, 505).
        reason: what was wrong, for the debug log.
        stream_id: the stream the error belongs to; on HTTP/1.1 the error
            ends the connection.
    """

    __slots__ = ("reason", "status", "stream_id")

    def __init__(self, stream_id: int, status: int, reason: str) -> None:
        self.stream_id = stream_id
        self.status = status
        self.reason = reason


#: The one instance of each event that carries nothing of its own on HTTP/1.1.
H1_END_BODY: Final = EndBody(H1_STREAM)
CONNECTION_LOST: Final = ConnectionLost()

Event = Request | Body | EndBody | ConnectionLost | ProtocolError | _NeedData


# -- WebSocket frames (after the handshake) ------------------------------------


@final
class WSMessage:
    """A whole WebSocket message: ``str`` for a text message, ``bytes`` for binary."""

    __slots__ = ("data",)

    def __init__(self, data: str | bytes) -> None:
        self.data = data


@final
class WSTooBig:
    """A message grew over the size limit; its frames so far were dropped."""

    __slots__ = ()


@final
class WSPing:
    """A ping from the client, to be answered with a pong of the same payload."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


@final
class WSPong:
    """A pong from the client."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


@final
class WSClose:
    """A close frame from the client, or the code of a protocol error in its frames."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


WS_TOO_BIG: Final = WSTooBig()

WSEvent = WSMessage | WSTooBig | WSPing | WSPong | WSClose


# -- commands: what the app's response asks a protocol to write -------------
#
# The common steps (the head, a piece of body) are plain calls on the
# protocol; these are the rarer ones of the response extensions.


@final
class Informational:
    """An interim response: ``103 Early Hints`` or another 1xx status."""

    __slots__ = ("headers", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.headers = headers


@final
class Trailers:
    """The trailer fields of every ``http.response.trailers``: the response's end."""

    __slots__ = ("headers",)

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = headers


@final
class PathSend:
    """The whole body, from the file at ``path``."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


Command = Informational | Trailers | PathSend
