"""Start a real server, on a socket or on in-memory streams, inside a nursery."""

from __future__ import annotations

from collections.abc import AsyncIterator
import functools
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

from .._config import Config
from .._server import Server
from .._types import ASGIApp


@asynccontextmanager
async def open_server(app: ASGIApp, **settings: Any) -> AsyncIterator[Server]:
    """Serve ``app`` on an ephemeral localhost port for the ``async with`` body.

    Keyword arguments are :class:`~triasgi.Config` settings.  Lifespan startup
    has run when the body starts; on exit the server shuts down gracefully and
    lifespan shutdown runs.

    Yields:
        The running :class:`~triasgi.Server`; ``server.url`` is its address.
    """
    settings.setdefault("port", 0)
    settings.setdefault("access_log", False)
    config = Config(**settings)
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(Server(app, config).run)
        try:
            yield server
        finally:
            server.shutdown()


@asynccontextmanager
async def open_memory_server(app: ASGIApp, **settings: Any) -> AsyncIterator[Server]:
    """Run ``app`` with no socket: connect with :func:`open_memory_connection`.

    Lifespan startup has run when the body starts; on exit the server shuts
    down gracefully.  Nothing touches the network, so ``autojump_clock``
    makes every timeout instant.
    """
    settings.setdefault("access_log", False)
    config = Config(**settings)
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(
            functools.partial(Server(app, config).run, listen=False)
        )
        try:
            yield server
        finally:
            server.shutdown()


@asynccontextmanager
async def open_memory_connection(
    server: Server,
    *,
    client: tuple[str, int] | None = ("127.0.0.1", 50000),
    lockstep: bool = False,
) -> AsyncIterator[trio.abc.Stream]:
    """Connect to ``server`` through in-memory streams, without a socket.

    The server side runs the real connection handler in a task of its own;
    the yielded stream is the client's end.  With ``lockstep=True`` there is
    no buffering between the two ends, so a side that stops reading holds up
    the other at once (for testing backpressure).  Leaving the block closes
    the client's end and waits for the server side to finish.
    """
    pair = (
        trio.testing.lockstep_stream_pair if lockstep else trio.testing.memory_stream_pair
    )
    client_stream, server_stream = pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            server.serve_stream, server_stream, client, ("127.0.0.1", 8000)
        )
        try:
            yield client_stream
        finally:
            await trio.aclose_forcefully(client_stream)
