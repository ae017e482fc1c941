"""The HTTP/2 protocol layer alone (sans-io): no socket, no trio."""

from __future__ import annotations

from hyperframe.frame import HeadersFrame, SettingsFrame

from triasgi._events import Request
from triasgi._protocol._h2 import PREFACE, H2Limits, H2Protocol

# Hand-made HPACK blocks (RFC 7541), so that a block's bytes can mean
# different fields as the table changes.
_STATIC = b"\x82\x84\x86"  # :method GET, :path /, :scheme http
_AUTHORITY = b"\x41\x0cexample.test"  # literal, indexed: :authority
_RESIZE = b"\x20\x3f\xe1\x1f"  # table size 0 (emptied), then 4096 again


def _value(letter: bytes) -> bytes:
    return b"\x40\x07x-value\x01" + letter  # literal, indexed: x-value


def _headers(stream_id: int, block: bytes) -> bytes:
    frame = HeadersFrame(stream_id)
    frame.data = block
    frame.flags.add("END_HEADERS")
    frame.flags.add("END_STREAM")
    return frame.serialize()


def test_a_remembered_block_is_forgotten_when_the_table_changes():
    protocol = H2Protocol(H2Limits())
    protocol.start()
    protocol.data_to_send()
    # Table after the first: [62 x-value: a, 63 :authority].
    first = _STATIC + _AUTHORITY + _value(b"a")
    indexed = _STATIC + b"\xbf\xbe"  # 63 then 62: indexes only
    # Emptied and filled again: [62 x-value: b, 63 :authority].
    refill = _RESIZE + _STATIC + _AUTHORITY + _value(b"b")
    data = PREFACE + SettingsFrame(0).serialize()
    for stream_id, block in enumerate([first, indexed, refill, indexed], start=0):
        data += _headers(2 * stream_id + 1, block)
    events = protocol.receive_data(data, 0.0)
    values = [
        dict(event.headers)[b"x-value"] for event in events if type(event) is Request
    ]
    # The second indexed block has the same bytes as the first, and means b.
    assert values == [b"a", b"a", b"b", b"b"]
