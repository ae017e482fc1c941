"""Results of a benchmark run, and their markdown tables.

Pure data and formatting, no I/O: tests/test_benchmarks.py checks the
medians, ratios, goal verdicts and tables on fixed numbers.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass, field

from .apps import FILE_SIZE

#: The server every ratio is taken against.
BASELINE = "uvicorn-h11"

#: The goals of the issue: (hello GET req/s ratio, hello p99 ratio, KiB/conn),
#: and the httptools parser's req/s ratio to uvicorn with httptools and uvloop.
MIN_HELLO_RATIO = 1.0
MIN_HTTPTOOLS_RATIO = 0.8
MAX_HELLO_P99_RATIO = 1.0
MAX_IDLE_KIB = 10.0
#: Paced p99s are compared only when both servers got the pace, within this.
PACED_RATE_TOLERANCE = 0.05
#: The large-file scenario, and its goal: at least this ratio of the
#: baseline's bytes per second, with less server CPU per request.
FILE = "file-16m"
MIB = 1 << 20
MIN_FILE_BYTES_RATIO = 1.5
#: The server every HTTP/2 ratio is taken against (uvicorn has no HTTP/2),
#: and the HTTP/2 goal: at least this ratio of its hello GET requests per
#: second, with no failed request.
H2_BASELINE = "hypercorn-asyncio"
H2_HELLO = "h2-hello"
MIN_H2_HELLO_RATIO = 2.0


@dataclass(frozen=True)
class HttpSample:
    """One wrk run of one scenario against one server."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int = 0
    requests: int = 0
    #: CPU time the server used during the measured run (0: not measured).
    cpu_seconds: float = 0.0

    @property
    def cpu_us_per_request(self) -> float:
        """Server CPU per request: less disturbed by a busy machine than req/s."""
        if not self.requests or not self.cpu_seconds:
            return math.nan
        return self.cpu_seconds / self.requests * 1e6


@dataclass(frozen=True)
class HttpSummary:
    """The medians over the rounds of one scenario and server."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    spread: float  # (max - min) / 2 / median of requests/s, over the rounds
    rounds: int
    errors: int
    cpu_us_per_request: float  # NaN when not measured


@dataclass(frozen=True)
class H2Sample:
    """One measured h2load run of one HTTP/2 scenario against one server."""

    #: Requests that succeeded (2xx or 3xx) per second of the run.
    requests_per_s: float
    #: What h2load was told to make, and what became of them (its counts:
    #: ``errored`` are failures without a status, resets and lost
    #: connections, ``timed_out`` a part of them; ``failed`` adds the
    #: responses with a 4xx or 5xx status).
    requests: int
    done: int
    succeeded: int
    failed: int = 0
    errored: int = 0
    timed_out: int = 0
    #: The mean time from request to whole response, in ms (NaN: none).
    mean_ms: float = math.nan
    seconds: float = 0.0
    #: CPU time the server used during the measured run (0: not measured).
    cpu_seconds: float = 0.0
    #: Tracebacks the server logged during the cell, warm-up included, and
    #: the last exception among them.
    server_errors: int = 0
    last_error: str = ""
    #: Whether the server process was gone at the end of the cell.
    exited: bool = False

    @property
    def unsuccessful(self) -> int:
        """Requests asked for that did not succeed, whatever the reason."""
        return max(self.requests - self.succeeded, self.failed)

    @property
    def cpu_us_per_request(self) -> float:
        """Server CPU per request that succeeded."""
        if not self.succeeded or not self.cpu_seconds:
            return math.nan
        return self.cpu_seconds / self.succeeded * 1e6


@dataclass
class Results:
    """Everything one run measured, keyed by scenario and server name."""

    servers: list[str]
    http: dict[tuple[str, str], list[HttpSample]] = field(default_factory=dict)
    #: bytes of RSS per idle keep-alive connection, one value per round.
    memory: dict[str, list[float]] = field(default_factory=dict)
    #: WebSocket echo messages per second, one value per round.
    websocket: dict[str, list[float]] = field(default_factory=dict)
    #: Server CPU microseconds per WebSocket message, one value per round.
    websocket_cpu: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: The baseline's hello GET req/s in the paced scenario's calibration run.
    calibration: float | None = None
    #: HTTP/2 scenarios (h2load), keyed as ``http``.
    h2: dict[tuple[str, str], list[H2Sample]] = field(default_factory=dict)
    #: bytes of RSS per idle HTTP/2 connection, one value per round.
    h2_memory: dict[str, list[float]] = field(default_factory=dict)

    def add_http(self, scenario: str, server: str, sample: HttpSample) -> None:
        self.http.setdefault((scenario, server), []).append(sample)

    def add_h2(self, scenario: str, server: str, sample: H2Sample) -> None:
        self.h2.setdefault((scenario, server), []).append(sample)

    def h2_scenarios(self) -> list[str]:
        """The HTTP/2 scenarios measured, in the order first measured."""
        return list(dict.fromkeys(scenario for scenario, _ in self.h2))

    def scenarios(self) -> list[str]:
        """The HTTP scenarios measured, in the order first measured."""
        seen: dict[str, None] = {}
        for scenario, _ in self.http:
            seen.setdefault(scenario, None)
        return list(seen)


def summarize(samples: list[HttpSample]) -> HttpSummary:
    """Medians over rounds; raises ValueError on no samples."""
    if not samples:
        raise ValueError("no samples to summarize")
    rates = [s.requests_per_s for s in samples]
    median = statistics.median(rates)
    spread = (max(rates) - min(rates)) / 2 / median if median else 0.0
    return HttpSummary(
        requests_per_s=median,
        p50_ms=statistics.median(s.p50_ms for s in samples),
        p99_ms=statistics.median(s.p99_ms for s in samples),
        spread=spread,
        rounds=len(samples),
        errors=sum(s.errors for s in samples),
        cpu_us_per_request=_nan_median([s.cpu_us_per_request for s in samples]),
    )


def _nan_median(values: list[float]) -> float:
    known = [v for v in values if not math.isnan(v)]
    return statistics.median(known) if known else math.nan


def ratio(value: float | None, base: float | None) -> float | None:
    """``value / base``, or None when either is missing, NaN, or base is zero."""
    if value is None or base is None or base == 0:
        return None
    if math.isnan(value) or math.isnan(base):
        return None
    return value / base


def _fmt_ratio(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}x"


def _fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def _fmt_ms(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.2f} ms" if value < 100 else f"{value:.0f} ms"


def _fmt_us(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.0f} µs"


def _table(header: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    right = [False] * left + [True] * (len(header) - left)
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---:" if r else "---" for r in right) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def http_table(results: Results, titles: dict[str, str] | None = None) -> list[str]:
    """The main table: req/s, p50, p99, each with its ratio to the baseline."""
    titles = titles or {}
    header = [
        "scenario",
        "server",
        "req/s",
        "vs h11",
        "spread",
        "p50",
        "vs h11",
        "p99",
        "vs h11",
        "CPU/req",
        "vs h11",
    ]
    rows = []
    for scenario in results.scenarios():
        base_samples = results.http.get((scenario, BASELINE))
        base = summarize(base_samples) if base_samples else None
        if base is None or not base.requests_per_s:
            base_rate = base_p50 = base_p99 = base_cpu = None
        else:
            base_rate, base_p50, base_p99 = (
                base.requests_per_s,
                base.p50_ms,
                base.p99_ms,
            )
            base_cpu = base.cpu_us_per_request
        for server in results.servers:
            samples = results.http.get((scenario, server))
            if not samples:
                continue
            s = summarize(samples)
            name = server + (" (errors!)" if s.errors else "")
            if not s.requests_per_s:
                # No response completed in a whole cell: no latency to show.
                name = server + " (no responses)"
                s = dataclasses.replace(s, p50_ms=math.nan, p99_ms=math.nan)
            rows.append(
                [
                    titles.get(scenario, scenario),
                    name,
                    _fmt_rate(s.requests_per_s),
                    _fmt_ratio(ratio(s.requests_per_s, base_rate)),
                    f"±{s.spread * 100:.0f}%",
                    _fmt_ms(s.p50_ms),
                    _fmt_ratio(ratio(s.p50_ms, base_p50)),
                    _fmt_ms(s.p99_ms),
                    _fmt_ratio(ratio(s.p99_ms, base_p99)),
                    _fmt_us(s.cpu_us_per_request),
                    _fmt_ratio(ratio(s.cpu_us_per_request, base_cpu)),
                ]
            )
    return _table(header, rows, left=2)


def mib_per_s(requests_per_s: float, response_bytes: int = FILE_SIZE) -> float:
    """Response bytes per second, in MiB/s, of ``requests_per_s`` responses."""
    return requests_per_s * response_bytes / MIB


def file_table(results: Results, scenario: str = FILE) -> list[str]:
    """The large-file scenario in bytes per second, with ratios to the baseline."""
    base_samples = results.http.get((scenario, BASELINE))
    base = summarize(base_samples) if base_samples else None
    base_rate = base.requests_per_s if base else None
    base_cpu = base.cpu_us_per_request if base else None
    rows = []
    for server in results.servers:
        samples = results.http.get((scenario, server))
        if not samples:
            continue
        s = summarize(samples)
        rows.append(
            [
                server + (" (errors!)" if s.errors else ""),
                f"{s.requests_per_s:,.1f}",
                f"{mib_per_s(s.requests_per_s):,.0f}",
                _fmt_ratio(ratio(s.requests_per_s, base_rate)),
                _fmt_us(s.cpu_us_per_request),
                _fmt_ratio(ratio(s.cpu_us_per_request, base_cpu)),
            ]
        )
    header = ["server", "req/s", "MiB/s", f"vs {BASELINE}", "CPU/req", f"vs {BASELINE}"]
    return _table(header, rows)


def file_goal(
    results: Results, server: str = "triasgi", scenario: str = FILE
) -> str | None:
    """The large-file goal's line, or None when the scenario did not run for both."""
    mine = results.http.get((scenario, server))
    base = results.http.get((scenario, BASELINE))
    if not mine or not base:
        return None
    m, b = summarize(mine), summarize(base)
    what = (
        f"{FILE_SIZE // MIB} MiB file: at least {MIN_FILE_BYTES_RATIO:.1f}x "
        f"{BASELINE}'s bytes per second with lower CPU per request"
    )
    rate = ratio(m.requests_per_s, b.requests_per_s)
    cpu = ratio(m.cpu_us_per_request, b.cpu_us_per_request)
    if not m.requests_per_s or rate is None or cpu is None:
        return f"{what}: not measured"
    met = rate >= MIN_FILE_BYTES_RATIO and cpu < 1.0
    return (
        f"{what}: {'met' if met else 'missed'} ({rate:.2f}x the bytes per "
        f"second, {mib_per_s(m.requests_per_s):,.0f} against "
        f"{mib_per_s(b.requests_per_s):,.0f} MiB/s; server CPU per request "
        f"{cpu:.2f}x)"
    )


def _median(values: list[float] | None) -> float | None:
    return statistics.median(values) if values else None


def memory_table(results: Results) -> list[str]:
    """KiB of RSS per idle keep-alive connection, and the ratio to the baseline."""
    base = _median(results.memory.get(BASELINE))
    rows = []
    for server in results.servers:
        value = _median(results.memory.get(server))
        if value is None:
            continue
        rows.append([server, f"{value / 1024:.1f}", _fmt_ratio(ratio(value, base))])
    return _table(["server", "KiB per idle connection", f"vs {BASELINE}"], rows)


def websocket_table(results: Results) -> list[str]:
    """WebSocket echo messages per second, and the ratio to the baseline."""
    base = _median(results.websocket.get(BASELINE))
    base_cpu = _median(results.websocket_cpu.get(BASELINE))
    rows = []
    for server in results.servers:
        value = _median(results.websocket.get(server))
        if value is None:
            continue
        cpu = _median(results.websocket_cpu.get(server))
        rows.append(
            [
                server,
                _fmt_rate(value),
                _fmt_ratio(ratio(value, base)),
                _fmt_us(math.nan if cpu is None else cpu),
                _fmt_ratio(ratio(cpu, base_cpu)),
            ]
        )
    header = ["server", "messages/s", f"vs {BASELINE}", "CPU/message", f"vs {BASELINE}"]
    return _table(header, rows)


def twins(servers: list[str]) -> list[tuple[str, str]]:
    """(server, its twin from another revision) pairs, e.g. (triasgi, triasgi@abc).

    The twins are the servers named ``NAME@COMMIT`` whose ``NAME`` also ran.
    """
    pairs = []
    for name in servers:
        flavour, at, _ = name.partition("@")
        if at and flavour in servers:
            pairs.append((flavour, name))
    return pairs


@dataclass(frozen=True)
class PairedRatio:
    """A ratio of two servers over the rounds that ran them both."""

    median: float  # of the per-round ratios
    spread: float  # (max - min) / 2 / median of the per-round ratios
    rounds: int


def paired_ratio(values: list[float], bases: list[float]) -> PairedRatio | None:
    """``values[i] / bases[i]`` round by round: their median and spread.

    Both servers run once in every round, so a round's ratio compares them
    on the same state of the machine; None when no round gives a ratio.
    """
    pairs = zip(values, bases, strict=False)
    ratios = [r for v, b in pairs if (r := ratio(v, b)) is not None]
    if not ratios:
        return None
    median = statistics.median(ratios)
    spread = (max(ratios) - min(ratios)) / 2 / median if median else 0.0
    return PairedRatio(median, spread, len(ratios))


def _fmt_paired(r: PairedRatio | None) -> str:
    return "n/a" if r is None else f"{r.median:.2f}x ±{r.spread * 100:.0f}%"


def twin_table(results: Results, titles: dict[str, str] | None = None) -> list[str]:
    """Each server over its twin from the baseline revision, per scenario."""
    titles = titles or {}
    header = ["scenario", "ratio", "req/s", "p50", "p99", "CPU/req"]
    rows = []
    pairs = twins(results.servers)
    for scenario in results.scenarios():
        for server, twin in pairs:
            mine = results.http.get((scenario, server))
            base = results.http.get((scenario, twin))
            if not mine or not base:
                continue
            cells = [
                paired_ratio(
                    [getattr(s, m) for s in mine], [getattr(s, m) for s in base]
                )
                for m in ("requests_per_s", "p50_ms", "p99_ms", "cpu_us_per_request")
            ]
            rows.append(
                [titles.get(scenario, scenario), f"{server} / {twin}"]
                + [_fmt_paired(c) for c in cells]
            )
    for server, twin in pairs:
        mine_ws, base_ws = results.websocket.get(server), results.websocket.get(twin)
        if mine_ws and base_ws:
            cpu = paired_ratio(
                results.websocket_cpu.get(server, []),
                results.websocket_cpu.get(twin, []),
            )
            rows.append(
                [
                    "WebSocket echo",
                    f"{server} / {twin}",
                    _fmt_paired(paired_ratio(mine_ws, base_ws)),
                    "",
                    "",
                    _fmt_paired(cpu),
                ]
            )
    return _table(header, rows, left=2) if rows else []


def twin_memory_lines(results: Results) -> list[str]:
    """One line per twin: the ratio of memory per idle connection."""
    lines = []
    for server, twin in twins(results.servers):
        mine, base = results.memory.get(server), results.memory.get(twin)
        if mine and base:
            lines.append(
                f"idle memory per connection, {server} / {twin}: "
                f"{_fmt_paired(paired_ratio(mine, base))}"
            )
    return lines


def goals(
    results: Results,
    server: str = "triasgi",
    hello: str = "hello",
    paced: str = "paced",
) -> list[str]:
    """One line per goal of the issue: met, missed, or not measured."""
    lines = []
    mine = results.http.get((hello, server))
    base = results.http.get((hello, BASELINE))
    m = summarize(mine) if mine else None
    b = summarize(base) if base else None
    r = ratio(m.requests_per_s, b.requests_per_s) if m and b else None
    r99 = ratio(m.p99_ms, b.p99_ms) if m and b else None
    if m and b and r is not None and r99 is not None and m.requests_per_s:
        verdict = "met" if r >= MIN_HELLO_RATIO else "missed"
        cpu = ratio(m.cpu_us_per_request, b.cpu_us_per_request)
        cpu_note = f"; server CPU per request {cpu:.2f}x" if cpu is not None else ""
        lines.append(
            f"hello GET req/s at least {MIN_HELLO_RATIO:.1f}x {BASELINE}: "
            f"{verdict} ({r:.2f}x{cpu_note})"
        )
        verdict = "met" if r99 <= MAX_HELLO_P99_RATIO else "missed"
        lines.append(
            f"hello GET p99 no worse than {BASELINE}, each server as fast as it "
            f"answers: {verdict} ({r99:.2f}x)"
        )
    else:
        lines.append("hello GET against the baseline: not measured")
    mine = results.http.get((paced, server))
    base = results.http.get((paced, BASELINE))
    if mine and base:
        m, b = summarize(mine), summarize(base)
        r99 = ratio(m.p99_ms, b.p99_ms) if m.requests_per_s else None
        rates = ratio(m.requests_per_s, b.requests_per_s)
        what = f"hello GET p99 no worse than {BASELINE} at the same offered rate"
        if r99 is not None and rates is not None:
            if abs(rates - 1) > PACED_RATE_TOLERANCE:
                # One of them fell behind the pace: not the same load any more.
                lines.append(
                    f"{what} (paced): not comparable, the two answered "
                    f"{m.requests_per_s:,.0f} and {b.requests_per_s:,.0f} "
                    "requests/s"
                )
            else:
                verdict = "met" if r99 <= MAX_HELLO_P99_RATIO else "missed"
                lines.append(f"{what} (paced): {verdict} ({r99:.2f}x)")
    fast = results.http.get((hello, "triasgi-httptools"))
    peer = results.http.get((hello, "uvicorn-httptools"))
    if fast and peer:
        f, p = summarize(fast), summarize(peer)
        r = ratio(f.requests_per_s, p.requests_per_s)
        cpu = ratio(f.cpu_us_per_request, p.cpu_us_per_request)
        if r is not None:
            verdict = "met" if r >= MIN_HTTPTOOLS_RATIO else "missed"
            cpu_note = f"; server CPU per request {cpu:.2f}x" if cpu is not None else ""
            lines.append(
                f"triasgi-httptools hello GET req/s at least "
                f"{MIN_HTTPTOOLS_RATIO:.1f}x uvicorn-httptools: {verdict} "
                f"({r:.2f}x{cpu_note})"
            )
    file_line = file_goal(results, server)
    if file_line is not None:
        lines.append(file_line)
    idle = _median(results.memory.get(server))
    if idle is not None:
        kib = idle / 1024
        verdict = "met" if kib < MAX_IDLE_KIB else "missed"
        lines.append(
            f"memory per idle connection under {MAX_IDLE_KIB:.0f} KiB: "
            f"{verdict} ({kib:.1f} KiB)"
        )
    else:
        lines.append("memory per idle connection: not measured")
    return lines


# -- HTTP/2 ---------------------------------------------------------------------


def _h2_verdict(samples: list[H2Sample]) -> str:
    """What a server's name carries in the HTTP/2 table when it misbehaved."""
    if any(s.exited for s in samples):
        return " (exited!)"
    if any(s.unsuccessful for s in samples):
        return " (failed requests!)"
    if any(s.server_errors for s in samples):
        return " (errors logged!)"
    return ""


def _fmt_failed(samples: list[H2Sample]) -> str:
    failed = sum(s.unsuccessful for s in samples)
    asked = sum(s.requests for s in samples)
    if not failed:
        return f"0 of {asked:,}"
    return f"{failed:,} of {asked:,} ({failed / asked:.1%})" if asked else f"{failed:,}"


def h2_table(results: Results, titles: dict[str, str] | None = None) -> list[str]:
    """The HTTP/2 table: req/s and CPU per request with their ratios, failures.

    The ratios to ``H2_BASELINE`` are paired: the median over the rounds of
    the two servers' ratio within each round, with its spread.
    """
    titles = titles or {}
    vs = f"vs {H2_BASELINE}"
    header = [
        "scenario",
        "server",
        "req/s",
        "spread",
        vs,
        "mean time",
        "CPU/req",
        vs,
        "failed",
        "tracebacks",
    ]
    rows = []
    for scenario in results.h2_scenarios():
        base = results.h2.get((scenario, H2_BASELINE), [])
        for server in results.servers:
            samples = results.h2.get((scenario, server))
            if not samples:
                continue
            rates = [s.requests_per_s for s in samples]
            median = statistics.median(rates)
            spread = (max(rates) - min(rates)) / 2 / median if median else 0.0
            rate_ratio = paired_ratio(rates, [b.requests_per_s for b in base])
            cpu_ratio = paired_ratio(
                [s.cpu_us_per_request for s in samples],
                [b.cpu_us_per_request for b in base],
            )
            rows.append(
                [
                    titles.get(scenario, scenario),
                    server + _h2_verdict(samples),
                    _fmt_rate(median),
                    f"±{spread * 100:.0f}%",
                    _fmt_paired(rate_ratio),
                    _fmt_ms(_nan_median([s.mean_ms for s in samples])),
                    _fmt_us(_nan_median([s.cpu_us_per_request for s in samples])),
                    _fmt_paired(cpu_ratio),
                    _fmt_failed(samples),
                    f"{sum(s.server_errors for s in samples):,}",
                ]
            )
    return _table(header, rows, left=2)


def h2_memory_table(results: Results) -> list[str]:
    """KiB of RSS per idle HTTP/2 connection, against ``H2_BASELINE`` and HTTP/1.1."""
    base = _median(results.h2_memory.get(H2_BASELINE))
    rows = []
    for server in results.servers:
        value = _median(results.h2_memory.get(server))
        if value is None:
            continue
        h1 = _median(results.memory.get(server))
        rows.append(
            [
                server,
                f"{value / 1024:.1f}",
                _fmt_ratio(ratio(value, base)),
                _fmt_ratio(ratio(value, h1)),
            ]
        )
    header = [
        "server",
        "KiB per idle HTTP/2 connection",
        f"vs {H2_BASELINE}",
        "vs its HTTP/1.1 connection",
    ]
    return _table(header, rows)


def h2_goals(results: Results, server: str = "triasgi") -> list[str]:
    """The HTTP/2 goal lines: the hello GET ratio, and no failed request."""
    if not results.h2:
        return []
    lines = []
    what = f"HTTP/2 hello GET req/s at least {MIN_H2_HELLO_RATIO:.1f}x {H2_BASELINE}"
    mine = results.h2.get((H2_HELLO, server))
    base = results.h2.get((H2_HELLO, H2_BASELINE))
    r = None
    if mine and base:
        r = paired_ratio(
            [s.requests_per_s for s in mine], [b.requests_per_s for b in base]
        )
    if mine and base and r is not None:
        verdict = "met" if r.median >= MIN_H2_HELLO_RATIO else "missed"
        cpu = paired_ratio(
            [s.cpu_us_per_request for s in mine],
            [b.cpu_us_per_request for b in base],
        )
        cpu_note = (
            f"; server CPU per request {_fmt_paired(cpu)}" if cpu is not None else ""
        )
        lines.append(
            f"{what}: {verdict} ({_fmt_paired(r)} over {r.rounds} round(s){cpu_note})"
        )
    else:
        lines.append(f"{what}: not measured")
    own = [
        (scenario, samples)
        for (scenario, name), samples in results.h2.items()
        if name == server
    ]
    if own:
        failed = sum(s.unsuccessful for _, ss in own for s in ss)
        asked = sum(s.requests for _, ss in own for s in ss)
        errors = sum(s.server_errors for _, ss in own for s in ss)
        exited = sum(s.exited for _, ss in own for s in ss)
        met = not (failed or errors or exited)
        detail = f"{failed:,} of {asked:,} requests failed"
        if errors:
            detail += f", {errors:,} tracebacks logged"
        if exited:
            detail += f", the server exited in {exited} cell(s)"
        lines.append(
            f"HTTP/2 without failed requests ({server}): "
            f"{'met' if met else 'missed'} ({detail})"
        )
    return lines


def h2_trouble(results: Results, titles: dict[str, str] | None = None) -> list[str]:
    """A note for each HTTP/2 cell where requests failed or the server erred.

    Says what h2load counted (resets and lost connections, time-outs, error
    statuses, requests never finished) and the last exception logged.
    """
    titles = titles or {}
    notes = []
    for (scenario, server), samples in results.h2.items():
        for index, s in enumerate(samples, 1):
            if not (s.unsuccessful or s.server_errors or s.exited):
                continue
            parts = []
            if s.unsuccessful:
                statuses = s.failed - s.errored
                unfinished = s.requests - s.succeeded - s.failed
                parts.append(
                    f"{s.unsuccessful:,} of {s.requests:,} requests failed "
                    f"({s.errored - s.timed_out:,} reset or lost with their "
                    f"connection, {s.timed_out:,} timed out, {statuses:,} with an "
                    f"error status, {max(unfinished, 0):,} never finished)"
                )
            if s.server_errors:
                last = f", the last: {s.last_error}" if s.last_error else ""
                parts.append(f"{s.server_errors:,} tracebacks in its log{last}")
            if s.exited:
                parts.append("the server process exited")
            notes.append(
                f"HTTP/2: {server}, {titles.get(scenario, scenario)}, sample "
                f"{index}: " + "; ".join(parts) + "."
            )
    return notes


def h2_section(results: Results, titles: dict[str, str] | None = None) -> list[str]:
    """The HTTP/2 part of the report: its tables and what they mean."""
    out: list[str] = []
    if results.h2:
        out += ["HTTP/2 (h2load, cleartext with prior knowledge):", ""]
        out += h2_table(results, titles)
        out += [
            "",
            f"Medians over rounds; spread is half the range of req/s over the "
            f'rounds; "vs {H2_BASELINE}" is the median of the ratios within '
            "each round, ± half their range relative to it (higher is better "
            "for req/s, lower for CPU). req/s counts the requests that "
            "succeeded; failed counts every request h2load was told to make "
            "that did not succeed, over all rounds; tracebacks are those the "
            "server logged during the cells.",
            "",
        ]
    if results.h2_memory:
        out += ["Idle HTTP/2 connections (RSS delta / connections):", ""]
        out += h2_memory_table(results)
        out.append("")
    return out


def format_report(results: Results, titles: dict[str, str] | None = None) -> str:
    """The whole markdown report: tables, goal verdicts, notes."""
    out: list[str] = []
    if results.http:
        out += http_table(results, titles)
        out += [
            "",
            f'Medians over rounds; "vs h11" is the ratio to {BASELINE} '
            "(higher is better for req/s, lower for latency and CPU); spread "
            "is half the range of req/s over the rounds; CPU/req is the CPU "
            "time the server process used per request, which a busy machine "
            "disturbs less than req/s.",
            "",
        ]
    if any(scenario == FILE for scenario, _ in results.http):
        out += [
            f"{FILE_SIZE // MIB} MiB file (Starlette FileResponse), bytes per second:",
            "",
        ]
        out += file_table(results)
        out += [
            "",
            f"MiB/s is req/s x {FILE_SIZE // MIB} MiB; CPU/req is the server's CPU "
            "time per file sent.",
            "",
        ]
    if results.memory:
        out += ["Idle keep-alive connections (RSS delta / connections):", ""]
        out += memory_table(results)
        out.append("")
    if results.websocket:
        out += [
            "WebSocket echo (small text messages, one in flight per connection):",
            "",
        ]
        out += websocket_table(results)
        out.append("")
    out += h2_section(results, titles)
    table, memory = twin_table(results, titles), twin_memory_lines(results)
    if table or memory:
        commits = sorted({twin.partition("@")[2] for _, twin in twins(results.servers)})
        out += [
            f"Against the baseline revision {', '.join(commits)} (`--baseline`):",
            "",
        ]
        if table:
            out += table
            out.append("")
        if memory:
            out += [f"- {line}" for line in memory]
            out.append("")
        out += [
            "Each ratio is the working tree's server over its twin run with the "
            "triasgi package of the baseline revision, e.g. triasgi / "
            f"triasgi@{commits[0]}: above 1x the working tree answers more "
            "requests or messages per second, or takes more time, CPU or memory. "
            "It is the median over the rounds of the two servers' ratio within "
            "each round, ± half the range of those ratios relative to it. "
            "WebSocket echo rows give messages/s and CPU per message.",
            "",
        ]
    out += ["Goals:", ""]
    if results.http or results.memory or not results.h2:
        out += [f"- {line}" for line in goals(results)]
    out += [f"- {line}" for line in h2_goals(results)]
    notes = results.notes + h2_trouble(results, titles)
    if notes:
        out += ["", "Notes:", ""]
        out += [f"- {note}" for note in notes]
    return "\n".join(out) + "\n"
