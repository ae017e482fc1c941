"""The benchmark harness: ``python -m benchmarks [--quick] [options]``.

Each round starts every server in turn (the order rotates from round to
round, so that no server always runs first or last on a noisy machine), runs
every HTTP scenario against it with wrk, then the WebSocket echo, then
measures idle-connection memory on a fresh process of the same server.  The
servers run pinned to one core and the load generators to another.  At the
end it prints markdown tables of the medians over the rounds and the ratio of
each to uvicorn ``--http h11 --loop asyncio``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import resource
import select
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

from . import apps, h2get, h2load, wrk, wsload
from .report import (
    BASELINE,
    FILE,
    H2_BASELINE,
    MIB,
    H2Sample,
    HttpSample,
    Results,
    format_report,
)
from .servers import (
    REPO_ROOT,
    SERVERS,
    TRIASGI_FLAVOURS,
    RunningServer,
    ServerError,
    ServerSpec,
    imported_from,
    running,
    server_spec,
    split_name,
    twin_name,
)

Serve = Callable[[ServerSpec], contextlib.AbstractContextManager[RunningServer]]


PACED = "paced"
PACED_CONNECTIONS = 64
# wrk waits whole milliseconds between requests: the mean think time of the
# paced scenario stays between 1 ms and 10 s, hence these bounds on the pace.
MIN_PACE = PACED_CONNECTIONS / 10.0
MAX_PACE = PACED_CONNECTIONS * 1000
# The default pace: this share of the baseline's hello GET rate.
DEFAULT_PACE_SHARE = 0.5


@dataclass(frozen=True)
class HttpScenario:
    key: str
    title: str
    path: str
    connections: int
    post_bytes: int = 0
    # Paced: each connection waits a random think time between a response and
    # its next request, so that every server is offered the same request rate
    # (--pace) instead of as many requests as it can answer.
    paced: bool = False


HTTP_SCENARIOS = [
    HttpScenario("hello", "hello GET", "/", 64),
    HttpScenario(PACED, "hello GET, paced", "/", PACED_CONNECTIONS, paced=True),
    HttpScenario("64k", "64 KiB response", "/64k", 64),
    HttpScenario("echo-1m", "1 MiB body echoed", "/echo", 16, post_bytes=1 << 20),
    HttpScenario(
        "stream",
        f"{apps.STREAM_CHUNKS} x {apps.STREAM_CHUNK_SIZE} B streamed",
        "/stream",
        16,
    ),
    # Few connections: each response is 16 MiB.
    HttpScenario(FILE, f"{apps.FILE_SIZE // MIB} MiB file", "/file-16m", 4),
]
MEMORY = "memory"
WEBSOCKET = "websocket"


@dataclass(frozen=True)
class H2Scenario:
    """An HTTP/2 scenario: h2load with prior knowledge, GET ``path``."""

    key: str
    title: str
    path: str
    connections: int
    streams: int  # concurrent streams on each connection (h2load -m)


H2_SCENARIOS = [
    H2Scenario("h2-hello", "HTTP/2 hello GET", "/", 10, 10),
    # Fewer streams in flight: each response is 1 MiB.
    H2Scenario("h2-1mib", "HTTP/2 1 MiB download", "/1m", 4, 4),
]
H2_MEMORY = "h2-memory"
#: The least warm-up of an HTTP/2 cell: its rate sizes the measured run.
H2_MIN_WARMUP = 1.0
#: Seconds a server whose requests failed is given to exit, if it is exiting.
H2_EXIT_WAIT = 2.0
#: The scenarios run by default.  The HTTP/2 ones run when named: they need
#: h2load, and their ratios another baseline.
SCENARIOS = [s.key for s in HTTP_SCENARIOS] + [MEMORY, WEBSOCKET]
H2_KEYS = [s.key for s in H2_SCENARIOS] + [H2_MEMORY]
TITLES = {s.key: s.title for s in HTTP_SCENARIOS + H2_SCENARIOS}

# What each server needs importable, to say what to install when it is not.
_NEEDS = {
    "triasgi": ["triasgi"],
    "triasgi-httptools": ["triasgi", "httptools"],
    "uvicorn-h11": ["uvicorn", "h11", "wsproto"],
    "uvicorn-httptools": ["uvicorn", "httptools", "uvloop"],
    "hypercorn-trio": ["hypercorn", "trio"],
    "hypercorn-asyncio": ["hypercorn"],
    "triasgi-asyncio": ["triasgi", "trio_asyncio"],
    "trio-floor": ["trio"],
    "trio-floor-task": ["trio"],
    "trio-floor-noyield": ["trio"],
}
_WS_EXAMPLE = Path("examples", "ws_echo.py")


@dataclass(frozen=True)
class Options:
    """What to run, from the command line."""

    servers: list[str]
    scenarios: list[str]
    rounds: int
    seconds: float
    warmup: float
    idle_connections: int
    ws_connections: int
    server_core: int
    load_core: int
    quick: bool
    output: Path | None
    json: Path | None
    revision: str | None = None
    # --baseline as given, and the short id of the commit it names (set by
    # with_baseline(), which also adds the servers FLAVOUR@COMMIT).
    baseline: str | None = None
    baseline_commit: str | None = None
    # The paced scenario's offered rate: requests per second, or, while
    # pace_share is set, that share of the baseline's hello GET rate, which
    # a calibration run measures at the start (calibrated() resolves it).
    pace: float = 0.0
    pace_share: float | None = DEFAULT_PACE_SHARE


def _names(choices: list[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"choose from {', '.join(choices)} (comma-separated)"
            )
        return names

    return parse


def _pace(text: str) -> tuple[float, float | None]:
    """``--pace``: (requests per second, None) or (0, share of the baseline)."""
    try:
        if text.endswith("%"):
            share = float(text[:-1]) / 100
            if 0.01 <= share <= 1:
                return 0.0, share
        else:
            rate = float(text)
            if MIN_PACE <= rate <= MAX_PACE:
                return rate, None
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(
        f"give requests per second from {MIN_PACE:g} to {MAX_PACE:,} (e.g. 2000) "
        "or a share of the baseline from 1% to 100% (e.g. 50%)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=(
            "Benchmark triasgi against uvicorn and hypercorn on the same ASGI "
            "app and print markdown tables of the medians and ratios."
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 1 round, 2 s per cell, 1,000 idle connections",
    )
    parser.add_argument(
        "--servers",
        type=_names(list(SERVERS)),
        default=list(SERVERS),
        help=f"servers to run (default: all; {BASELINE} is always added)",
    )
    parser.add_argument(
        "--scenarios",
        type=_names(SCENARIOS + H2_KEYS),
        default=SCENARIOS,
        help=(
            f"scenarios to run (default: all of {', '.join(SCENARIOS)}); the "
            f"HTTP/2 ones, with h2load, when named: {', '.join(H2_KEYS)}"
        ),
    )
    parser.add_argument("--rounds", type=int, help="rounds (default 3; quick 1)")
    parser.add_argument(
        "--seconds", type=float, help="measured seconds per cell (default 5; quick 2)"
    )
    parser.add_argument(
        "--warmup", type=float, help="unmeasured seconds before each cell (default 1)"
    )
    parser.add_argument(
        "--idle-connections",
        type=int,
        help="connections held open in the memory scenario (default 5000; quick 1000)",
    )
    parser.add_argument(
        "--ws-connections",
        type=int,
        default=50,
        help="connections of the WebSocket echo (default 50)",
    )
    parser.add_argument(
        "--pace",
        type=_pace,
        default=(0.0, DEFAULT_PACE_SHARE),
        help=(
            "what the paced scenario offers every server: requests per second "
            f"(e.g. 2000), or a share of {BASELINE}'s hello GET requests per "
            "second, measured in a calibration run at the start (e.g. 70%%; "
            f"default {DEFAULT_PACE_SHARE * 100:.0f}%%)"
        ),
    )
    parser.add_argument("--server-core", type=int, default=0, help="core for servers")
    parser.add_argument(
        "--load-core", type=int, default=1, help="core for load clients"
    )
    parser.add_argument(
        "--revision",
        help=(
            "serve triasgi (and the apps) from a clean export of this git "
            "revision instead of the working tree"
        ),
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help=(
            "also run every selected triasgi server with the triasgi package of "
            "this git revision (e.g. HEAD~1), as triasgi@COMMIT, and report the "
            "ratio of each to its twin from the working tree"
        ),
    )
    parser.add_argument("--output", type=Path, help="also write the report here")
    parser.add_argument("--json", type=Path, help="write every raw sample here")
    return parser


def parse_args(argv: list[str] | None = None) -> Options:
    """Options from ``argv``, with ``--quick`` defaults for what was not given."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    quick = ns.quick
    servers = list(ns.servers)
    if BASELINE not in servers:
        servers.insert(0, BASELINE)
    if H2_BASELINE not in servers and set(ns.scenarios) & set(H2_KEYS):
        servers.append(H2_BASELINE)
    options = Options(
        servers=servers,
        scenarios=list(ns.scenarios),
        rounds=ns.rounds if ns.rounds is not None else (1 if quick else 3),
        seconds=ns.seconds if ns.seconds is not None else (2.0 if quick else 5.0),
        warmup=ns.warmup if ns.warmup is not None else 1.0,
        idle_connections=(
            ns.idle_connections
            if ns.idle_connections is not None
            else (1000 if quick else 5000)
        ),
        ws_connections=ns.ws_connections,
        server_core=ns.server_core,
        load_core=ns.load_core,
        quick=quick,
        output=ns.output,
        json=ns.json,
        revision=ns.revision,
        baseline=ns.baseline,
        pace=ns.pace[0],
        pace_share=ns.pace[1],
    )
    for name in ("rounds", "idle_connections", "ws_connections"):
        if getattr(options, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if options.seconds < 1:
        parser.error("--seconds must be at least 1")
    if options.server_core == options.load_core:
        parser.error("--server-core and --load-core must differ")
    if options.baseline is not None and not set(servers) & set(TRIASGI_FLAVOURS):
        parser.error(
            f"--baseline needs a triasgi server in --servers "
            f"({', '.join(TRIASGI_FLAVOURS)})"
        )
    return options


class RevisionError(Exception):
    """--baseline names no commit."""


def resolve_commit(revision: str) -> str:
    """The short id of the commit that ``revision`` names in the repository."""
    bad = RevisionError(
        f"--baseline {revision!r} names no commit of the repository in {REPO_ROOT}."
    )
    if not revision or revision.startswith("-"):
        raise bad
    try:
        done = subprocess.run(
            [
                "git",
                "rev-parse",
                "--verify",
                "--quiet",
                "--short",
                f"{revision}^{{commit}}",
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise RevisionError(
            f"--baseline {revision!r} cannot be looked up, git failed: {exc}."
        ) from None
    commit = done.stdout.strip()
    if done.returncode != 0 or not commit:
        raise bad
    return commit


def with_twins(servers: list[str], commit: str) -> list[str]:
    """``servers`` with each triasgi server followed by its twin from ``commit``."""
    out = []
    for name in servers:
        out.append(name)
        if name in TRIASGI_FLAVOURS:
            out.append(twin_name(name, commit))
    return out


def with_baseline(options: Options, commit: str) -> Options:
    """``options`` with the twins from ``commit`` added to the servers."""
    return dataclasses.replace(
        options,
        servers=with_twins(options.servers, commit),
        baseline_commit=commit,
    )


def rotated(servers: list[str], round_index: int) -> list[str]:
    """The server order of one round: the list rotated by the round number."""
    if not servers:
        return []
    k = round_index % len(servers)
    return servers[k:] + servers[:k]


# -- checks before measuring ---------------------------------------------------


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _missing_packages(servers: list[str], scenarios: Collection[str] = ()) -> list[str]:
    needed = {pkg for name in servers for pkg in _NEEDS[split_name(name)[0]]}
    if FILE in scenarios:
        needed.add("starlette")  # the app's FileResponse
    return sorted(p for p in needed if importlib.util.find_spec(p) is None)


def _raise_nofile(needed: int) -> int:
    """Raise our soft open-files limit (children inherit it); returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return needed
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def _fetch(port: int, method: str, path: str, body: bytes | None = None) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise ServerError(f"{method} {path} answered {response.status}")
        return data
    finally:
        conn.close()


def verify(
    server: RunningServer,
    only: tuple[str, ...] | None = None,
    *,
    with_file: bool = False,
) -> None:
    """Check that the server gives each scenario it runs the right answer.

    ``/file-16m`` is checked only ``with_file``: it needs the file written.
    """
    port = server.port
    body = os.urandom(1 << 20)
    checks: dict[str, tuple[Callable[[], bytes], bytes]] = {
        "/": (lambda: _fetch(port, "GET", "/"), apps.HELLO),
        "/64k": (lambda: _fetch(port, "GET", "/64k"), apps.LARGE),
        "/stream": (
            lambda: _fetch(port, "GET", "/stream"),
            (b"x" * (apps.STREAM_CHUNK_SIZE - 1) + b"\n") * apps.STREAM_CHUNKS,
        ),
        "/echo": (lambda: _fetch(port, "POST", "/echo", body), body),
    }
    if with_file:
        checks["/file-16m"] = (
            lambda: _fetch(port, "GET", "/file-16m"),
            apps.file_bytes(),
        )
    if only is not None:
        paths = {s.path for s in HTTP_SCENARIOS if s.key in only}
        checks = {path: check for path, check in checks.items() if path in paths}
    for path, (fetch, want) in checks.items():
        if fetch() != want:
            raise ServerError(f"{server.spec.name} answered {path} wrongly")


def advertises_pathsend(server: RunningServer) -> bool:
    """Whether the server's scope advertised ``http.response.pathsend``.

    The app says so in the ``x-pathsend`` header of its ``/file-16m`` answer.
    """
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("HEAD", "/file-16m")
        response = conn.getresponse()
        response.read()
        return response.getheader(apps.PATHSEND_HEADER) == "1"
    finally:
        conn.close()


def pathsend_note(advertised: dict[str, bool]) -> str:
    """The report's note on which servers got the file sent by path."""
    yes = [name for name, a in advertised.items() if a]
    no = [name for name, a in advertised.items() if not a]
    parts = []
    if yes:
        parts.append(
            f"{', '.join(yes)} advertised {apps.PATHSEND} (FileResponse sent "
            "the path, the server sent the file)"
        )
    if no:
        parts.append(
            f"{', '.join(no)} did not advertise {apps.PATHSEND} (FileResponse "
            "read the file and sent it in 64 KiB http.response.body messages)"
        )
    return f"{TITLES[FILE]}: " + "; ".join(parts) + "."


# -- the scenarios -------------------------------------------------------------


def think_time_ms(scenario: HttpScenario, options: Options) -> float:
    """The mean think time that offers ``options.pace`` requests per second."""
    if options.pace_share is not None:
        raise ValueError("the pace is a share of the baseline: calibrate first")
    return scenario.connections / options.pace * 1000.0


def calibrated(options: Options, results: Results, serve: Serve) -> Options:
    """Options whose pace is in requests per second.

    A pace given as a share of the baseline's capacity is resolved here: the
    baseline serves the hello GET scenario once (warm-up, then a measured
    run), and the pace is that share of its requests per second, the same
    for every server and round.
    """
    if options.pace_share is None or PACED not in options.scenarios:
        return options
    hello = next(s for s in HTTP_SCENARIOS if s.key == "hello")
    with serve(SERVERS[BASELINE]) as server:
        verify(server, ("hello",))
        sample = run_http(server, hello, options, Path())
    if sample.errors:
        raise ServerError(
            f"{BASELINE} gave {sample.errors} errors in the calibration run"
        )
    _log(f"calibration: {BASELINE} hello GET {sample.requests_per_s:,.0f} req/s")
    return paced_at(options, results, sample.requests_per_s)


def paced_at(options: Options, results: Results, capacity: float) -> Options:
    """``options`` with the pace set to its share of ``capacity`` (req/s)."""
    assert options.pace_share is not None
    pace = capacity * options.pace_share
    if not MIN_PACE <= pace <= MAX_PACE:
        raise ServerError(
            f"{options.pace_share:.0%} of the {capacity:,.0f} requests/s that "
            f"{BASELINE} answered in the calibration run is outside what the "
            f"paced scenario can offer ({MIN_PACE:g} to {MAX_PACE:,} requests/s); "
            "give --pace in requests per second"
        )
    results.notes.append(
        f"Paced scenario: {pace:,.0f} requests/s offered, "
        f"{options.pace_share:.0%} of the {capacity:,.0f} requests/s that "
        f"{BASELINE} answered on hello GET in a calibration run at the start."
    )
    results.calibration = capacity
    return dataclasses.replace(options, pace=pace, pace_share=None)


def measured_seconds(scenario: HttpScenario, options: Options) -> float:
    """How long a scenario's measured run lasts.

    A paced run lasts twice as long: a paced server answers fewer requests
    per second than in the closed loop, and p99 needs samples.
    """
    return options.seconds * 2 if scenario.paced else options.seconds


def run_http(
    server: RunningServer, scenario: HttpScenario, options: Options, scripts: Path
) -> HttpSample:
    script = None
    if scenario.post_bytes:
        script = wrk.post_script(scripts / f"{scenario.key}.lua", scenario.post_bytes)
    elif scenario.paced:
        script = wrk.paced_script(
            scripts / f"{scenario.key}.lua", think_time_ms(scenario, options)
        )
    url = server.url + scenario.path
    if options.warmup > 0:
        wrk.run(
            url,
            seconds=options.warmup,
            connections=scenario.connections,
            core=options.load_core,
            script=script,
        )
    cpu_before = server.cpu_seconds()
    sample = wrk.run(
        url,
        seconds=measured_seconds(scenario, options),
        connections=scenario.connections,
        core=options.load_core,
        script=script,
    )
    cpu = server.cpu_seconds() - cpu_before
    server.check_alive()
    return dataclasses.replace(sample, cpu_seconds=cpu)


def _client(module: str, *args: str, core: int) -> list[str]:
    return ["taskset", "-c", str(core), sys.executable, "-m", module, *args]


def run_websocket(server: RunningServer, options: Options) -> tuple[float, float]:
    """Echoed messages per second, and server CPU microseconds per message.

    The client says when it starts counting; the server's CPU time is taken
    then and when it reports, so neither set-up nor warm-up is in it.
    """
    cmd = _client(
        "benchmarks.wsload",
        "--port",
        str(server.port),
        "--connections",
        str(options.ws_connections),
        "--seconds",
        str(options.seconds),
        "--warmup",
        str(options.warmup),
        core=options.load_core,
    )
    deadline = time.monotonic() + options.seconds + options.warmup + 60
    with _client_process(cmd) as process:
        assert process.stdout is not None
        line = _read_line(process, deadline)
        cpu_start = server.cpu_seconds()
        if line.strip() == "counting":
            line = _read_line(process, deadline)
        cpu = server.cpu_seconds() - cpu_start
        server.check_alive()
        try:
            result = json.loads(line)
        except ValueError:
            raise ServerError(f"the WebSocket load client failed: {line}") from None
    messages = int(result["messages"])
    per_message = cpu / messages * 1e6 if messages and cpu else math.nan
    return float(result["per_second"]), per_message


@contextlib.contextmanager
def _client_process(cmd: list[str]) -> Iterator[subprocess.Popen[str]]:
    """A load client with pipes; killed if it has not exited 30 s after the block."""
    process = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield process
    finally:
        with contextlib.suppress(OSError):
            assert process.stdin is not None
            process.stdin.close()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _read_line(process: subprocess.Popen[str], deadline: float) -> str:
    """The client's next line, or what went wrong, by ``deadline``."""
    assert process.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        if ready:
            return process.stdout.readline() or "(the client exited)"
        if process.poll() is not None:
            return "(the client exited)"
    return "(timeout)"


def probe_websocket(server: RunningServer, core: int) -> str | None:
    """None if one WebSocket echo works, else what went wrong."""
    done = subprocess.run(
        _client("benchmarks.wsload", "--port", str(server.port), "--probe", core=core),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if done.returncode == 0:
        return None
    return done.stderr.strip() or f"the probe exited with {done.returncode}"


def measure_idle_memory(
    server: RunningServer, options: Options, *, http2: bool = False
) -> float:
    """RSS growth per idle keep-alive connection (HTTP/2 ones with ``http2``)."""
    time.sleep(0.5)
    before = server.rss_bytes()
    n = options.idle_connections
    cmd = _client(
        "benchmarks.idle",
        "--port",
        str(server.port),
        "--connections",
        str(n),
        *(["--http2"] if http2 else []),
        core=options.load_core,
    )
    with _client_process(cmd) as process:
        line = _read_line(process, time.monotonic() + 120)
        if not line.startswith("ready"):
            raise ServerError(f"idle connections not opened: {line.strip()}")
        time.sleep(1.0)  # let the server finish with the last batch
        server.check_alive()
        after = server.rss_bytes()
    return (after - before) / n


# -- HTTP/2 ---------------------------------------------------------------------

_H2_ANSWERS = {"/": apps.HELLO, "/1m": apps.DOWNLOAD}


def verify_h2(server: RunningServer, scenarios: list[H2Scenario]) -> str | None:
    """None if the server answers each HTTP/2 route rightly, else what went wrong.

    Each route is asked for once on a fresh connection with prior knowledge;
    ``GET /`` also when no scenario asks for it (idle memory does).
    """
    paths = dict.fromkeys(["/", *(s.path for s in scenarios)])
    for path in paths:
        try:
            status, body = h2get.get(server.port, path)
        except (OSError, h2get.H2GetError) as exc:
            return f"an HTTP/2 GET {path} with prior knowledge failed: {exc}"
        if status != 200 or body != _H2_ANSWERS[path]:
            return (
                f"an HTTP/2 GET {path} with prior knowledge was answered "
                f"{status} with {len(body):,} bytes that are not the route's"
            )
    return None


def _server_log(server: RunningServer) -> str:
    try:
        return server.log.read_text(errors="replace")
    except OSError:
        return ""


def run_h2(server: RunningServer, scenario: H2Scenario, options: Options) -> H2Sample:
    """One HTTP/2 cell: a timed warm-up run, then a measured run.

    The measured run asks for as many requests as the warm-up's rate makes
    in about ``options.seconds`` (benchmarks/h2load.py says why).  The
    server's CPU time is taken around the measured run; its tracebacks are
    counted over the whole cell, and whether it is still running at the end.
    """
    url = server.url + scenario.path
    load = {
        "connections": scenario.connections,
        "streams": scenario.streams,
        "core": options.load_core,
    }
    log_start = len(_server_log(server))
    warmup = max(options.warmup, H2_MIN_WARMUP)
    warm = h2load.run(url, seconds=warmup, limit=warmup + 60, **load)
    n = h2load.measured_requests(
        warm.requests_per_s,
        options.seconds,
        scenario.connections * scenario.streams,
    )
    cpu_before = server.cpu_seconds()
    sample = h2load.run(url, requests=n, limit=options.seconds * 10 + 60, **load)
    cpu = server.cpu_seconds() - cpu_before
    exited = server.process.poll() is not None
    if sample.unsuccessful and not exited:
        # A server whose requests failed may be on its way out: tell a crash
        # from a server that fails requests and goes on.
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.process.wait(H2_EXIT_WAIT)
            exited = True
    log = _server_log(server)[log_start:]
    return dataclasses.replace(
        sample,
        cpu_seconds=cpu,
        server_errors=h2load.count_tracebacks(log),
        last_error=h2load.last_exception(log),
        exited=exited,
    )


def _describe_h2(sample: H2Sample) -> str:
    text = (
        f"{sample.requests_per_s:,.0f} req/s, mean {sample.mean_ms:.2f} ms, "
        f"{sample.cpu_us_per_request:,.0f} µs CPU/req, "
        f"{sample.unsuccessful:,} of {sample.requests:,} failed"
    )
    if sample.server_errors:
        text += f", {sample.server_errors} tracebacks logged"
    if sample.exited:
        text += ", the server exited"
    return text


def _h2_checked(
    server: RunningServer,
    scenarios: list[H2Scenario],
    problems: dict[str, str | None],
    results: Results,
) -> bool:
    """Whether the server serves HTTP/2 rightly, checked once per server."""
    name = server.spec.name
    if name not in problems:
        problems[name] = verify_h2(server, scenarios)
        if problems[name] is not None:
            results.notes.append(f"HTTP/2: {name} skipped, {problems[name]}.")
    return problems[name] is None


def _http2_turn(
    spec: ServerSpec,
    options: Options,
    results: Results,
    serve: Serve,
    problems: dict[str, str | None],
    tag: str,
) -> None:
    """A server's HTTP/2 cells of one round, then its idle HTTP/2 memory.

    A server that exits during a cell is recorded as such and started again
    for the next cell, so that one crash costs one cell, not the run (nor
    the next cell).
    """
    scenarios = [s for s in H2_SCENARIOS if s.key in options.scenarios]
    pending = list(scenarios)
    while pending:
        with serve(spec) as server:
            if not _h2_checked(server, scenarios, problems, results):
                return
            while pending and server.process.poll() is None:
                scenario = pending.pop(0)
                sample = run_h2(server, scenario, options)
                results.add_h2(scenario.key, spec.name, sample)
                _log(f"{tag} {scenario.key}: {_describe_h2(sample)}")
    if H2_MEMORY in options.scenarios:
        with serve(spec) as server:
            if not _h2_checked(server, scenarios, problems, results):
                return
            per_conn = measure_idle_memory(server, options, http2=True)
        results.h2_memory.setdefault(spec.name, []).append(per_conn)
        _log(f"{tag} idle HTTP/2 memory: {per_conn / 1024:.1f} KiB per connection")


# -- the run -------------------------------------------------------------------


def _versions() -> str:
    names = [
        "triasgi",
        "h11",
        "trio",
        "uvicorn",
        "httptools",
        "uvloop",
        "wsproto",
        "hypercorn",
        "trio_asyncio",
    ]
    parts = []
    for name in names:
        try:
            parts.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return ", ".join(parts)


def _git_revision(revision: str | None) -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", f"{revision or 'HEAD'}^{{commit}}"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "triasgi"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if revision is not None:
        return rev + " (a clean export)"
    return rev + (" with uncommitted changes in triasgi/" if dirty else "")


def header(options: Options, argv: list[str]) -> str:
    command = shlex.join(["python", "-m", "benchmarks", *argv])
    cpus = os.cpu_count()
    return (
        "\n".join(
            [
                f"Command: `{command}`",
                "",
                f"- revision {_git_revision(options.revision)}; "
                + _baseline_part(options)
                + f"Python {platform.python_version()}; {_versions()}",
                f"- {cpus} cores: servers pinned to core {options.server_core}, load "
                f"(wrk -t1, h2load -t1, Python clients) to core {options.load_core}",
                f"- {options.rounds} round(s) of {options.seconds:g} s per cell after "
                f"{options.warmup:g} s of warm-up; servers in rotating order",
                "",
                "Servers (PORT is a free port):",
                "",
                *_server_lines(options.servers),
                "",
                "Scenarios:",
                "",
                *_scenario_lines(options),
                "",
            ]
        )
        + "\n"
    )


def _baseline_part(options: Options) -> str:
    if options.baseline_commit is None:
        return ""
    return (
        f"baseline {options.baseline_commit} (`--baseline {options.baseline}`, "
        "its triasgi package from a clean export); "
    )


def _server_lines(servers: list[str]) -> list[str]:
    lines = []
    for name in servers:
        spec = server_spec(name)
        argv = spec.command(0)
        argv[0] = "python"
        shown = shlex.join(argv).replace("--port 0", "--port PORT")
        shown = shown.replace("127.0.0.1:0", "127.0.0.1:PORT")
        line = f"- {name}: `{shown}`"
        if spec.revision is not None:
            line += (
                f", in an export of the triasgi package of {spec.revision} that "
                "is first on PYTHONPATH (the app is the same as the others')"
            )
        lines.append(line)
    return lines


def _scenario_lines(options: Options) -> list[str]:
    lines = []
    for sc in HTTP_SCENARIOS:
        if sc.key in options.scenarios:
            method = (
                f"POST {sc.path} ({sc.post_bytes} bytes)"
                if sc.post_bytes
                else (f"GET {sc.path}")
            )
            line = f"- {sc.title}: wrk -t1 -c{sc.connections} --latency, {method}"
            if sc.key == FILE:
                line += (
                    f", Starlette FileResponse of a {apps.FILE_SIZE // MIB} MiB file "
                    "in the run's temporary directory (sent with "
                    f"{apps.PATHSEND} where the server advertises it)"
                )
            if sc.paced and options.pace_share is None:
                line += (
                    f", each connection waiting a random think time (exponential, "
                    f"mean {think_time_ms(sc, options):.1f} ms) between a response "
                    f"and its next request: about {options.pace:,.0f} requests/s "
                    "offered to every server, measured for "
                    f"{measured_seconds(sc, options):g} s"
                )
            lines.append(line)
    if MEMORY in options.scenarios:
        lines.append(
            f"- idle memory: a fresh server, {options.idle_connections} connections "
            "opened with one GET / each, then held idle; RSS growth divided by "
            "the connections"
        )
    for h2 in H2_SCENARIOS:
        if h2.key in options.scenarios:
            lines.append(
                f"- {h2.title}: h2load -t1 -c{h2.connections} -m{h2.streams} "
                f"(cleartext, prior knowledge), GET {h2.path}; a warm-up run of "
                f"{max(options.warmup, H2_MIN_WARMUP):g} s (h2load -D) whose "
                "rate sizes the measured run (h2load -n) to about "
                f"{options.seconds:g} s"
            )
    if H2_MEMORY in options.scenarios:
        lines.append(
            f"- idle HTTP/2 memory: a fresh server, {options.idle_connections} "
            "connections opened with the client preface, SETTINGS and one GET / "
            "each (the response read whole, the server's SETTINGS acknowledged), "
            "then held idle; RSS growth divided by the connections"
        )
    if WEBSOCKET in options.scenarios:
        lines.append(
            f"- WebSocket echo: {options.ws_connections} connections to /ws, one "
            f"{len(wsload.MESSAGE)}-byte text message in flight on each "
            "(uvicorn-h11 runs --ws wsproto)"
        )
    return lines


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGINT/SIGTERM/SIGHUP into KeyboardInterrupt, so every cleanup runs.

    SIGINT too, because a shell starts background jobs with SIGINT ignored.
    """

    interrupted = False

    def handler(signum: int, frame: FrameType | None) -> None:
        # Only the first signal interrupts: later ones must not cut short
        # the cleanup that the first one started.
        nonlocal interrupted
        if not interrupted:
            interrupted = True
            raise KeyboardInterrupt(f"signal {signum}")

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def export_revision(revision: str, into: Path, *paths: str) -> Path:
    """A clean copy of the repository (or of ``paths`` in it) at ``revision``."""
    into.mkdir()
    archive = subprocess.run(
        ["git", "archive", "--format=tar", revision, "--", *paths],
        cwd=REPO_ROOT,
        capture_output=True,
        check=False,
        timeout=60,
    )
    if archive.returncode != 0:
        raise ServerError(
            f"Cannot export revision {revision!r}: {archive.stderr.decode().strip()}"
        )
    subprocess.run(
        ["tar", "-x", "-C", str(into)], input=archive.stdout, check=True, timeout=60
    )
    return into


def export_package(revision: str, into: Path) -> Path:
    """The triasgi package of ``revision`` alone, exported under ``into``.

    Returns the directory to import it from: ``into``, or ``into/src`` for
    a revision with the package in src/.  Nothing else is exported, so that
    a server that imports triasgi from there still imports the app (and
    benchmarks/) from the working tree.
    """
    listed = subprocess.run(
        ["git", "ls-tree", "--name-only", revision, "--"]
        + [f"{root}triasgi/__init__.py" for root in ("", "src/")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    found = listed.stdout.split()
    if listed.returncode != 0 or not found:
        raise ServerError(f"Revision {revision} has no triasgi package to export.")
    package = str(Path(found[0]).parent)
    export_revision(revision, into, package)
    return into / Path(package).parent


def check_imports(source: Path, triasgi_from: Path, commit: str) -> None:
    """Check that a twin imports triasgi from its export and the app from source."""
    where = imported_from(source, triasgi_from)
    if not where["triasgi"].is_relative_to(triasgi_from.resolve()):
        raise ServerError(
            f"The servers @{commit} would import triasgi from {where['triasgi']}, "
            f"not from the export in {triasgi_from}."
        )
    if not where["benchmarks.apps"].is_relative_to(source.resolve()):
        raise ServerError(
            f"The servers @{commit} would import the app from "
            f"{where['benchmarks.apps']}, not from {source}."
        )
    _log(
        f"servers @{commit}: triasgi from {where['triasgi']}, "
        f"the app from {where['benchmarks.apps']}"
    )


def run(options: Options, results: Results, workdir: Path) -> Options:
    """Run every round; returns the options with the pace calibrated."""
    source = REPO_ROOT
    if options.revision is not None:
        source = export_revision(options.revision, workdir / "source")
    triasgi_from: Path | None = None
    if options.baseline_commit is not None:
        commit = options.baseline_commit
        triasgi_from = export_package(commit, workdir / f"baseline-{commit}")
        check_imports(source, triasgi_from, commit)
    http_scenarios = [s for s in HTTP_SCENARIOS if s.key in options.scenarios]
    want_memory = MEMORY in options.scenarios
    want_ws = WEBSOCKET in options.scenarios
    want_file = FILE in options.scenarios
    app_env: dict[str, str] = {}
    if want_file:
        # In the run's temporary directory, so that it goes when the run ends.
        app_env[apps.FILE_ENV] = str(apps.write_file(workdir / "file-16m.bin"))
    ws_servers = [n for n in options.servers if server_spec(n).websocket]
    no_ws = [n for n in ws_servers if split_name(n)[0] == "triasgi"]
    if want_ws and no_ws and not (source / _WS_EXAMPLE).exists():
        for name in no_ws:
            ws_servers.remove(name)
        results.notes.append(
            f"WebSocket echo: {', '.join(no_ws)} skipped, triasgi's WebSocket "
            "support has not landed yet (examples/ws_echo.py does not exist); the "
            "other servers were run so that the client stays tested."
        )
    if want_memory:
        needed = options.idle_connections + 1000
        got = _raise_nofile(needed)
        if got < needed:
            want_memory = False
            results.notes.append(
                f"Idle memory skipped: the open-files limit is {got}, below the "
                f"{needed} that {options.idle_connections} connections need."
            )
    h2_servers: list[str] = []
    if set(options.scenarios) & set(H2_KEYS):
        h2_servers = [n for n in options.servers if server_spec(n).http2]
        if H2_MEMORY in options.scenarios:
            _raise_nofile(options.idle_connections + 1000)
        no_h2 = [n for n in options.servers if n not in h2_servers]
        if no_h2:
            results.notes.append(
                f"HTTP/2: {', '.join(no_h2)} skipped, "
                f"{'it does' if len(no_h2) == 1 else 'they do'} not serve HTTP/2 "
                "with prior knowledge."
            )
    h2_problems: dict[str, str | None] = {}

    def serve(spec: ServerSpec) -> contextlib.AbstractContextManager[RunningServer]:
        return running(
            spec,
            core=options.server_core,
            log_dir=workdir,
            source=source,
            triasgi_from=triasgi_from if spec.revision is not None else None,
            extra_env=app_env,
        )

    options = calibrated(options, results, serve)
    verified: set[str] = set()
    advertised: dict[str, bool] = {}
    for round_index in range(options.rounds):
        for name in rotated(options.servers, round_index):
            spec = server_spec(name)
            tag = f"[round {round_index + 1}/{options.rounds}] {name}"
            scenarios = [
                s for s in http_scenarios if spec.only is None or s.key in spec.only
            ]
            if scenarios or (want_ws and name in ws_servers):
                with serve(spec) as server:
                    if name not in verified:
                        file_here = any(s.key == FILE for s in scenarios)
                        verify(server, spec.only, with_file=file_here)
                        if file_here:
                            advertised[name] = advertises_pathsend(server)
                        verified.add(name)
                    for scenario in scenarios:
                        sample = run_http(server, scenario, options, workdir)
                        results.add_http(scenario.key, name, sample)
                        _log(f"{tag} {scenario.key}: {_describe(sample)}")
                    if want_ws and name in ws_servers:
                        _websocket_cell(server, spec, options, results, ws_servers, tag)
            if want_memory:
                with serve(spec) as server:
                    per_conn = measure_idle_memory(server, options)
                results.memory.setdefault(name, []).append(per_conn)
                _log(f"{tag} idle memory: {per_conn / 1024:.1f} KiB per connection")
            if name in h2_servers:
                _http2_turn(spec, options, results, serve, h2_problems, tag)
    if advertised:
        results.notes.append(pathsend_note(advertised))
    return options


def _describe(sample: HttpSample) -> str:
    errors = f", {sample.errors} errors" if sample.errors else ""
    return (
        f"{sample.requests_per_s:,.0f} req/s, p50 {sample.p50_ms:.2f} ms, "
        f"p99 {sample.p99_ms:.2f} ms, {sample.cpu_us_per_request:,.0f} µs CPU/req"
        f"{errors}"
    )


def _websocket_cell(
    server: RunningServer,
    spec: ServerSpec,
    options: Options,
    results: Results,
    ws_servers: list[str],
    tag: str,
) -> None:
    if spec.flavour == "triasgi" and spec.name not in results.websocket:
        problem = probe_websocket(server, options.load_core)
        if problem is not None:
            ws_servers.remove(spec.name)
            results.notes.append(
                f"WebSocket echo: {spec.name} skipped, examples/ws_echo.py exists "
                f"but a WebSocket echo of the benchmark app failed: {problem}"
            )
            return
    rate, cpu = run_websocket(server, options)
    results.websocket.setdefault(spec.name, []).append(rate)
    if not math.isnan(cpu):
        results.websocket_cpu.setdefault(spec.name, []).append(cpu)
    _log(f"{tag} websocket: {rate:,.0f} messages/s, {cpu:,.0f} µs CPU per message")


def titles(options: Options) -> dict[str, str]:
    """The scenario titles of the report; the paced one names its rate."""
    if options.pace_share is not None:
        return TITLES
    return {**TITLES, PACED: f"hello GET, {options.pace:,.0f} req/s offered"}


def main(argv: list[str] | None = None) -> int:
    """Run the harness; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    options = parse_args(argv)
    if options.baseline is not None:
        try:
            options = with_baseline(options, resolve_commit(options.baseline))
        except RevisionError as exc:
            print(exc, file=sys.stderr)
            return 2
    if wrk.find_wrk() is None and set(options.scenarios) & {
        s.key for s in HTTP_SCENARIOS
    }:
        print(wrk.INSTALL_HINT, file=sys.stderr)
        return 2
    if h2load.find_h2load() is None and set(options.scenarios) & {
        s.key for s in H2_SCENARIOS
    }:
        print(h2load.INSTALL_HINT, file=sys.stderr)
        return 2
    missing = _missing_packages(options.servers, options.scenarios)
    if missing:
        print(
            f"The benchmark peers are not installed ({', '.join(missing)} missing); "
            "run pip install -e '.[bench]' (or nox -s bench) first.",
            file=sys.stderr,
        )
        return 2
    if len(os.sched_getaffinity(0)) < 2:
        print(
            "The harness needs two cores (one for servers, one for load).",
            file=sys.stderr,
        )
        return 2
    results = Results(servers=list(options.servers))
    started = time.monotonic()
    try:
        with (
            _terminate_as_interrupt(),
            tempfile.TemporaryDirectory(prefix="triasgi-bench-") as tmp,
        ):
            options = run(options, results, Path(tmp))
    except KeyboardInterrupt:
        _log("Interrupted; every server was stopped.")
        return 130
    except (
        ServerError,
        wrk.WrkError,
        h2load.H2loadError,
        subprocess.TimeoutExpired,
    ) as exc:
        _log(f"The benchmark failed: {exc}")
        return 1
    _log(f"Done in {time.monotonic() - started:.0f} s.")
    report = header(options, argv) + format_report(results, titles(options))
    print(report, end="")
    if options.output is not None:
        options.output.write_text(report)
    if options.json is not None:
        raw = {
            "http": [
                {"scenario": sc, "server": sv, **asdict(s)}
                for (sc, sv), samples in results.http.items()
                for s in samples
            ],
            "memory_bytes_per_connection": results.memory,
            "http2": [
                {"scenario": sc, "server": sv, **asdict(s)}
                for (sc, sv), samples in results.h2.items()
                for s in samples
            ],
            "http2_memory_bytes_per_connection": results.h2_memory,
            "websocket_messages_per_second": results.websocket,
            "paced_requests_per_second_offered": (
                options.pace if PACED in options.scenarios else None
            ),
            "calibration_requests_per_second": results.calibration,
            "baseline_commit": options.baseline_commit,
            "notes": results.notes,
        }
        options.json.write_text(json.dumps(raw, indent=2) + "\n")
    return 0
