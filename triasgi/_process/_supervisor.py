"""The supervisor: owns the listening socket and keeps worker processes serving.

``triasgi app:app --workers N`` (or ``--reload``) runs this program instead of
serving in-process.  It binds the socket once and starts each worker as
``python -m triasgi._process._worker`` with :func:`trio.run_process`, passing the
socket by descriptor inheritance and the settings as JSON on the worker's
stdin.  Each worker reports on a pipe (see :mod:`triasgi._process._worker`):
``ready``, a ``beat`` every so often, ``retire`` and ``fail <sentence>``,
and with ``metrics_bind`` its ``metrics``, which the supervisor sums and
serves (``_metrics_sum.py``).

Everything runs under one nursery::

    root nursery
    ├── signal loop          INT/TERM stop, HUP reload, TTIN/TTOU scale
    ├── metrics endpoint     --metrics-bind only
    ├── worker task, each    the process, and the reader of its reports
    └── operations nursery   cancelled when the stop begins
        ├── the first workers, started together
        ├── keeper           starts workers until there are enough
        ├── health check     kills workers whose heartbeat stopped
        ├── reloads and retirements, one at a time (roll lock)
        └── file watcher     --reload only
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import final

import trio

from .._config import Config
from .._serve._listeners import (
    bind,
    describe_address,
    remove_socket_file,
    sockname,
    unix_paths,
)
from .._serve._metrics_endpoint import MetricsEndpoint
from .._serve._server import CANCEL_GRACE
from ._children import WorkerProcess, backoff, describe_exit, kill_at_once
from ._metrics_sum import MetricsSum
from ._reload import watch_files
from ._worker import FIRST_REQUEST_GRACE, heartbeat_interval, use_pid_log_format

logger = logging.getLogger("triasgi.error")

_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
)
# A worker that dies sooner than this after it started counts towards a
# crash loop, and the next start waits longer and longer.
_QUICK_CRASH_SECONDS = 10.0
# Between SIGABRT (which makes a worker print its stack) and SIGKILL.
_ABORT_GRACE_SECONDS = 1.0
# Time a stopping worker gets beyond its own shutdown timeouts: its first
# request grace, and twice CANCEL_GRACE (connections, then the lifespan task)
# before it abandons what the app left running, with a second to spare.
_STOP_MARGIN_SECONDS = FIRST_REQUEST_GRACE + 2 * CANCEL_GRACE + 1.0


class SupervisorError(Exception):
    """The supervisor gave up: the workers could not start.

    The message is one sentence fit to show a user (usually the worker's own).
    """


def run_supervisor(
    config: Config, app: str, *, app_dir: str | None = ".", factory: bool = False
) -> None:
    """Serve ``app`` from worker processes until SIGINT or SIGTERM.

    Args:
        config: the settings; ``workers`` (or ``reload``) is set.
        app: the app's import string; each worker imports it.
        app_dir: the directory the workers import it from.
        factory: the import string names an app factory.

    Raises:
        StartupError: the socket could not be bound.
        SupervisorError: the workers could not start the app.
    """
    use_pid_log_format()
    if config.reload:
        try:
            import watchfiles  # noqa: F401
        except ImportError:
            raise SupervisorError(
                "--reload needs the watchfiles package: pip install 'triasgi[reload]'."
            ) from None
    app_dir = os.path.abspath(app_dir) if app_dir is not None else None
    supervisor = Supervisor(config, app, app_dir=app_dir, factory=factory)
    trio.run(supervisor.run)


@final
class Supervisor:
    """Keeps ``workers`` processes serving on the sockets it bound once."""

    def __init__(
        self, config: Config, app: str, *, app_dir: str | None, factory: bool
    ) -> None:
        self._config = config
        self._app = app
        self._app_dir = app_dir
        self._factory = factory
        self._target = config.workers or 1
        self._workers: list[WorkerProcess] = []
        self._worker_config = config
        self._fds: tuple[int, ...] = ()
        self._stopping = False
        self._stop_requested = trio.Event()
        self._watch_stop = trio.Event()
        self._failure: str | None = None
        self._crash_streak = 0
        self._wanted = trio.Event()
        self._roll_lock = trio.Lock()
        # --reload: a new worker failed to start; wait for the next edit.
        self._waiting_for_change = False
        self._root: trio.Nursery | None = None
        self._listeners: list[trio.SocketListener] = []
        self._ops: trio.Nursery | None = None
        # Workers report metrics only with metrics_bind; counting costs nothing.
        self._metrics = MetricsSum(self._workers)

    # -- the program ---------------------------------------------------------

    async def run(self) -> None:
        """Bind, start the workers, supervise them until stopped.

        Raises:
            StartupError: the socket could not be bound.
            SupervisorError: the workers could not start.
        """
        config = self._config
        activated = _systemd_socket()
        if (
            activated is not None
            and config.fd is None
            and not (config.uds or config.bind)
        ):
            logger.info("Using the socket passed by systemd (fd %d).", activated)
            config = config.replace(fd=activated)
        listeners = self._listeners = bind(config)
        endpoint: MetricsEndpoint | None = None
        try:
            self._fds = tuple(listener.socket.fileno() for listener in listeners)
            self._worker_config = config.replace(
                bind=[f"fd://{fd}" for fd in self._fds],
                fd=None,
                uds=None,
                workers=None,
                reload=False,
                metrics_bind=None,  # the workers report; we serve
            )
            if config.metrics_bind is not None:
                endpoint = MetricsEndpoint(
                    config.metrics_bind, config.backlog, self._metrics.snapshot
                )
            for listener in listeners:
                logger.info(
                    "Listening on %s (press CTRL+C to quit)",
                    describe_address(sockname(listener.socket), config),
                )
            with trio.open_signal_receiver(*_SIGNALS) as signals:
                async with trio.open_nursery() as root:
                    self._root = root
                    if endpoint is not None:
                        root.start_soon(endpoint.run)
                    await self._supervise(signals)
                    root.cancel_scope.cancel()  # ends the signal loop
        finally:
            for listener in listeners:
                listener.socket.close()
            if endpoint is not None:
                endpoint.close_socket()
            for path in unix_paths(config):
                remove_socket_file(path)
        if self._failure is not None:
            raise SupervisorError(self._failure)
        logger.info("Supervisor stopped.")

    async def _supervise(self, signals: AsyncIterator[int]) -> None:
        assert self._root is not None
        async with trio.open_nursery() as ops:
            self._ops = ops
            self._root.start_soon(self._handle_signals, signals)
            ops.start_soon(self._check_health)
            ops.start_soon(self._start, ops)
            await self._stop_requested.wait()
            ops.cancel_scope.cancel()
        # No worker is started any more.  The workers hold their own copies of
        # the socket: closing ours lets it close, so that new clients are
        # refused rather than left waiting, as soon as the last worker stops.
        for listener in self._listeners:
            listener.socket.close()
        await self._stop_workers()

    def _request_stop(self) -> None:
        self._stopping = True
        self._stop_requested.set()
        # Lets the file watcher's thread return at once (_reload.py).
        self._watch_stop.set()

    def _fail(self, message: str) -> None:
        if self._failure is None:
            self._failure = message
            logger.error("%s", message)
            logger.error("A worker could not start the app; stopping.")
        self._request_stop()

    # -- starting workers ----------------------------------------------------

    async def _start(self, ops: trio.Nursery) -> None:
        """Start the first workers, then keep their number and watch files."""
        await self._start_first_workers()
        ops.start_soon(self._keep_workers)
        if self._config.reload:
            ops.start_soon(watch_files, self._config, self._watch_stop, self._reload)

    async def _start_first_workers(self) -> None:
        async def start_one() -> None:
            result = await self._start_worker()
            if isinstance(result, str):
                if self._config.reload:
                    logger.error("%s", result)
                    logger.info("Waiting for a file change to try again.")
                    self._waiting_for_change = True
                else:
                    self._fail(result)

        async with trio.open_nursery() as nursery:
            for _ in range(self._target):
                nursery.start_soon(start_one)
        if not self._stopping and not self._waiting_for_change:
            logger.info("%d worker(s) serving.", self._active_count())

    async def _start_worker(self) -> WorkerProcess | str:
        """Start one worker and wait until it serves.

        Returns:
            The serving worker, or the sentence saying why it could not start.
        """
        assert self._root is not None
        worker = WorkerProcess()
        try:
            await self._root.start(self._run_worker, worker)
        except OSError as exc:
            return f"Could not start a worker process: {exc.strerror or exc}."
        limit = (
            self._config.timeout_lifespan_startup
            + self._config.timeout_worker_healthcheck
        )
        with trio.move_on_after(limit):
            await worker.settled.wait()
        if worker.ready.is_set():
            return worker
        if not worker.exited.is_set():
            worker.kill()
            return f"A new worker did not become ready within {limit:g} seconds."
        if worker.failure:
            return worker.failure
        assert worker.process is not None
        assert worker.process.returncode is not None
        return (
            f"A new worker exited before it was ready "
            f"({describe_exit(worker.process.returncode)})."
        )

    async def _run_worker(
        self, worker: WorkerProcess, *, task_status: trio.TaskStatus[None]
    ) -> None:
        """Run one worker process and read its reports until it exits."""
        read_fd, write_fd = os.pipe()
        reports = trio.lowlevel.FdStream(read_fd)
        spec = {
            "app": self._app,
            "app_dir": self._app_dir,
            "factory": self._factory,
            "report_fd": write_fd,
            "config": dataclasses.asdict(self._worker_config),
            "metrics": self._config.metrics_bind is not None,
        }
        try:
            async with trio.open_nursery() as nursery:
                try:
                    process: trio.Process = await nursery.start(
                        functools.partial(
                            trio.run_process,
                            [sys.executable, "-m", "triasgi._process._worker"],
                            stdin=json.dumps(spec).encode(),
                            pass_fds=(*self._fds, write_fd),
                            check=False,
                            deliver_cancel=kill_at_once,
                        )
                    )
                finally:
                    os.close(write_fd)
                worker.process = process
                worker.started_at = worker.last_beat = trio.current_time()
                self._workers.append(worker)
                logger.info("Started worker pid %d.", process.pid)
                nursery.start_soon(self._read_reports, worker, reports)
                task_status.started()
                await process.wait()
                # Reports written just before the exit are still in the pipe.
                with trio.move_on_after(1):
                    await worker.reports_done.wait()
                nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(reports)
            if worker in self._workers:
                self._workers.remove(worker)
            self._metrics.exited(worker)
            worker.exited.set()
            worker.settled.set()
        self._worker_exited(worker)

    async def _read_reports(
        self, worker: WorkerProcess, reports: trio.abc.ReceiveStream
    ) -> None:
        pending = b""
        try:
            async for chunk in reports:
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    self._on_report(worker, line.decode("utf-8", "replace"))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            worker.reports_done.set()

    def _on_report(self, worker: WorkerProcess, line: str) -> None:
        kind, _, text = line.partition(" ")
        now = trio.current_time()
        if kind == "beat":
            worker.last_beat = now
        elif kind == "ready":
            worker.last_beat = now
            worker.ready.set()
            worker.settled.set()
            logger.info("Worker pid %d is ready.", worker.pid)
        elif kind == "fail":
            worker.failure = text
        elif kind == "metrics":
            self._metrics.report(worker, text)
        elif kind == "retire":
            if not self._stopping and worker.active and not worker.retiring:
                worker.retiring = True
                assert self._ops is not None
                self._ops.start_soon(self._retire, worker)
        else:
            logger.debug("Unknown report from worker pid %d: %r", worker.pid, line)

    def _worker_exited(self, worker: WorkerProcess) -> None:
        process = worker.process
        if process is None or process.returncode is None:
            return
        code = process.returncode
        if worker.stop_requested or self._stopping:
            status = describe_exit(code, expected=True)
            level = logging.INFO if code in (0, -signal.SIGTERM) else logging.WARNING
            logger.log(level, "Worker pid %d stopped (%s).", worker.pid, status)
            return
        if not worker.ready.is_set():
            return  # _start_worker reports it
        self._metrics.restarted("unresponsive" if worker.health_killed else "died")
        if worker.health_killed:
            status = describe_exit(code, expected=True)
            logger.warning(
                "Worker pid %d was stopped for failing its health check (%s); "
                "starting a replacement.",
                worker.pid,
                status,
            )
        elif code == 0:
            logger.warning(
                "Worker pid %d left without being asked to (exit code 0); "
                "starting a replacement.",
                worker.pid,
            )
        else:
            logger.warning(
                "Worker pid %d died unexpectedly (%s); starting a replacement.",
                worker.pid,
                describe_exit(code),
            )
        if trio.current_time() - worker.started_at < _QUICK_CRASH_SECONDS:
            self._crash_streak += 1
        else:
            self._crash_streak = 0
        self._wanted.set()

    def _active_count(self) -> int:
        return sum(1 for worker in self._workers if worker.active)

    def _missing(self) -> bool:
        return (
            not self._stopping
            and not self._waiting_for_change
            and self._active_count() < self._target
        )

    async def _keep_workers(self) -> None:
        """Start workers whenever fewer than wanted are running, with backoff."""
        while True:
            await self._wanted.wait()
            self._wanted = trio.Event()
            while self._missing():
                delay = backoff(self._crash_streak)
                if delay:
                    logger.warning(
                        "Workers keep exiting soon after they start (%d times in "
                        "a row); waiting %g seconds before starting another.",
                        self._crash_streak,
                        delay,
                    )
                    await trio.sleep(delay)
                    if not self._missing():
                        break
                result = await self._start_worker()
                if isinstance(result, str):
                    self._crash_streak += 1
                    logger.error("A new worker could not start: %s", result)
                    if self._config.reload:
                        logger.info("Waiting for a file change to try again.")
                        self._waiting_for_change = True

    # -- rolling restarts ----------------------------------------------------

    async def _reload(self, why: str) -> None:
        """Replace every worker, starting each new one before stopping an old one."""
        async with self._roll_lock:
            if self._stopping:
                return
            self._waiting_for_change = False
            self._crash_streak = 0
            old = [worker for worker in self._workers if worker.active]
            if old:
                logger.info(
                    "%s: replacing %d worker(s), each new one before an old one stops.",
                    why,
                    len(old),
                )
            for worker in old:
                if not worker.active:
                    continue  # it died meanwhile and the keeper replaced it
                result = await self._start_worker()
                if isinstance(result, str):
                    logger.error(
                        "Reload aborted, the running workers keep serving: %s",
                        result,
                    )
                    if self._config.reload:
                        logger.info("Waiting for a file change to try again.")
                        self._waiting_for_change = True
                    self._wanted.set()
                    return
                self._stop_bounded(worker)
                self._metrics.restarted("reload")
            if old:
                logger.info("Reload complete.")
            self._wanted.set()

    async def _retire(self, worker: WorkerProcess) -> None:
        """A worker reached limit_max_requests: replace it, then stop it."""
        async with self._roll_lock:
            if not worker.active:
                return
            result = await self._start_worker()
            if isinstance(result, str):
                logger.error(
                    "Worker pid %d reached limit_max_requests but its replacement "
                    "could not start, so it keeps serving: %s",
                    worker.pid,
                    result,
                )
                return
            logger.info(
                "Worker pid %d reached limit_max_requests; its replacement is "
                "ready, stopping it.",
                worker.pid,
            )
            self._stop_bounded(worker)
            self._metrics.restarted("max_requests")
            self._wanted.set()

    # -- health --------------------------------------------------------------

    async def _check_health(self) -> None:
        timeout = self._config.timeout_worker_healthcheck
        interval = heartbeat_interval(self._config)
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            for worker in list(self._workers):
                if (
                    not worker.ready.is_set()
                    or worker.exited.is_set()
                    or worker.health_killed
                ):
                    continue
                silent = now - worker.last_beat
                if silent > timeout:
                    logger.error(
                        "Worker pid %d has not answered for %.1f seconds (is its "
                        "event loop blocked?); aborting it.",
                        worker.pid,
                        silent,
                    )
                    worker.health_killed = True
                    worker.signal(signal.SIGABRT)
                    assert self._ops is not None
                    self._ops.start_soon(self._kill_if_still_running, worker)

    async def _kill_if_still_running(self, worker: WorkerProcess) -> None:
        with trio.move_on_after(_ABORT_GRACE_SECONDS):
            await worker.exited.wait()
        if not worker.exited.is_set():
            worker.signal(signal.SIGKILL)

    # -- signals and stopping ------------------------------------------------

    async def _handle_signals(self, signals: AsyncIterator[int]) -> None:
        assert self._root is not None
        assert self._ops is not None
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum in (signal.SIGINT, signal.SIGTERM):
                if not self._stopping:
                    logger.info(
                        "%s received: stopping the workers gracefully (send it "
                        "again to stop at once).",
                        name,
                    )
                    self._request_stop()
                else:
                    logger.warning("%s received: stopping at once.", name)
                    for worker in self._workers:
                        worker.kill()
                    self._root.cancel_scope.cancel()
                    return
            elif self._stopping:
                logger.info("%s ignored: the server is stopping.", name)
            elif signum == signal.SIGHUP:
                self._ops.start_soon(self._reload, "SIGHUP received")
            elif signum == signal.SIGTTIN:
                self._target += 1
                logger.info("SIGTTIN received: now %d worker(s).", self._target)
                self._wanted.set()
            elif signum == signal.SIGTTOU:
                self._scale_down()

    def _scale_down(self) -> None:
        if self._target <= 1:
            logger.info("SIGTTOU ignored: there is only one worker.")
            return
        self._target -= 1
        active = [worker for worker in self._workers if worker.active]
        logger.info("SIGTTOU received: now %d worker(s).", self._target)
        if len(active) > self._target:
            victim = active[-1]
            logger.info("Stopping worker pid %d.", victim.pid)
            self._stop_bounded(victim)

    def _stop_limit(self) -> float:
        """Seconds a worker told to stop gets before it is killed."""
        config = self._config
        return (
            config.timeout_graceful_shutdown
            + config.timeout_lifespan_shutdown
            + _STOP_MARGIN_SECONDS
        )

    def _stop_bounded(self, worker: WorkerProcess) -> None:
        """Stop one worker gracefully while the others serve; kill it if it hangs."""
        worker.stop()
        assert self._root is not None
        self._root.start_soon(self._kill_if_not_stopped, worker)

    async def _kill_if_not_stopped(self, worker: WorkerProcess) -> None:
        limit = self._stop_limit()
        with trio.move_on_after(limit):
            await worker.exited.wait()
        _kill_if_running(worker, limit)

    async def _stop_workers(self) -> None:
        workers = list(self._workers)
        for worker in workers:
            worker.stop()
        if not workers:
            return
        logger.info("Waiting for %d worker(s) to stop.", len(workers))
        limit = self._stop_limit()
        with trio.move_on_after(limit):
            for worker in workers:
                await worker.exited.wait()
        for worker in workers:
            _kill_if_running(worker, limit)
        for worker in workers:
            await worker.exited.wait()


def _systemd_socket() -> int | None:
    """The descriptor systemd socket activation passed us, if any."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    if count < 1:
        return None
    if count > 1:
        logger.warning("systemd passed %d sockets; serving on the first only.", count)
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    return 3  # SD_LISTEN_FDS_START


def _kill_if_running(worker: WorkerProcess, limit: float) -> None:
    """Kill a worker that has not stopped within ``limit`` seconds of being told."""
    if not worker.exited.is_set():
        logger.warning(
            "Worker pid %d did not stop within %g seconds; killing it.",
            worker.pid,
            limit,
        )
        worker.kill()
