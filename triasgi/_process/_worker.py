"""A worker process (``python -m triasgi._process._worker``) of the supervisor.

The supervisor writes the worker's settings as one JSON object on its stdin
and passes two file descriptors: the listening socket (named by the
``fd`` setting) and the write end of a pipe the worker reports on.  The
worker imports the app by its import string, serves it, and writes one line
per report:

``ready``
    lifespan startup is done and the worker is accepting connections.
``beat``
    the event loop is alive; sent every :func:`heartbeat_interval` seconds.
``retire``
    ``limit_max_requests`` was reached: please start a replacement, then stop
    me with SIGTERM.
``fail <sentence>``
    the app could not be imported or could not start; the worker exits.
``metrics <json>``
    with ``metrics`` in the settings: what the worker has counted
    (``_metrics.py``), after each ``beat`` and once more when it stops.

Signals: SIGTERM starts a graceful shutdown, bounded as in a single process:
a task of the app that cancellation cannot reach is abandoned with the
process (exit status 1, see ``_single.abandon``).  SIGINT is left to the
supervisor (a terminal sends it to the whole process group), which answers
it by sending SIGTERM, or SIGKILL the second time.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import trio

from .._config import Config
from .._errors import StartupError
from .._importer import AppImportError, load_app
from .._logging import LogConfigError, TextFormatter, configure_logging
from .._metrics import Metrics
from .._serve._listeners import bind_targets
from .._serve._server import Server
from ._single import abandon, freeze_startup_objects, serve_then_stop, stop_at_once

logger = logging.getLogger("triasgi.error")

#: The exit status of a worker that reported ``fail``.
EXIT_STARTUP_FAILED = 3

# On a graceful stop, seconds an idle connection waits for a request after we
# closed our copy of the shared listening socket: a client whose connection we
# accepted just before, or whose next request is on its way, is served (with
# connection: close) rather than finding its connection closed.  The other
# workers keep accepting meanwhile.
FIRST_REQUEST_GRACE = 0.5


def heartbeat_interval(config: Config) -> float:
    """Seconds between two heartbeats: several per health-check timeout."""
    return min(1.0, config.timeout_worker_healthcheck / 5)


def use_pid_log_format() -> None:
    """Show the process id on each log line: there are several processes.

    Only the text format is changed; a format the user chose (JSON, a
    logging configuration file) is left alone.
    """
    for handler in logging.getLogger("triasgi").handlers:
        formatter = handler.formatter
        if isinstance(formatter, TextFormatter):
            handler.setFormatter(formatter.with_pid())


class _Reports:
    """The worker's end of the report pipe; failures to write are remembered."""

    def __init__(self, fd: int) -> None:
        self._stream = trio.lowlevel.FdStream(fd)
        self._lock = trio.Lock()
        self.broken = False

    async def send(self, kind: str, text: str = "") -> None:
        line = f"{kind} {' '.join(text.split())}".rstrip() + "\n"
        if self.broken:
            await trio.lowlevel.checkpoint()
            return
        async with self._lock:
            try:
                await self._stream.send_all(line.encode())
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.broken = True

    async def aclose(self) -> None:
        await self._stream.aclose()


async def _serve_worker(spec: dict[str, Any], config: Config) -> int:
    reports = _Reports(spec["report_fd"])
    try:
        return await _serve_reporting(spec, config, reports)
    finally:
        await reports.aclose()


async def _serve_reporting(
    spec: dict[str, Any], config: Config, reports: _Reports
) -> int:
    # The import runs with the signal receiver open, so a SIGTERM that
    # arrives meanwhile is queued instead of killing us half-way.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        try:
            app = load_app(
                spec["app"], factory=spec["factory"], app_dir=spec["app_dir"]
            )
        except AppImportError as exc:
            await reports.send("fail", str(exc))
            return EXIT_STARTUP_FAILED
        retire = trio.Event()
        server = Server(
            app,
            config,
            on_limit_max_requests=retire.set,
            first_request_grace=FIRST_REQUEST_GRACE,
            on_stuck=abandon,
            metrics=Metrics() if spec.get("metrics") else None,
        )
        started = trio.Event()
        stopped = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                _obey_signals, signals, server, started, nursery.cancel_scope, stopped
            )
            try:
                await nursery.start(
                    serve_then_stop, server, nursery.cancel_scope, stopped
                )
            except StartupError as exc:
                await reports.send("fail", str(exc))
                nursery.cancel_scope.cancel()
                return EXIT_STARTUP_FAILED
            started.set()
            freeze_startup_objects()
            await reports.send("ready")
            nursery.start_soon(_heartbeat, reports, server, heartbeat_interval(config))
            nursery.start_soon(_ask_to_retire, reports, retire)
    await _report_metrics(reports, server)  # the last counts
    return 0


async def _obey_signals(
    signals: AsyncIterator[int],
    server: Server,
    started: trio.Event,
    cancel_scope: trio.CancelScope,
    stopped: trio.Event,
) -> None:
    async for signum in signals:
        if signum != signal.SIGTERM:
            continue  # SIGINT: the supervisor decides, see the module docstring
        if not started.is_set():
            # Nothing accepted yet, so nothing to finish: do not make the
            # supervisor wait for a lifespan startup it no longer needs.
            logger.info("Worker stopping before it finished starting.")
            await stop_at_once(server, cancel_scope, stopped)
            return
        if not server.shutting_down:
            logger.info("Worker shutting down gracefully.")
            server.shutdown()


async def _heartbeat(reports: _Reports, server: Server, interval: float) -> None:
    while True:
        await reports.send("beat")
        await _report_metrics(reports, server)
        if reports.broken:
            # Nobody reads our reports: the supervisor is gone.
            if not server.shutting_down:
                logger.warning("The supervisor has gone away; shutting down.")
                server.shutdown()
            return
        await trio.sleep(interval)


async def _report_metrics(reports: _Reports, server: Server) -> None:
    if server.metrics is None:
        await trio.lowlevel.checkpoint()
        return
    snapshot = server.metrics_snapshot()
    await reports.send("metrics", json.dumps(snapshot, separators=(",", ":")))


async def _ask_to_retire(reports: _Reports, retire: trio.Event) -> None:
    await retire.wait()
    logger.info("Reached limit_max_requests; asking the supervisor for a replacement.")
    await reports.send("retire")


def main() -> None:
    """Entry point of a worker process; see the module docstring."""
    spec = json.loads(sys.stdin.buffer.read())
    config = Config(**spec["config"])
    try:
        configure_logging(
            config.log_level,
            log_format=config.log_format,
            log_config=config.log_config,
            warn=False,  # the supervisor has warned
            colors=config.use_colors,
        )
    except LogConfigError:
        configure_logging(config.log_level)  # the file changed since the CLI read it
    use_pid_log_format()
    # A blocked worker gets SIGABRT from the supervisor before SIGKILL: let it
    # print where it was stuck.
    faulthandler.enable()
    # Descriptors the app's own child processes must not hold open.
    listening = [where for kind, where, _ in bind_targets(config) if kind == "fd"]
    for fd in (spec["report_fd"], *listening):
        os.set_inheritable(int(fd), False)
    try:
        code = trio.run(_serve_worker, spec, config)
    except KeyboardInterrupt:
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
