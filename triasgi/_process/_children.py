"""The supervisor's view of its worker processes: state, exit status, backoff."""

from __future__ import annotations

import signal
from typing import final

import trio

_MAX_BACKOFF_SECONDS = 30.0


def describe_exit(returncode: int, *, expected: bool = False) -> str:
    """A worker's exit status in words: "exit code 1", "killed by SIGSEGV"."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    text = f"killed by {name}"
    if -returncode == signal.SIGKILL and not expected:
        text += (
            "; if nobody sent it, the system may have run out of memory "
            "(see dmesg or the container's memory limit)"
        )
    return text


@final
class WorkerProcess:
    """The supervisor's view of one worker process."""

    def __init__(self) -> None:
        self.process: trio.Process | None = None
        self.started_at = 0.0
        self.last_beat = 0.0
        self.ready = trio.Event()
        self.exited = trio.Event()
        self.settled = trio.Event()  # ready, or exited before that
        self.reports_done = trio.Event()
        self.failure: str | None = None
        self.stop_requested = False
        self.health_killed = False
        self.retiring = False

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def active(self) -> bool:
        """Starting or serving, and not asked to stop."""
        return not (self.stop_requested or self.exited.is_set())

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.returncode is None:
            try:
                self.process.send_signal(signum)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        """Ask for a graceful stop: finish in-flight requests, then exit."""
        if not self.stop_requested:
            self.stop_requested = True
            self.signal(signal.SIGTERM)

    def kill(self) -> None:
        self.stop_requested = True
        self.signal(signal.SIGKILL)


async def kill_at_once(process: trio.Process) -> None:
    """How trio.run_process ends a worker whose task is cancelled."""
    process.kill()
    await trio.lowlevel.checkpoint()


def backoff(streak: int) -> float:
    """Seconds to wait before the next start after ``streak`` quick crashes."""
    if streak <= 1:
        return 0.0
    # The cap reaches 30 seconds at a streak of 8; capping the exponent too
    # keeps the power small however long the streak grows.
    exponent = min(streak - 2, 16)
    return float(min(0.5 * 2**exponent, _MAX_BACKOFF_SECONDS))
