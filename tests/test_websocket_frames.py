"""The frames of an accepted WebSocket, sans-io: the paths that skip wsproto.

A whole small message in one read is parsed, and a whole message is framed,
without wsproto's layers (``WebSocketFrames.message_of`` and ``frame``).
These tests hold them to what wsproto itself makes of the same bytes, and
check that everything else is still left to wsproto, which must then be in
the state it would be in had it seen every frame.
"""

from __future__ import annotations

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError

from triasgi._events import WSClose, WSMessage
from triasgi._protocol._websocket import (
    BINARY,
    TEXT,
    WebSocketFrames,
    negotiate_deflate,
)

_MAX = 1 << 20
_SIZES = [0, 1, 3, 4, 5, 17, 125, 126, 127, 1000, 65535]


def _client() -> Connection:
    return Connection(ConnectionType.CLIENT)


def _frames(*events: Message[str] | Message[bytes] | Ping) -> bytes:
    client = _client()
    return b"".join(client.send(event) for event in events)


def _payloads() -> list[str | bytes]:
    payloads: list[str | bytes] = []
    for size in _SIZES:
        payloads.append(bytes(range(256)) * (size // 256) + bytes(range(size % 256)))
        payloads.append("x" * size)
    payloads += ["héllo wörld ✓", "😀" * 30, "é" * 62]  # 124 and 126 bytes of UTF-8
    return payloads


def _event(payload: str | bytes) -> Message[str] | Message[bytes]:
    if type(payload) is str:
        return TextMessage(data=payload)
    return BytesMessage(data=payload)  # type: ignore[arg-type]


def _slowly(frames: WebSocketFrames, data: bytes) -> list[object]:
    """What the ordinary path makes of ``data``, as comparable values."""
    frames.receive_data(data)
    events: list[object] = []
    while True:
        for event in frames.events():
            if type(event) is WSMessage:
                events.append(event.data)
            elif type(event) is WSClose:
                events.append((event.code, event.reason))
            else:
                events.append(type(event).__name__)
        if frames.wants_data:
            return events


@pytest.mark.parametrize("payload", _payloads(), ids=repr)
def test_a_whole_small_message_reads_as_wsproto_reads_it(payload):
    data = _frames(_event(payload))
    assert WebSocketFrames(None, b"", _MAX).message_of(data) == payload
    assert _slowly(WebSocketFrames(None, b"", _MAX), data) == [payload]
    assert type(WebSocketFrames(None, b"", _MAX).message_of(data)) is type(payload)


def test_wsproto_takes_over_between_messages_read_without_it():
    frames = WebSocketFrames(None, b"", _MAX)
    assert frames.message_of(_frames(TextMessage(data="one"))) == "one"
    # A message in two frames, the first of them in two reads.
    first = _frames(TextMessage(data="tw", message_finished=False))
    assert frames.message_of(first[:3]) is None
    assert _slowly(frames, first[:3]) == []
    assert _slowly(frames, first[3:]) == []
    client = _client()
    client.send(TextMessage(data="tw", message_finished=False))
    last = client.send(TextMessage(data="o"))
    # Half a message is under way: the last frame is wsproto's.
    assert frames.message_of(last) is None
    assert _slowly(frames, last) == ["two"]
    assert frames.message_of(_frames(BytesMessage(data=b"3"))) == b"3"
    assert _slowly(frames, _frames(Ping(payload=b"p"))) == ["WSPing"]
    assert frames.message_of(_frames(TextMessage(data="four"))) == "four"


def _unmasked(payload: bytes) -> bytes:
    return bytes((0x82, len(payload))) + payload


def _with_first_byte(first: int, payload: str) -> bytes:
    data = _frames(TextMessage(data=payload))
    return bytes((first,)) + data[1:]


def _long_length(payload: bytes) -> bytes:
    """A binary frame whose length takes 8 bytes although it would fit in 2."""
    key = b"\0\0\0\0"
    return b"\x82\xff" + len(payload).to_bytes(8, "big") + key + payload


def _padded_length(payload: bytes) -> bytes:
    """A binary frame whose length takes 2 bytes although it would fit in 1."""
    key = b"\0\0\0\0"
    return b"\x82\xfe" + len(payload).to_bytes(2, "big") + key + payload


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (_unmasked(b"abc"), [(1002, "server received unexpected unmasked frame")]),
        (_with_first_byte(0xC1, "rsv1"), [(1002, "Reserved bit set unexpectedly")]),
        (_with_first_byte(0x01, "not final"), []),
        (_with_first_byte(0x80, "continuation"), [(1002, "unexpected CONTINUATION")]),
        (_frames(Ping(payload=b"ping")), ["WSPing"]),
        (_frames(CloseConnection(code=1000, reason="bye")), [(1000, "bye")]),
        (
            _frames(TextMessage(data="one"), TextMessage(data="two")),
            ["one", "two"],
        ),
        (_frames(TextMessage(data="cut"))[:-1], []),
        (_frames(BytesMessage(data=b"x" * 70000)), [b"x" * 70000]),
        (
            _long_length(b"x" * 200),
            [(1002, "Payload length used 8 bytes when 2 would have sufficed")],
        ),
        (
            _padded_length(b"x" * 20),
            [(1002, "Payload length used 2 bytes when 1 would have sufficed")],
        ),
        (b"", [(1006, "")]),
    ],
    ids=[
        "unmasked",
        "rsv1",
        "not-final",
        "continuation",
        "ping",
        "close",
        "two-messages",
        "incomplete",
        "64-bit-length",
        "8-byte-length-for-200",
        "2-byte-length-for-20",
        "eof",
    ],
)
def test_anything_but_one_whole_small_message_is_left_to_wsproto(data, expected):
    assert WebSocketFrames(None, b"", _MAX).message_of(data) is None
    assert _slowly(WebSocketFrames(None, b"", _MAX), data) == expected


def test_text_that_is_not_utf8_is_left_to_wsproto_which_closes_with_1007():
    client = _client()
    data = bytearray(client.send(TextMessage(data="ab")))
    # The client masks with a key of its own: unmask, break the text, mask again.
    key = data[2:6]
    data[6] = 0xFF ^ key[0]
    frames = WebSocketFrames(None, b"", _MAX)
    assert frames.message_of(bytes(data)) is None
    ((code, _),) = _slowly(frames, bytes(data))
    assert code == 1007


def test_a_message_over_the_size_limit_is_left_to_wsproto():
    data = _frames(TextMessage(data="x" * 11))
    frames = WebSocketFrames(None, b"", 10)
    assert frames.message_of(data) is None
    assert _slowly(frames, data) == ["WSTooBig"]
    assert WebSocketFrames(None, b"", 11).message_of(data) == "x" * 11


def test_nothing_is_read_without_wsproto_once_a_close_came():
    frames = WebSocketFrames(None, b"", _MAX)
    bad = _unmasked(b"x")
    assert _slowly(frames, bad)[0][0] == 1002  # wsproto reads nothing more after it
    message = _frames(TextMessage(data="late"))
    assert frames.message_of(message) is None
    assert _slowly(frames, message) == []


def test_nothing_is_read_without_wsproto_while_we_close():
    frames = WebSocketFrames(None, b"", _MAX)
    frames.close_frame(1000)
    assert not frames.open
    message = _frames(TextMessage(data="late"))
    assert frames.message_of(message) is None
    assert _slowly(frames, message) == []  # dropped: RFC 6455 section 1.4


def test_with_permessage_deflate_every_frame_is_wsproto_s():
    extension, _ = negotiate_deflate(["permessage-deflate"])  # type: ignore[misc]
    frames = WebSocketFrames(extension, b"", _MAX)
    # Not compressed, but with an extension wsproto sees every frame.
    plain = _frames(TextMessage(data="plain"))
    assert frames.message_of(plain) is None
    assert _slowly(frames, plain) == ["plain"]
    assert frames.frame(TEXT, "hello" * 10)[0] & 0x40  # RSV1: compressed


@pytest.mark.parametrize("size", [*_SIZES, 65536, 70000])
@pytest.mark.parametrize("kind", [TEXT, BINARY])
def test_server_frames_are_the_bytes_wsproto_makes(kind, size):
    server = Connection(ConnectionType.SERVER)
    frames = WebSocketFrames(None, b"", _MAX)
    if kind == TEXT:
        text = "é" * (size // 2) + "x" * (size % 2)
        assert frames.frame(TEXT, text) == server.send(TextMessage(data=text))
    else:
        data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
        expected = server.send(BytesMessage(data=data))
        assert frames.frame(BINARY, data) == expected
        assert frames.frame(BINARY, bytearray(data)) == expected
        assert frames.frame(BINARY, memoryview(data)) == expected
        assert type(frames.frame(BINARY, memoryview(data))) is bytes


def test_no_message_is_framed_once_we_closed():
    frames = WebSocketFrames(None, b"", _MAX)
    frames.close_frame(1000)
    with pytest.raises(LocalProtocolError):
        frames.frame(TEXT, "late")
