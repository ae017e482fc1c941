"""The edge of a connection: what comes before HTTP (a PROXY preamble)."""

from __future__ import annotations

from typing import Any, final

import trio

from .._protocol._proxy import (
    PREAMBLE_MAX,
    ProxyPreamble,
    ProxyProtocolError,
    parse_proxy_preamble,
)


@final
class PrefixedStream(trio.abc.Stream):
    """A stream that first gives back bytes already read from it."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self.stream = stream
        self._prefix = prefix

    def __getattr__(self, name: str) -> Any:
        # ``socket`` and ``send_eof`` of the wrapped stream, where it has them.
        return getattr(self.stream, name)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            await trio.lowlevel.checkpoint()
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_eof()  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        await self.stream.aclose()


async def read_proxy_preamble(
    stream: trio.abc.Stream,
) -> tuple[ProxyPreamble, trio.abc.Stream]:
    """Read a PROXY preamble from ``stream``; the caller bounds the time.

    Returns:
        The preamble, and a stream that gives the bytes after it.

    Raises:
        ProxyProtocolError: the preamble is malformed or the peer closed first.
    """
    data = b""
    while True:
        chunk = await stream.receive_some(PREAMBLE_MAX)
        if not chunk:
            raise ProxyProtocolError("the peer closed before a full PROXY preamble")
        data += chunk
        preamble = parse_proxy_preamble(data)
        if preamble is not None:
            rest = data[preamble.length :]
            return preamble, PrefixedStream(stream, rest) if rest else stream
