"""A worker that cannot start again is restarted with growing delays.

Real supervisor processes, real signals: the app's module breaks after the
first worker started, so every replacement fails to import it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from typing import BinaryIO

import pytest
import trio

from triasgi._process._children import backoff as _backoff

FLAKY = textwrap.dedent(
    """
    import os

    if os.path.exists({marker!r}):
        raise RuntimeError("the app's configuration is gone")

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({{"type": "http.response.start", "status": 200}})
        await send({{"type": "http.response.body", "body": b"ok"}})
    """
)


async def wait_for(log_path, pattern: str, process: trio.Process, within: float):
    """The log once ``pattern`` is in it; fails after ``within`` seconds."""
    with trio.move_on_after(within):
        while not re.search(pattern, log := log_path.read_text(errors="replace")):
            if process.returncode is not None:
                break
            await trio.sleep(0.02)
        else:
            return log
    raise AssertionError(f"{pattern!r} not in the log:\n{log_path.read_text()}")


def log_file(path) -> BinaryIO:
    return open(path, "wb")  # the test's own file, opened before any waiting


@pytest.fixture
async def supervisor(tmp_path):
    """A `triasgi --workers 1` process serving flaky:app, and its log file."""
    marker = tmp_path / "broken"
    (tmp_path / "flaky.py").write_text(FLAKY.format(marker=str(marker)))
    log_path = tmp_path / "triasgi.log"
    command = [
        *(sys.executable, "-m", "triasgi", "flaky:app", "--port", "0"),
        *("--workers", "1", "--log-level", "info"),
        *("--timeout-graceful-shutdown", "1"),
    ]
    with log_file(log_path) as out:
        process = await trio.lowlevel.open_process(
            command,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,  # the cleanup below reaches the workers
        )
    try:
        yield process, log_path, marker
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        with trio.CancelScope(shield=True):
            await process.wait()


async def test_failed_worker_starts_back_off_instead_of_looping(supervisor):
    process, log_path, marker = supervisor
    log = await wait_for(log_path, r"Worker pid \d+ is ready", process, within=20)
    (pid,) = re.findall(r"Worker pid (\d+) is ready", log)
    marker.touch()  # from now on the app's module fails to import
    os.kill(int(pid), signal.SIGKILL)
    # The crash is replaced at once; each failed start then doubles the wait.
    log = await wait_for(log_path, r"waiting 1 seconds", process, within=15)
    assert "died unexpectedly (killed by SIGKILL" in log
    assert re.findall(r"waiting ([\d.]+) seconds", log) == ["0.5", "1"]
    failures = re.findall(r"A new worker could not start: (.*)", log)
    assert len(failures) == 2
    assert all("the app's configuration is gone" in f for f in failures)
    assert len(re.findall(r"Started worker pid", log)) == 3
    # A supervisor in backoff still stops at once when asked.
    process.send_signal(signal.SIGTERM)
    with trio.fail_after(10):
        assert await process.wait() == 0


def test_restart_delay_doubles_up_to_30_seconds():
    delays = [_backoff(streak) for streak in range(12)]
    assert delays == [0, 0, 0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30]
    assert _backoff(100) == 30
    assert _backoff(1000) == 30


@pytest.mark.parametrize("streak", [1025, 1026, 10**6])
def test_restart_delay_stays_30_seconds_for_a_streak_past_1025(streak):
    # 0.5 * 2 ** 1024 does not fit in a float: the exponent must be capped.
    assert _backoff(streak) == 30
