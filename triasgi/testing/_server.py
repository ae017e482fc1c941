"""Start a real server, on a socket or on in-memory streams, inside a nursery."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, final

import trio
import trio.testing

from .._config import Config
from .._serve._metrics_endpoint import describe_metrics_address
from .._serve._server import Server
from .._types import Address, ASGIApp


@asynccontextmanager
async def open_nursery_unwrapped() -> AsyncIterator[trio.Nursery]:
    """A nursery whose body's own exception leaves it as itself.

    A plain nursery wraps an exception from its body in an exception group.
    The helpers below yield inside a nursery, so an ``assert`` failing in a
    test's ``async with`` block, or a :class:`~triasgi.StartupError`, would
    reach the test as a group of one; this gives it back unwrapped.
    """
    body_error: Exception | None = None
    async with trio.open_nursery() as nursery:
        try:
            yield nursery
        except Exception as exc:
            body_error = exc
    if body_error is not None:
        raise body_error


def make_config(settings: dict[str, Any]) -> Config:
    """A :class:`~triasgi.Config` from a helper's keyword arguments.

    Raises:
        TypeError: a keyword is not a setting; the message says which.
    """
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(
            f"{', '.join(map(repr, unknown))} is not a triasgi setting; the "
            f"settings are the fields of triasgi.Config."
        )
    return Config(**settings)


@final
class LiveServer:
    """A triasgi server running for a test on a real socket.

    Returned by the ``triasgi_server`` fixture and yielded by
    :func:`open_server`.

    Attributes:
        server: the running :class:`~triasgi.Server`.
    """

    def __init__(self, server: Server) -> None:
        self.server = server

    @property
    def host(self) -> str:
        """The address the server listens on, such as ``127.0.0.1``."""
        return self._address[0]

    @property
    def port(self) -> int:
        """The ephemeral TCP port the server was given."""
        return self._address[1]

    @property
    def url(self) -> str:
        """``http://host:port``, ready for any HTTP client."""
        return self.server.url

    @property
    def ws_url(self) -> str:
        """``ws://host:port``, ready for any WebSocket client."""
        return "ws" + self.server.url.removeprefix("http")

    @property
    def metrics_url(self) -> str:
        """``http://host:port/metrics``, with a ``metrics_bind`` TCP address."""
        address = self.server.metrics_address
        if address is None or address[1] is None:
            raise LookupError("The server has no metrics_bind TCP address.")
        return describe_metrics_address(address)

    @property
    def addresses(self) -> list[Address]:
        """The bound addresses, as :attr:`triasgi.Server.addresses`."""
        return self.server.addresses

    @property
    def config(self) -> Config:
        """The settings the server runs with."""
        return self.server.config

    @property
    def state(self) -> dict[str, Any]:
        """The lifespan state; each request's ``scope["state"]`` copies it."""
        return self.server.state

    @property
    def shutting_down(self) -> bool:
        """True once :meth:`shutdown` has been called."""
        return self.server.shutting_down

    def shutdown(self) -> None:
        """Begin a graceful shutdown before the test ends."""
        self.server.shutdown()

    @property
    def _address(self) -> tuple[str, int]:
        for host, port in self.server.addresses:
            if port is not None:
                return host, port
        raise LookupError("The server has no TCP address.")

    def __repr__(self) -> str:
        return f"<LiveServer {self.url}>"


@asynccontextmanager
async def open_server(app: ASGIApp, **settings: Any) -> AsyncIterator[LiveServer]:
    """Serve ``app`` on an ephemeral localhost port for the ``async with`` body.

    Lifespan startup has run when the body starts; on exit the server shuts
    down gracefully, lifespan shutdown runs, and no task or socket is left.

    Args:
        app: the ASGI application.
        **settings: :class:`~triasgi.Config` settings, such as
            ``timeout_keep_alive=1``.  ``port`` defaults to 0 (a free port)
            and ``access_log`` to False.

    Yields:
        The running server; ``server.url`` is its address.

    Raises:
        StartupError: lifespan startup failed, or the address was in use.
    """
    settings.setdefault("port", 0)
    settings.setdefault("access_log", False)
    config = make_config(settings)
    async with open_nursery_unwrapped() as nursery:
        server: Server = await nursery.start(Server(app, config).run)
        try:
            yield LiveServer(server)
        finally:
            server.shutdown()


@asynccontextmanager
async def open_memory_server(app: ASGIApp, **settings: Any) -> AsyncIterator[Server]:
    """Run ``app`` with no socket: connect with :func:`open_memory_connection`.

    Lifespan startup has run when the body starts; on exit the server shuts
    down gracefully.  Nothing touches the network, so ``autojump_clock``
    makes every timeout instant.

    Args:
        app: the ASGI application.
        **settings: :class:`~triasgi.Config` settings; ``access_log``
            defaults to False.

    Yields:
        The running :class:`~triasgi.Server`.

    Raises:
        StartupError: lifespan startup failed.
    """
    settings.setdefault("access_log", False)
    config = make_config(settings)
    async with open_nursery_unwrapped() as nursery:
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
    client: Address | None = ("127.0.0.1", 50000),
    sockname: Address | None = ("127.0.0.1", 8000),
    lockstep: bool = False,
) -> AsyncIterator[trio.abc.Stream]:
    """Connect to ``server`` through in-memory streams, without a socket.

    The server side runs the real connection handler in a task of its own;
    the yielded stream is the client's end.  Leaving the block closes the
    client's end and waits for the server side to finish.

    Args:
        server: a server from :func:`open_memory_server`.
        client: the peer address the app sees as ``scope["client"]``.
        sockname: the local address the app sees as ``scope["server"]``.
        lockstep: with True there is no buffering between the two ends, so a
            side that stops reading holds up the other at once (for testing
            backpressure).

    Yields:
        The client's end of the connection.
    """
    client_stream: trio.abc.Stream
    server_stream: trio.abc.Stream
    if lockstep:
        client_stream, server_stream = trio.testing.lockstep_stream_pair()
    else:
        client_stream, server_stream = trio.testing.memory_stream_pair()
    async with open_nursery_unwrapped() as nursery:
        nursery.start_soon(server.serve_stream, server_stream, client, sockname)
        try:
            yield client_stream
        finally:
            await trio.aclose_forcefully(client_stream)
