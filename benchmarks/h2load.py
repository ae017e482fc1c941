"""Running h2load (HTTP/2 with prior knowledge) and reading its output.

A cell of an HTTP/2 scenario is two runs: a warm-up run of a fixed
duration (``h2load -D``), whose rate sizes the measured run, and a measured
run of a fixed number of requests (``h2load -n``).  The measured run asks
for a number of requests rather than a duration because only then does
h2load count what a connection lost took with it: in a timed run the
requests of a connection the server dropped are neither done nor failed,
they are simply never made, and a crash shows only as a lower rate.  With
``-n`` every request it was told to make ends as succeeded or failed.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess

from .report import H2Sample

INSTALL_HINT = (
    "h2load is not installed; install it from the system packages (on Debian "
    "or Ubuntu: apt-get install -y nghttp2-client) and run the HTTP/2 "
    "benchmarks again."
)

#: Seconds h2load waits for any activity on a connection before it gives up
#: on its requests (counted as timed out), as wrk's ``--timeout 10s``.
INACTIVITY_TIMEOUT = 10

_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_REQUESTS = re.compile(
    r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
    r"(\d+) failed, (\d+) errored, (\d+) timeout",
    re.M,
)
_FINISHED = re.compile(r"^finished in ([\d.]+)(us|ms|s|m|h),", re.M)
_TIME_FOR_REQUEST = re.compile(
    r"^time for request:\s+([\d.]+)(us|ms|s|m|h)\s+([\d.]+)(us|ms|s|m|h)"
    r"\s+([\d.]+)(us|ms|s|m|h)",
    re.M,
)


class H2loadError(Exception):
    """h2load failed or printed something we cannot read."""


def find_h2load() -> str | None:
    return shutil.which("h2load")


def parse_output(text: str) -> H2Sample:
    """The counts, rate and mean request time of an h2load run's output.

    The rate is the requests that succeeded (a 2xx or 3xx status) divided by
    the run's duration: failed requests are not throughput.

    Raises:
        H2loadError: the output has no summary to read.
    """
    requests = _REQUESTS.search(text)
    finished = _FINISHED.search(text)
    if not (requests and finished):
        raise H2loadError("h2load printed no summary of its requests:\n" + text)
    total, _started, done, succeeded, failed, errored, timed_out = (
        int(n) for n in requests.groups()
    )
    seconds = float(finished.group(1)) * _UNITS_S[finished.group(2)]
    mean_ms = math.nan
    times = _TIME_FOR_REQUEST.search(text)
    if times and succeeded:
        mean_ms = float(times.group(5)) * _UNITS_S[times.group(6)] * 1000
    return H2Sample(
        requests_per_s=succeeded / seconds if seconds > 0 else 0.0,
        requests=total,
        done=done,
        succeeded=succeeded,
        failed=failed,
        errored=errored,
        timed_out=timed_out,
        mean_ms=mean_ms,
        seconds=seconds,
    )


def measured_requests(rate: float, seconds: float, in_flight: int) -> int:
    """How many requests make a measured run of about ``seconds`` at ``rate``.

    At least ten per stream in flight, so that a server too slow (or too
    broken) to answer in the warm-up still gets a run that says so.
    """
    return max(in_flight * 10, round(rate * seconds))


def run(
    url: str,
    *,
    connections: int,
    streams: int,
    core: int,
    seconds: float | None = None,
    requests: int | None = None,
    limit: float = 120.0,
) -> H2Sample:
    """One h2load run on ``core`` with one thread, for a duration or a count.

    Args:
        url: an ``http://`` URL: h2load speaks HTTP/2 with prior knowledge.
        connections: connections (``-c``).
        streams: concurrent streams on each (``-m``).
        core: the core h2load is pinned to.
        seconds: a run of this duration (``-D``), or
        requests: a run of this many requests (``-n``).
        limit: seconds after which h2load is killed.

    Raises:
        H2loadError: h2load is missing, failed, or did not finish in time.
    """
    h2load = find_h2load()
    if h2load is None:
        raise H2loadError(INSTALL_HINT)
    cmd = [
        "taskset",
        "-c",
        str(core),
        h2load,
        "-t1",
        f"-c{connections}",
        f"-m{streams}",
        "-N",
        str(INACTIVITY_TIMEOUT),
    ]
    if seconds is not None:
        cmd += ["-D", str(max(1, round(seconds)))]
    elif requests is not None:
        cmd += ["-n", str(requests)]
    else:
        raise ValueError("give seconds or requests")
    cmd.append(url)
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=limit, check=False
        )
    except subprocess.TimeoutExpired:
        raise H2loadError(f"h2load did not finish within {limit:g} s") from None
    if done.returncode != 0:
        raise H2loadError(
            f"h2load exited with {done.returncode}: "
            + (done.stderr.strip() or done.stdout.strip())
        )
    return parse_output(done.stdout)


_TOP_TRACEBACK = re.compile(
    r"^(?:Traceback|  \+ Exception Group Traceback) \(most recent call last\)", re.M
)


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Group)(?::\s.*)?$")


def count_tracebacks(log: str) -> int:
    """The tracebacks a server logged: top-level ones, not those nested in groups."""
    return len(_TOP_TRACEBACK.findall(log))


def last_exception(log: str) -> str:
    """The last exception a server's log names, or ``""``.

    A line such as ``trio.BusyResourceError: another task is ...``, with
    the ``|`` margins of an exception group taken off; an exception inside a
    group is preferred to the group that carried it.
    """
    found = group = ""
    for line in log.splitlines():
        text = line.strip().lstrip("|+ ").strip()
        if _EXCEPTION_LINE.match(text):
            if text.split(":", 1)[0].endswith("Group"):
                group = text
            else:
                found = text
    return found or group
