"""The pytest plugin: ``triasgi_server`` and ``triasgi_client`` (on pytest-trio).

Registered by the ``pytest11`` entry point, so it loads in every pytest run
of a project that has triasgi installed: it imports neither httpx nor
pytest-trio itself, and a fixture that needs them says so when used.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

import pytest
import trio

from .._types import ASGIApp
from ._server import LiveServer, open_server

if TYPE_CHECKING:
    from ._client import MemoryClient


class ServerFactory(Protocol):
    """The type of the ``triasgi_server`` fixture, for annotating tests."""

    async def __call__(self, app: ASGIApp, **settings: Any) -> LiveServer:
        """Start ``app`` on an ephemeral port; see :func:`open_server`."""
        ...


class ClientFactory(Protocol):
    """The type of the ``triasgi_client`` fixture, for annotating tests."""

    async def __call__(
        self, app: ASGIApp, *, base_url: str = ..., **settings: Any
    ) -> MemoryClient:
        """Start ``app`` in memory and connect a client; see :func:`open_client`."""
        ...


async def _serve_until(
    done: trio.Event,
    app: ASGIApp,
    settings: dict[str, Any],
    *,
    task_status: trio.TaskStatus[LiveServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with open_server(app, **settings) as server:
        task_status.started(server)
        await done.wait()


async def _client_until(
    done: trio.Event,
    app: ASGIApp,
    settings: dict[str, Any],
    *,
    task_status: trio.TaskStatus[MemoryClient] = trio.TASK_STATUS_IGNORED,
) -> None:
    from ._client import open_client

    async with open_client(app, **settings) as client:
        task_status.started(client)
        await done.wait()


@pytest.fixture
async def triasgi_server() -> AsyncIterator[ServerFactory]:
    """Start real triasgi servers on ephemeral ports for one test.

    ``server = await triasgi_server(app, **settings)`` runs lifespan startup
    and returns a :class:`LiveServer` (``.url``, ``.ws_url``, ``.host``,
    ``.port``, ``.state``).  Keyword arguments are
    :class:`~triasgi.Config` settings.  The servers run in the fixture's
    nursery; when the test ends each shuts down gracefully and lifespan
    shutdown runs.
    """
    done = trio.Event()
    async with trio.open_nursery() as nursery:

        async def start(app: ASGIApp, **settings: Any) -> LiveServer:
            server: LiveServer = await nursery.start(_serve_until, done, app, settings)
            return server

        yield start
        done.set()


@pytest.fixture
async def triasgi_client() -> AsyncIterator[ClientFactory]:
    """Connect httpx clients to apps served in memory, for one test.

    ``client = await triasgi_client(app, **settings)`` runs lifespan startup
    and returns a :class:`MemoryClient`, an :class:`httpx.AsyncClient` whose
    connections are in-memory streams into the real connection handler, so
    ``autojump_clock`` makes the server's timeouts instant.  Keyword
    arguments are :class:`~triasgi.Config` settings, plus ``base_url``.
    When the test ends the clients close and the servers shut down
    gracefully.
    """
    done = trio.Event()
    async with trio.open_nursery() as nursery:

        async def start(app: ASGIApp, **settings: Any) -> MemoryClient:
            client: MemoryClient = await nursery.start(
                _client_until, done, app, settings
            )
            return client

        yield start
        done.set()
