"""run(): serve in this process until SIGINT or SIGTERM."""

from __future__ import annotations

import gc
import logging
import signal
from typing import Any

import trio

from ._config import Config
from ._logging import configure_logging
from ._server import Server, StartupError, describe_address
from ._types import ASGIApp

logger = logging.getLogger("triasgi.error")


def run(app: ASGIApp | str, config: Config | None = None, **settings: Any) -> None:
    """Serve ``app`` in this process until SIGINT or SIGTERM.

    Args:
        app: the ASGI app, or an import string such as ``"examples.hello:app"``.
        config: the settings; ``settings`` given as keywords override it.

    The first SIGINT or SIGTERM starts a graceful shutdown; a second one stops
    at once.  With ``workers`` or ``reload`` set, a supervisor serves from
    worker processes instead, as on the command line; each worker imports the
    app, so it must then be given as an import string.

    Raises:
        StartupError: the server could not bind or lifespan startup failed.
        AppImportError: ``app`` is an import string that cannot be loaded.
        ValueError: ``workers`` or ``reload`` with an app object.
    """
    config = config.replace(**settings) if config else Config(**settings)
    if (config.workers is not None or config.reload) and not isinstance(app, str):
        raise ValueError(
            "workers and reload need the app as an import string "
            "('module:attribute'), so that each worker process can import it."
        )
    configure_logging(
        config.log_level, log_format=config.log_format, log_config=config.log_config
    )
    if config.workers is not None or config.reload:
        from ._supervisor import run_supervisor

        assert isinstance(app, str)
        run_supervisor(config, app)
    elif isinstance(app, str):
        from ._importer import load_app

        run_config(load_app(app), config)
    else:
        run_config(app, config)


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
