"""The size limit on a whole request head (``h11_max_incomplete_event_size``).

A head is refused with 431 when it is over the limit, whether it arrives in
pieces or, as here, all in one read.
"""

from __future__ import annotations

import pytest
from conftest import read_until_closed

from triasgi.testing import open_memory_connection, open_memory_server

# The whole module runs against both request parsers (--http).
pytestmark = pytest.mark.usefixtures("http_backend")


async def hello(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200})
    await send({"type": "http.response.body", "body": b"hello"})


def head_of_size(size: int) -> bytes:
    """A request head of ``size`` bytes, not counting its final empty line.

    Every field is small and there are few, so only the size of the whole
    can be over a limit.
    """
    head = b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n"
    i = 0
    while size - len(head) > 1100:
        head += b"x-filler-%03d: %s\r\n" % (i, b"v" * 1000)
        i += 1
    last = size - len(head) - len(b"x-last: \r\n")
    head += b"x-last: %s\r\n" % (b"v" * last)
    assert len(head) == size
    return head + b"\r\n"


def status_of(data: bytes) -> int:
    assert data.startswith(b"HTTP/1.1 "), data[:100]
    return int(data[9:12])


async def answer_to(head: bytes, **settings) -> bytes:
    async with (
        open_memory_server(hello, **settings) as server,
        open_memory_connection(server) as stream,
    ):
        await stream.send_all(head)  # in one piece: one read has it all
        return await read_until_closed(stream)


@pytest.mark.parametrize("over", [1, 100, 4096])
async def test_whole_head_over_the_limit_in_one_read_gets_431(over, autojump_clock):
    data = await answer_to(
        head_of_size(4096 + over), h11_max_incomplete_event_size=4096
    )
    assert status_of(data) == 431
    assert b"connection: close" in data


async def test_whole_head_at_the_limit_is_served(autojump_clock):
    data = await answer_to(head_of_size(4096), h11_max_incomplete_event_size=4096)
    assert status_of(data) == 200
    assert data.endswith(b"hello")


async def test_default_limit_is_16_kib(autojump_clock):
    assert status_of(await answer_to(head_of_size(16 * 1024))) == 200
    assert status_of(await answer_to(head_of_size(16 * 1024 + 1))) == 431
