"""The only process: serve until SIGINT or SIGTERM (no supervisor)."""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
from typing import Any, NoReturn

import trio

from .._config import Config
from .._errors import StartupError
from .._serve._listeners import describe_address
from .._serve._server import CANCEL_GRACE, STUCK_MESSAGE, Server
from .._types import ASGIApp

logger = logging.getLogger("triasgi.error")

#: The exit status of a process that left a task of the app running.
EXIT_ABANDONED = 1


def run_config(app: ASGIApp, config: Config) -> None:
    """Run the server under trio with signal handling; logging is set up."""
    trio.run(_serve_until_signalled, app, config)


async def _serve_until_signalled(app: ASGIApp, config: Config) -> None:
    server = Server(app, config, on_stuck=abandon)
    failure: StartupError | None = None
    stopped = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            started = trio.Event()
            nursery.start_soon(
                _watch_signals, signals, server, started, nursery.cancel_scope, stopped
            )
            try:
                await nursery.start(
                    serve_then_stop, server, nursery.cancel_scope, stopped
                )
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
    stopped: trio.Event,
    *,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``server``, then cancel ``cancel_scope``: its watchers end with it.

    ``stopped`` is set when the server's run is over, however it ended.
    """
    try:
        await server.run(task_status=task_status)
    finally:
        stopped.set()
    cancel_scope.cancel()


async def stop_at_once(
    server: Server, cancel_scope: trio.CancelScope, stopped: trio.Event
) -> None:
    """Cancel everything; leave the process if the server's run cannot end.

    The run ends within milliseconds unless a task of the app waits where
    cancellation cannot reach it: after :data:`CANCEL_GRACE` seconds that
    task is abandoned with the process (:func:`abandon`).
    """
    cancel_scope.cancel()
    with trio.CancelScope(shield=True), trio.move_on_after(CANCEL_GRACE):
        await stopped.wait()
    if not stopped.is_set():
        what = server.busy()
        logger.error(STUCK_MESSAGE, CANCEL_GRACE, what)
        abandon(what)


def abandon(what: str) -> NoReturn:
    """Leave the process at once, with a task of the app still running.

    trio.run cannot return while a task waits in a thread or a shielded
    cancel scope, and an interpreter exit would wait for it too: this is the
    one way out that keeps the promise that shutdown is bounded.
    ``os._exit`` skips the interpreter's cleanup, so the log is flushed
    first.
    """
    logger.error("Exiting now, abandoning %s.", what)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(EXIT_ABANDONED)


async def _watch_signals(
    signals: Any,
    server: Server,
    started: trio.Event,
    cancel_scope: trio.CancelScope,
    stopped: trio.Event,
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
            await stop_at_once(server, cancel_scope, stopped)
            return
