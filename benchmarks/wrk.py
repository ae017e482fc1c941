"""Running wrk and reading its output."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from .report import HttpSample

INSTALL_HINT = (
    "wrk is not installed; install it from the system packages "
    "(on Debian or Ubuntu: apt-get install -y wrk) and run the benchmarks again."
)

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


class WrkError(Exception):
    """wrk failed or printed something we cannot read."""


def find_wrk() -> str | None:
    return shutil.which("wrk")


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise WrkError(f"unreadable latency {text!r} in wrk output")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_output(text: str) -> HttpSample:
    """The requests/s, p50, p99 and error count of wrk ``--latency`` output."""
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    p50 = re.search(r"^\s+50(?:\.000)?%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s+99(?:\.000)?%\s+(\S+)", text, re.M)
    if not (rate and p50 and p99):
        raise WrkError("wrk printed no requests/s or latency distribution:\n" + text)
    errors = 0
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if sockets:
        errors += sum(int(n) for n in sockets.groups())
    total = re.search(r"^\s+(\d+) requests in", text, re.M)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non_2xx:
        errors += int(non_2xx.group(1))
    return HttpSample(
        requests_per_s=float(rate.group(1)),
        p50_ms=_duration_ms(p50.group(1)),
        p99_ms=_duration_ms(p99.group(1)),
        errors=errors,
        requests=int(total.group(1)) if total else 0,
    )


def post_script(path: Path, body_size: int) -> Path:
    """Write a wrk Lua script that POSTs ``body_size`` bytes; returns its path."""
    path.write_text(
        'wrk.method = "POST"\n'
        f'wrk.body = string.rep("a", {body_size})\n'
        'wrk.headers["Content-Type"] = "application/octet-stream"\n'
    )
    return path


def paced_script(path: Path, mean_think_ms: float) -> Path:
    """Write a wrk Lua script that paces each connection; returns its path.

    Between a response and the next request on the same connection, wrk
    waits a think time drawn from an exponential distribution with mean
    ``mean_think_ms``, so that the requests of many connections arrive
    close to a Poisson stream of ``connections / mean_think_ms`` per
    millisecond, whatever the server.  wrk waits before the first request of
    each connection too, so the run starts without a burst.  wrk takes whole
    milliseconds; half a millisecond is added so that the truncation keeps
    the mean (its timers fire on a millisecond clock, so a wait may still
    end up to a millisecond early).  LuaJIT's generator starts from a fixed
    seed: every server gets the same sequence of think times.
    """
    path.write_text(
        f"local mean = {mean_think_ms!r}\n"
        "function delay()\n"
        "  return 0.5 - mean * math.log(1 - math.random())\n"
        "end\n"
    )
    return path


def run(
    url: str,
    *,
    seconds: float,
    connections: int,
    core: int,
    script: Path | None = None,
) -> HttpSample:
    """One bounded wrk run on ``core`` with one thread."""
    wrk = find_wrk()
    if wrk is None:
        raise WrkError(INSTALL_HINT)
    duration = max(1, round(seconds))
    cmd = [
        "taskset",
        "-c",
        str(core),
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        "--timeout",
        "10s",
        "--latency",
    ]
    if script is not None:
        cmd += ["-s", str(script)]
    cmd.append(url)
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=duration + 30, check=False
        )
    except subprocess.TimeoutExpired:
        raise WrkError(f"wrk did not finish within {duration + 30} s") from None
    if done.returncode != 0:
        raise WrkError(f"wrk exited with {done.returncode}: {done.stderr.strip()}")
    return parse_output(done.stdout)
