"""WebSocket, sans-io: the opening handshake's checks and answer, and the frames.

The HTTP/1.1 protocol hands over a request that asks for an upgrade
(RFC 6455 section 4.2.1): :func:`check_handshake` validates it,
:func:`accept_headers` builds the 101 answer's headers (with permessage-deflate
negotiated, RFC 7692), and :class:`WebSocketFrames` turns bytes into whole
messages and control events (``_events.py``) and messages into frames, over
wsproto.  The serving layer (``_serve/_websocket.py``) owns the tasks, the
write lock and the time.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.utilities import generate_accept_token

from .._events import (
    WS_TOO_BIG,
    Request,
    WSClose,
    WSEvent,
    WSMessage,
    WSPing,
    WSPong,
)

# RFC 6455 section 4.2.1, item 6, and section 4.4.
_WEBSOCKET_VERSION = b"13"
# With per-message deflate, how much compressed data wsproto gets at a time.
_DEFLATE_SLICE = 4096

# The kinds of frame :meth:`WebSocketFrames.frame` makes.
TEXT, BINARY, PING, PONG, CLOSE = range(5)


# -- the opening handshake ---------------------------------------------------


class HandshakeError(Exception):
    """A WebSocket upgrade request that breaks RFC 6455 section 4.2.1.

    Attributes:
        status: the HTTP status to answer with (400, or 426 for a version we
            do not speak).
        headers: extra response headers.
    """

    def __init__(
        self,
        reason: str,
        status: int = 400,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.headers = headers or []


@dataclass(frozen=True)
class Handshake:
    """What a valid upgrade request asks for.

    ``key`` is None for a WebSocket over HTTP/2 (RFC 8441), which has none.
    """

    key: bytes | None
    subprotocols: list[str]
    extension_offers: list[str]


def _comma_list(request: Request, header: bytes) -> list[str]:
    values = []
    for name, value in request.headers:
        if name == header:
            values += [v.strip() for v in value.decode("latin-1").split(",")]
    return [v for v in values if v]


def is_websocket_upgrade(request: Request) -> bool:
    """Whether ``request`` asks to become a WebSocket (its Upgrade header says so)."""
    return any(t.lower() == "websocket" for t in _comma_list(request, b"upgrade"))


def is_extended_connect(request: Request) -> bool:
    """Whether an HTTP/2 ``request`` opens a WebSocket (RFC 8441 section 4)."""
    return request.method == b"CONNECT" and request.protocol == b"websocket"


def check_handshake(request: Request) -> Handshake:
    """Validate a WebSocket opening handshake.

    RFC 6455 section 4.2.1 on HTTP/1.1, where h11 has already checked the
    HTTP framing and the Host header; RFC 8441 section 5 on HTTP/2, an
    extended CONNECT with no key, whose pseudo-headers h2 has checked.

    Raises:
        HandshakeError: the request is not a valid opening handshake.
    """
    if request.http_version == b"2":
        if not is_extended_connect(request):
            raise HandshakeError("a WebSocket over HTTP/2 is an extended CONNECT")
        _check_version(request)
        return Handshake(
            key=None,
            subprotocols=_comma_list(request, b"sec-websocket-protocol"),
            extension_offers=_comma_list(request, b"sec-websocket-extensions"),
        )
    if request.method != b"GET" or request.http_version != b"1.1":
        raise HandshakeError("a WebSocket handshake must be an HTTP/1.1 GET")
    if not any(t.lower() == "upgrade" for t in _comma_list(request, b"connection")):
        raise HandshakeError("no 'upgrade' token in the Connection header")
    keys = [value for name, value in request.headers if name == b"sec-websocket-key"]
    _check_version(request)
    if len(keys) != 1:
        raise HandshakeError("there must be exactly one Sec-WebSocket-Key header")
    try:
        nonce = base64.b64decode(keys[0], validate=True)
    except binascii.Error:
        nonce = b""
    if len(nonce) != 16:
        raise HandshakeError("Sec-WebSocket-Key is not 16 bytes in base64")
    for name, value in request.headers:
        if name == b"transfer-encoding" or (
            name == b"content-length" and value != b"0"
        ):
            raise HandshakeError("a WebSocket handshake has no body")
    return Handshake(
        key=keys[0],
        subprotocols=_comma_list(request, b"sec-websocket-protocol"),
        extension_offers=_comma_list(request, b"sec-websocket-extensions"),
    )


def _check_version(request: Request) -> None:
    versions = [v for name, v in request.headers if name == b"sec-websocket-version"]
    if not versions:
        raise HandshakeError(
            "no Sec-WebSocket-Version header",
            headers=[(b"sec-websocket-version", _WEBSOCKET_VERSION)],
        )
    if versions != [_WEBSOCKET_VERSION]:
        raise HandshakeError(
            f"unsupported WebSocket version {versions!r}",
            status=426,
            headers=[(b"sec-websocket-version", _WEBSOCKET_VERSION)],
        )


def negotiate_deflate(offers: list[str]) -> tuple[Extension, bytes] | None:
    """Accept the first permessage-deflate offer we can (RFC 7692 section 5.1).

    Returns:
        The extension, set up for the connection, and the value of the
        Sec-WebSocket-Extensions response header; None if nothing fits.
    """
    for offer in offers:
        if offer.split(";", 1)[0].strip().lower() != PerMessageDeflate.name:
            continue
        extension = PerMessageDeflate()
        params = extension.accept(offer)
        if params is None or params is False:
            continue
        header = PerMessageDeflate.name
        if isinstance(params, str) and params:
            header += "; " + params
        return extension, header.encode("ascii")
    return None


def accept_headers(
    handshake: Handshake,
    subprotocol: str | None,
    *,
    deflate: bool,
) -> tuple[list[tuple[bytes, bytes]], Extension | None]:
    """The headers of the 101 answer (HTTP/2: the 200), and the deflate
    extension if negotiated.

    Args:
        handshake: the validated request.
        subprotocol: the one the app chose, which the client offered.
        deflate: whether permessage-deflate may be negotiated at all.
    """
    headers = []
    if handshake.key is not None:
        headers += [
            (b"upgrade", b"websocket"),
            (b"connection", b"Upgrade"),
            (b"sec-websocket-accept", generate_accept_token(handshake.key)),
        ]
    if subprotocol is not None:
        headers.append((b"sec-websocket-protocol", subprotocol.encode("latin-1")))
    extension = None
    if deflate:
        negotiated = negotiate_deflate(handshake.extension_offers)
        if negotiated is not None:
            extension = negotiated[0]
            headers.append((b"sec-websocket-extensions", negotiated[1]))
    return headers, extension


# -- frames --------------------------------------------------------------------

# RFC 6455 section 5.2: opcodes of data frames (continuation, text, binary).
_DATA_OPCODES = frozenset({0x0, 0x1, 0x2})
# The first byte of a final text or binary frame with no RSV bit, by kind
# (TEXT, BINARY), and the start of its header by the size of its payload:
# up to 125 bytes, up to 65535 (length in 2 bytes), larger (8 bytes).
_FIRST_BYTES = (0x81, 0x82)
_SHORT_HEADS = tuple(
    tuple(bytes((first, length)) for length in range(126)) for first in _FIRST_BYTES
)
_MEDIUM_HEADS = tuple(bytes((first, 126)) for first in _FIRST_BYTES)
_LONG_HEADS = tuple(bytes((first, 127)) for first in _FIRST_BYTES)


class _FrameSizes:
    """Follows frame boundaries in the client's bytes, ahead of wsproto.

    wsproto reports a frame's payload as it arrives, so the message size
    check alone would read a frame that declares 2**62 bytes up to the
    limit before refusing it.  This reads each frame header (RFC 6455
    section 5.2) as it arrives and says where a data frame begins whose
    declared length cannot fit in the message limit, so that the connection
    is closed with 1009 before any of its payload is read.

    Args:
        max_size: the largest message, in bytes.
        compressed_max: the largest payload of a compressed message, in bytes.
    """

    __slots__ = (
        "_compressed",
        "_compressed_max",
        "_fragmented",
        "_head",
        "_max",
        "_message",
        "_skip",
    )

    def __init__(self, max_size: int, compressed_max: int) -> None:
        self._max = max_size
        self._compressed_max = compressed_max
        self._head = b""  # the header of the next frame, while it arrives
        self._skip = 0  # payload bytes of the current frame still to come
        self._message = 0  # payload bytes of the data message so far
        self._compressed = False  # the message has RSV1 set (RFC 7692)
        self._fragmented = False  # a data message's frames are under way

    @property
    def between_messages(self) -> bool:
        """All the bytes so far are whole frames, and no message is half done."""
        return not (self._head or self._skip or self._fragmented)

    def too_big_at(self, data: bytes) -> int:
        """Where in ``data`` a frame over the limit begins; -1 if none does.

        A header that began in earlier data gives 0.
        """
        pos = 0
        end = len(data)
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            held = len(self._head)
            start = pos - held
            need = 2
            if held >= 2 or end - pos >= 2 - held:
                second = (self._head + data[pos : pos + 2 - held])[1]
                short = second & 0x7F
                need += (2 if short == 126 else 8 if short == 127 else 0) + (
                    4 if second & 0x80 else 0
                )
            take = min(need - held, end - pos)
            self._head += data[pos : pos + take]
            pos += take
            if len(self._head) < need:
                break
            if not self._frame_fits():
                return max(start, 0)
        return -1

    def _frame_fits(self) -> bool:
        head = self._head
        self._head = b""
        first, second = head[0], head[1]
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(head[2:4], "big")
        elif length == 127:
            length = int.from_bytes(head[2:10], "big")
        self._skip = length
        opcode = first & 0x0F
        if opcode not in _DATA_OPCODES:
            return True  # a control frame: wsproto bounds it (125 bytes)
        if opcode != 0:
            self._message = 0
            self._compressed = bool(first & 0x40)
        self._message += length
        limit = self._compressed_max if self._compressed else self._max
        if self._message > limit:
            return False
        if first & 0x80:  # FIN: the message is complete
            self._message = 0
            self._fragmented = False
        else:
            self._fragmented = True
        return True


class WebSocketFrames:
    """The frames of an accepted WebSocket, server side.

    Args:
        extension: the negotiated permessage-deflate, or None.
        received: bytes that came after the handshake request.
        max_size: the largest message, in bytes (``ws_max_size``).
    """

    __slots__ = (
        "_frame_sizes",
        "_max_size",
        "_parts",
        "_pending",
        "_plain",
        "_ready",
        "_refused",
        "_size",
        "_step",
        "_ws",
    )

    def __init__(
        self, extension: Extension | None, received: bytes, max_size: int
    ) -> None:
        self._ws = Connection(ConnectionType.SERVER, [extension] if extension else [])
        self._max_size = max_size
        # A compressed message is limited by its decompressed size (in
        # events()); its frames' declared lengths only when they are beyond
        # anything a deflate encoder makes of a message that fits (zlib's
        # worst case adds well under 1%).
        self._frame_sizes = _FrameSizes(max_size, 2 * max_size + 1024)
        # A frame over the limit began: True until WS_TOO_BIG is given, then
        # None, and from then on nothing more of the client's is parsed.
        self._refused: bool | None = False
        # wsproto decompresses all it is given at once; in small slices the
        # size check stops a compressed message long before it could blow up
        # to a thousand times its size.
        self._step = _DEFLATE_SLICE if extension is not None else 1 << 62
        self._pending = b""
        self._parts: list[str | bytes] = []
        self._size = 0
        # No extension, and wsproto has reported no close (a parse error
        # included): a whole small message may skip wsproto (message_of,
        # frame), which then stays as it would be had it seen the frame.
        self._plain = extension is None
        # message_of may skip wsproto: _plain, nothing received is waiting
        # for wsproto, no frame was refused, the connection is open and the
        # client's bytes so far end between messages.  Worked out at the end
        # of events(), and false from receive_data() or a close until then.
        self._ready = self._plain
        if received:
            self.receive_data(received)

    # -- state ---------------------------------------------------------------

    @property
    def open(self) -> bool:
        """Neither side has sent a close frame."""
        return self._ws.state is ConnectionState.OPEN

    @property
    def remote_closing(self) -> bool:
        """The client sent a close frame; ours has not gone yet."""
        return self._ws.state is ConnectionState.REMOTE_CLOSING

    @property
    def local_closing(self) -> bool:
        """We sent a close frame and wait for the client's."""
        return self._ws.state is ConnectionState.LOCAL_CLOSING

    @property
    def closed(self) -> bool:
        """The closing handshake is over."""
        return self._ws.state is ConnectionState.CLOSED

    def can_send(self, kind: int) -> bool:
        """Whether a frame of ``kind`` may go now (a close may answer a close)."""
        state = self._ws.state
        return state is ConnectionState.OPEN or (
            kind == CLOSE and state is ConnectionState.REMOTE_CLOSING
        )

    # -- out -----------------------------------------------------------------

    def frame(self, kind: int, data: str | bytes = b"") -> bytes:
        """The bytes of one frame: a message (TEXT, BINARY), a PING or a PONG.

        A close frame has a code: :meth:`close_frame`.
        """
        if kind <= BINARY and self._plain and self._ws.state is ConnectionState.OPEN:
            # A whole message, uncompressed and unmasked (RFC 6455 section
            # 5.2): what wsproto makes of it, without its layers.  wsproto
            # keeps no state for it, as we never send a message in parts.
            payload = data if kind == BINARY else data.encode("utf-8")  # type: ignore[union-attr]
            length = len(payload)
            if length < 126:
                head = _SHORT_HEADS[kind][length]
            elif length < 0x10000:
                head = _MEDIUM_HEADS[kind] + length.to_bytes(2, "big")
            else:
                head = _LONG_HEADS[kind] + length.to_bytes(8, "big")
            return head + payload  # type: ignore[operator]
        event: Event
        if kind == TEXT:
            event = TextMessage(data=data)  # type: ignore[arg-type]
        elif kind == BINARY:
            event = BytesMessage(data=bytes(data))  # type: ignore[arg-type]
        elif kind == PING:
            event = Ping(payload=data)  # type: ignore[arg-type]
        elif kind == PONG:
            event = Pong(payload=data)  # type: ignore[arg-type]
        else:
            raise ValueError(f"not a data or ping frame: {kind}")
        return self._ws.send(event)

    def close_frame(self, code: int, reason: str = "") -> bytes:
        """The bytes of a close frame."""
        self._ready = False
        return self._ws.send(CloseConnection(code=code, reason=reason))

    # -- in ------------------------------------------------------------------

    def message_of(self, data: bytes) -> str | bytes | None:
        """The message ``data`` is, if it is one whole, small, ordinary message.

        That is: one final text or binary frame of at most 65535 bytes
        (within the size limit), masked, with no RSV bit, and nothing else;
        no extension; no message half received; the connection open.  Such
        a frame leaves wsproto as it found it, so it is parsed here, in a
        few steps, instead of through wsproto's layers.  None for anything
        else, which then goes to :meth:`receive_data` as usual (a text
        message that is not UTF-8 included: wsproto makes it a 1007).
        """
        size = len(data)
        if not self._ready or size < 6 or size > 0x10008:
            return None
        first = data[0]
        if first != 0x81 and first != 0x82:
            return None
        length = data[1] - 0x80  # the mask bit must be set (section 5.3)
        if length < 126:
            start = 6
        elif length == 126 and size > 8:
            length = (data[2] << 8) | data[3]
            start = 8
            if length < 126:
                return None  # not the shortest form: wsproto's error
        else:
            return None
        if length < 0 or start + length != size or length > self._max_size:
            return None
        # Unmask: XOR with the key repeated over the payload (section 5.3).
        key = data[start - 4 : start] * ((length >> 2) + 1)
        payload = (
            int.from_bytes(data[start:], "little")
            ^ int.from_bytes(key[:length], "little")
        ).to_bytes(length, "little")
        if first == 0x82:
            return payload
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            return None

    def receive_data(self, data: bytes) -> None:
        """Take bytes from the client; ``b""`` says it closed its side.

        A frame whose header declares more than the message limit ends what
        is read: :meth:`events` gives the frames before it, then
        :data:`WS_TOO_BIG`, and later bytes are dropped.
        """
        self._ready = False
        if not data:
            self._ws.receive_data(None)
        elif self._refused is False:
            at = self._frame_sizes.too_big_at(data)
            if at >= 0:
                data = data[:at]
                self._refused = True
            self._pending = data

    @property
    def wants_data(self) -> bool:
        """All received bytes have gone into events."""
        return not self._pending

    def events(self) -> Iterator[WSEvent]:
        """Whole messages and control events from the next slice of what came.

        With deflate, received bytes go to wsproto a slice at a time, one
        slice a call, so that the caller can stop between slices (once the
        connection is closed, say).  Call again while :attr:`wants_data` is
        False.
        """
        ws = self._ws
        pending = self._pending
        if pending:
            self._pending = pending[self._step :]
            ws.receive_data(pending[: self._step])
        received: Iterator[Any] = ws.events()
        for event in received:
            kind = type(event)
            if kind is TextMessage or kind is BytesMessage:
                if ws.state is not ConnectionState.OPEN:
                    # We are closing: RFC 6455 section 1.4 lets us drop it.
                    continue
                chunk = event.data
                if type(chunk) is str and not chunk.isascii():
                    size = self._size + len(chunk.encode("utf-8"))
                else:
                    size = self._size + len(chunk)
                if size > self._max_size:
                    self._parts, self._size = [], 0
                    yield WS_TOO_BIG
                    continue
                self._parts.append(chunk)
                self._size = size
                if not event.message_finished:
                    continue
                parts = self._parts
                self._parts, self._size = [], 0
                if kind is TextMessage:
                    yield WSMessage("".join(parts))  # type: ignore[arg-type]
                else:
                    yield WSMessage(b"".join(parts))  # type: ignore[arg-type]
            elif kind is Ping:
                if ws.state is ConnectionState.OPEN:
                    yield WSPing(event.payload)
            elif kind is Pong:
                yield WSPong(event.payload)
            elif kind is CloseConnection:
                self._plain = False  # wsproto reads nothing more after it
                yield WSClose(event.code, event.reason or "")
        if self._refused and not self._pending:
            self._refused = None
            self._parts, self._size = [], 0
            yield WS_TOO_BIG
        self._ready = (
            self._plain
            and not self._pending
            and self._refused is False
            and ws.state is ConnectionState.OPEN
            and self._frame_sizes.between_messages
        )
