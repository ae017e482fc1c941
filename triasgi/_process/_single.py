"""The only process: serve until SIGINT or SIGTERM (no supervisor)."""

from __future__ import annotations

import gc
import logging
import signal
from typing import Any

import trio

from .._config import Config
from .._errors import StartupError
from .._serve._listeners import describe_address
from .._serve._server import Server
from .._types import ASGIApp

logger = logging.getLogger("triasgi.error")


def run_config(app: ASGIApp, config: Config) -> None:
    """Run the server under trio with signal handling; logging is set up."""
    trio.run(_serve_until_signalled, app, config)


async def _serve_until_signalled(app: ASGIApp, config: Config) -> None:
    server = Server(app, config)
    failure: StartupError | None = None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            started = trio.Event()
            nursery.start_soon(
                _watch_signals, signals, server, started, nursery.cancel_scope
            )
            try:
                await nursery.start(serve_then_stop, server, nursery.cancel_scope)
            except StartupError as exc:
                failure = exc
                nursery.cancel_scope.cancel()
            else:
                started.set()
                freeze_startup_objects()
                for address in server.addresses:
                    logger.info(
                        "Listening on %s (press CTRL+C to quit)",
                        describe_address(address, config),
                    )
    if failure is not None:
        raise failure


def freeze_startup_objects() -> None:
    """Keep what startup created (modules, the app) out of garbage collections.

    For a process the CLI owns, once the server listens.  A full collection
    then scans only what serving allocates: on the hello benchmark its pause
    drops from about 20 ms to about 1 ms, which was most of the p99 latency
    (docs/performance.md).  ``serve()`` leaves the embedding program's
    collector alone.
    """
    gc.freeze()


async def serve_then_stop(
    server: Server,
    cancel_scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``server``, then cancel ``cancel_scope``: its watchers end with it."""
    await server.run(task_status=task_status)
    cancel_scope.cancel()


async def _watch_signals(
    signals: Any, server: Server, started: trio.Event, cancel_scope: trio.CancelScope
) -> None:
    async for signum in signals:
        name = signal.Signals(signum).name
        if started.is_set() and not server.shutting_down:
            logger.info(
                "%s received: shutting down gracefully "
                "(send it again to stop at once).",
                name,
            )
            server.shutdown()
        else:
            logger.warning("%s received: stopping at once.", name)
            cancel_scope.cancel()
            return
