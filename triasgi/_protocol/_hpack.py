"""HPACK that does not repeat itself: blocks of indexes only, kept while the table is.

Decoding the request head is most of what an HTTP/2 request costs, and
encoding the response head much of the rest (docs/performance.md).  A block
made only of indexed fields (RFC 7541 section 6.1) neither adds to the
dynamic table nor resizes it, so it means the same fields for as long as the
table is unchanged: a client that sends the same request again sends the
same bytes, and the same response head encodes to the same bytes.  Any other
block may change the table, and forgets what was kept.
"""

from __future__ import annotations

from typing import Any

import hpack

# Header blocks each side keeps.
_REMEMBERED_BLOCKS = 32


def _all_indexed(block: bytes) -> bool:
    """Whether an HPACK block is only indexed fields (RFC 7541 section 6.1).

    Such a block neither adds to the dynamic table nor resizes it: it means
    the same for as long as the table is unchanged.
    """
    i = 0
    size = len(block)
    while i < size:
        byte = block[i]
        if not byte & 0x80:
            return False
        i += 1
        if byte & 0x7F == 0x7F:  # the index goes on in the next bytes
            while i < size and block[i] & 0x80:
                i += 1
            i += 1
    return i == size


class RepeatingDecoder(hpack.Decoder):
    """HPACK's decoder, which remembers blocks made only of indexed fields.

    A client that sends the same request again (a load generator, and most of
    a browser's requests to one site) sends the same bytes, which decode to
    the same fields while the table is unchanged.  Any other block may change
    the table, and forgets what was remembered.  Decoding is most of what an
    HTTP/2 request costs (docs/performance.md).
    """

    def __init__(self) -> None:
        super().__init__()
        self._known: dict[bytes, list[Any]] = {}

    def decode(self, data: bytes, raw: bool = False) -> Any:
        known = self._known
        block = bytes(data)
        if raw:
            headers = known.get(block)
            if headers is not None:
                return list(headers)
        headers = list(super().decode(data, raw))
        if raw and _all_indexed(block):
            if len(known) >= _REMEMBERED_BLOCKS:
                known.clear()
            known[block] = headers
            return list(headers)
        known.clear()
        return headers


class RepeatingEncoder(hpack.Encoder):
    """HPACK's encoder, which remembers response heads it encoded as indexes only.

    The same fields encode to the same indexed-only bytes while the table is
    unchanged; an encoding that adds to the table, or a resize the client
    asked for, forgets what was remembered.
    """

    def __init__(self) -> None:
        super().__init__()
        self._known: dict[tuple[Any, ...], bytes] = {}

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        known = self._known
        if self.table_size_changes:
            known.clear()
        key = tuple(headers)
        block = known.get(key)
        if block is not None:
            return block
        block = super().encode(key, huffman)
        if _all_indexed(block):
            if len(known) >= _REMEMBERED_BLOCKS:
                known.clear()
            known[key] = block
        else:
            known.clear()
        return block
