"""The benchmark harness's arithmetic and tables, on fixed numbers.

No server is started and nothing is timed: these keep the harness in
benchmarks/ from rotting between the runs that use it.
"""

from __future__ import annotations

import math
import socket
import subprocess
import threading

import h2.config
import h2.connection
import h2.events
import pytest
import trio
import trio.testing

from benchmarks import (
    apps,
    floor,
    h2get,
    h2load,
    h2protocol,
    harness,
    servers,
    wrk,
    wsload,
)
from benchmarks.report import (
    BASELINE,
    FILE,
    H2_BASELINE,
    H2Sample,
    HttpSample,
    Results,
    file_goal,
    format_report,
    goals,
    h2_goals,
    mib_per_s,
    paired_ratio,
    ratio,
    summarize,
    twins,
)

WRK_OUTPUT = """\
Running 5s test @ http://127.0.0.1:8000/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.01ms    1.20ms  40.10ms   91.00%
    Req/Sec    12.80k   500.00    13.50k    80.00%
  Latency Distribution
     50%  850.00us
     75%    5.20ms
     90%    6.00ms
     99%    1.20s
  64000 requests in 5.00s, 9.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  12800.50
Transfer/sec:      1.80MB
"""


def _results() -> Results:
    results = Results(servers=["triasgi", BASELINE])
    for rate, p99 in [(900.0, 12.0), (1100.0, 8.0), (1000.0, 10.0)]:
        sample = HttpSample(rate, 2.0, p99, requests=5000, cpu_seconds=1.0)
        results.add_http("hello", "triasgi", sample)
    for rate in [800.0, 800.0, 800.0]:
        sample = HttpSample(rate, 4.0, 20.0, requests=4000, cpu_seconds=1.6)
        results.add_http("hello", BASELINE, sample)
    results.memory = {"triasgi": [9 * 1024.0, 8 * 1024.0], BASELINE: [4 * 1024.0]}
    results.websocket = {BASELINE: [5000.0], "triasgi": [4000.0]}
    results.websocket_cpu = {BASELINE: [100.0], "triasgi": [150.0]}
    return results


def test_summary_takes_medians_over_rounds() -> None:
    summary = summarize(
        [
            HttpSample(900.0, 1.0, 12.0),
            HttpSample(1100.0, 3.0, 8.0, errors=2),
            HttpSample(1000.0, 2.0, 10.0),
        ]
    )
    assert summary.requests_per_s == 1000.0
    assert summary.p50_ms == 2.0
    assert summary.p99_ms == 10.0
    assert summary.spread == pytest.approx(0.1)
    assert summary.rounds == 3
    assert summary.errors == 2
    assert math.isnan(summary.cpu_us_per_request)  # no CPU time was measured


def test_cpu_per_request_is_server_time_over_requests() -> None:
    samples = [
        HttpSample(1.0, 1.0, 1.0, requests=1000, cpu_seconds=0.25),
        HttpSample(1.0, 1.0, 1.0, requests=1000, cpu_seconds=0.5),
        HttpSample(1.0, 1.0, 1.0, requests=0, cpu_seconds=0.5),  # skipped
    ]
    assert samples[0].cpu_us_per_request == pytest.approx(250.0)
    assert summarize(samples).cpu_us_per_request == pytest.approx(375.0)


def test_ratio_is_none_without_a_baseline() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(3.0, None) is None
    assert ratio(3.0, 0.0) is None


def test_report_shows_ratios_to_the_baseline() -> None:
    report = format_report(_results(), {"hello": "hello GET"})
    assert (
        "| hello GET | triasgi | 1,000 | 1.25x | ±10% | 2.00 ms | 0.50x | 10.00 ms |"
        " 0.50x | 200 µs | 0.50x |" in report
    )
    assert "| hello GET | uvicorn-h11 | 800 | 1.00x |" in report
    # Memory: median of 9 and 8 KiB is 8.5 KiB, against 4 KiB.
    assert "| triasgi | 8.5 | 2.12x |" in report
    assert "| uvicorn-h11 | 5,000 | 1.00x | 100 µs | 1.00x |" in report
    assert "| triasgi | 4,000 | 0.80x | 150 µs | 1.50x |" in report
    # Every table row has as many cells as its header.
    for line in report.splitlines():
        if line.startswith("| scenario"):
            width = line.count("|")
        elif line.startswith("| hello GET"):
            assert line.count("|") == width


def test_goals_say_met_or_missed() -> None:
    assert goals(_results()) == [
        "hello GET req/s at least 1.0x uvicorn-h11: met (1.25x; "
        "server CPU per request 0.50x)",
        "hello GET p99 no worse than uvicorn-h11, each server as fast as it "
        "answers: met (0.50x)",
        "memory per idle connection under 10 KiB: met (8.5 KiB)",
    ]
    slow = Results(servers=["triasgi", BASELINE])
    slow.add_http("hello", "triasgi", HttpSample(500.0, 2.0, 30.0))
    slow.add_http("hello", BASELINE, HttpSample(1000.0, 2.0, 20.0))
    slow.memory = {"triasgi": [12 * 1024.0]}
    assert goals(slow) == [
        "hello GET req/s at least 1.0x uvicorn-h11: missed (0.50x)",
        "hello GET p99 no worse than uvicorn-h11, each server as fast as it "
        "answers: missed (1.50x)",
        "memory per idle connection under 10 KiB: missed (12.0 KiB)",
    ]


def test_paced_p99_goal_compares_at_the_same_offered_rate() -> None:
    results = _results()
    results.add_http("paced", "triasgi", HttpSample(2000.0, 0.3, 0.9))
    results.add_http("paced", BASELINE, HttpSample(2000.0, 0.4, 1.2))
    assert (
        "hello GET p99 no worse than uvicorn-h11 at the same offered rate "
        "(paced): met (0.75x)"
    ) in goals(results)
    results.add_http("paced", "triasgi", HttpSample(2000.0, 0.3, 1.8))
    results.add_http("paced", "triasgi", HttpSample(2000.0, 0.3, 1.5))
    assert (
        "hello GET p99 no worse than uvicorn-h11 at the same offered rate "
        "(paced): missed (1.25x)"
    ) in goals(results)
    # Without a paced run there is no paced verdict.
    assert not any("paced" in line for line in goals(_results()))
    # A server that fell behind the pace was not at the same load.
    behind = _results()
    behind.add_http("paced", "triasgi", HttpSample(2000.0, 0.3, 0.9))
    behind.add_http("paced", BASELINE, HttpSample(1800.0, 0.4, 9.0))
    assert (
        "hello GET p99 no worse than uvicorn-h11 at the same offered rate "
        "(paced): not comparable, the two answered 2,000 and 1,800 requests/s"
    ) in goals(behind)


def test_paced_scenario_offers_the_pace_to_every_connection(tmp_path) -> None:
    options = harness.parse_args(["--pace", "4000"])
    paced = next(s for s in harness.HTTP_SCENARIOS if s.key == "paced")
    hello = next(s for s in harness.HTTP_SCENARIOS if s.key == "hello")
    # 64 connections, each waiting 16 ms on average: 4,000 requests/s.
    assert harness.think_time_ms(paced, options) == pytest.approx(16.0)
    assert harness.measured_seconds(paced, options) == 2 * options.seconds
    assert harness.measured_seconds(hello, options) == options.seconds
    assert harness.titles(options)["paced"] == "hello GET, 4,000 req/s offered"
    # By default, and with a percentage, the pace is a share of the baseline's
    # capacity, known only after the calibration run.
    default = harness.parse_args([])
    assert (default.pace, default.pace_share) == (0.0, 0.5)
    assert harness.parse_args(["--pace", "70%"]).pace_share == pytest.approx(0.7)
    with pytest.raises(ValueError):
        harness.think_time_ms(paced, default)
    assert harness.titles(default)["paced"] == "hello GET, paced"
    script = wrk.paced_script(tmp_path / "paced.lua", 16.0).read_text()
    assert script == (
        "local mean = 16.0\n"
        "function delay()\n"
        "  return 0.5 - mean * math.log(1 - math.random())\n"
        "end\n"
    )


def test_a_calibrated_pace_is_its_share_of_the_baseline() -> None:
    options = harness.parse_args(["--pace", "75%"])
    results = Results(servers=options.servers)
    paced = harness.paced_at(options, results, 8000.0)
    assert (paced.pace, paced.pace_share) == (6000.0, None)
    assert results.calibration == 8000.0
    assert results.notes == [
        "Paced scenario: 6,000 requests/s offered, 75% of the 8,000 requests/s "
        "that uvicorn-h11 answered on hello GET in a calibration run at the start."
    ]
    assert harness.titles(paced)["paced"] == "hello GET, 6,000 req/s offered"
    # A baseline so slow that the pace cannot be paced is a clear error.
    with pytest.raises(harness.ServerError, match="give --pace in requests"):
        harness.paced_at(options, Results(servers=[]), 1.0)


def test_httptools_goal_compares_with_uvicorn_httptools() -> None:
    results = Results(servers=["triasgi-httptools", "uvicorn-httptools"])
    results.add_http(
        "hello",
        "triasgi-httptools",
        HttpSample(700.0, 2.0, 9.0, requests=700, cpu_seconds=0.7),
    )
    results.add_http(
        "hello",
        "uvicorn-httptools",
        HttpSample(1000.0, 1.0, 5.0, requests=1000, cpu_seconds=0.5),
    )
    assert (
        "triasgi-httptools hello GET req/s at least 0.8x uvicorn-httptools: "
        "missed (0.70x; server CPU per request 2.00x)"
    ) in goals(results)
    results.add_http("hello", "triasgi-httptools", HttpSample(900.0, 2.0, 9.0))
    results.add_http("hello", "triasgi-httptools", HttpSample(900.0, 2.0, 9.0))
    assert any(
        line.startswith("triasgi-httptools") and ": met (0.90x" in line
        for line in goals(results)
    )


def test_a_cell_without_responses_shows_no_latency() -> None:
    results = Results(servers=["triasgi", BASELINE])
    results.add_http("stream", BASELINE, HttpSample(100.0, 50.0, 90.0))
    results.add_http("stream", "triasgi", HttpSample(0.0, 0.0, 0.0))
    report = format_report(results)
    assert (
        "| stream | triasgi (no responses) | 0 | 0.00x | ±0% | n/a | n/a | n/a | n/a |"
        " n/a | n/a |" in report
    )


def test_the_file_scenario_is_a_16_mib_get_with_few_connections() -> None:
    (scenario,) = [s for s in harness.HTTP_SCENARIOS if s.key == FILE]
    assert (scenario.title, scenario.path, scenario.connections) == (
        "16 MiB file",
        "/file-16m",
        4,
    )
    assert apps.FILE_SIZE == 16 << 20
    assert FILE in harness.SCENARIOS
    options = harness.parse_args(["--scenarios", FILE, "--servers", "triasgi"])
    assert options.scenarios == [FILE]
    # Every HTTP server runs it, as the 64 KiB response; the floors run neither.
    takes_part = [
        name
        for name, spec in servers.SERVERS.items()
        if spec.only is None or FILE in spec.only
    ]
    assert takes_part == [
        name
        for name, spec in servers.SERVERS.items()
        if spec.only is None or "64k" in spec.only
    ]
    assert "trio-floor" not in takes_part
    assert {"triasgi", "uvicorn-h11", "hypercorn-trio"} <= set(takes_part)
    (line,) = harness._scenario_lines(options)
    assert line.startswith("- 16 MiB file: wrk -t1 -c4 --latency, GET /file-16m, ")
    assert "Starlette FileResponse" in line


def test_the_file_scenario_needs_starlette(monkeypatch) -> None:
    found = {"uvicorn", "h11", "wsproto"}
    monkeypatch.setattr(
        harness.importlib.util,
        "find_spec",
        lambda name: object() if name in found else None,
    )
    assert harness._missing_packages([BASELINE], ["hello"]) == []
    assert harness._missing_packages([BASELINE], ["hello", FILE]) == ["starlette"]


def test_file_bytes_per_second_are_requests_times_16_mib() -> None:
    assert mib_per_s(1.0) == 16.0
    assert mib_per_s(12.5) == 200.0
    assert mib_per_s(3.0, response_bytes=1 << 20) == 3.0
    assert mib_per_s(0.0) == 0.0


def _file_results(rate: float, cpu_seconds: float) -> Results:
    """triasgi at ``rate`` files/s and ``cpu_seconds`` for 100 files; h11 at 20."""
    results = Results(servers=["triasgi", BASELINE, "hypercorn-trio"])
    results.add_http(
        FILE, BASELINE, HttpSample(20.0, 150.0, 300.0, requests=100, cpu_seconds=2.0)
    )
    results.add_http(
        FILE,
        "triasgi",
        HttpSample(rate, 80.0, 120.0, requests=100, cpu_seconds=cpu_seconds),
    )
    results.add_http(
        FILE,
        "hypercorn-trio",
        HttpSample(10.0, 300.0, 500.0, requests=100, cpu_seconds=4.0),
    )
    return results


def test_the_file_report_gives_mib_per_second_and_cpu_per_file() -> None:
    report = format_report(_file_results(40.0, 0.5), {FILE: "16 MiB file"})
    assert "16 MiB file (Starlette FileResponse), bytes per second:" in report
    assert (
        "| server | req/s | MiB/s | vs uvicorn-h11 | CPU/req | vs uvicorn-h11 |"
        in report
    )
    assert "| triasgi | 40.0 | 640 | 2.00x | 5,000 µs | 0.25x |" in report
    assert "| uvicorn-h11 | 20.0 | 320 | 1.00x | 20,000 µs | 1.00x |" in report
    assert "| hypercorn-trio | 10.0 | 160 | 0.50x | 40,000 µs | 2.00x |" in report
    # The main table has the scenario too, with its ratios to the baseline.
    assert "| 16 MiB file | triasgi | 40 | 2.00x | ±0% | 80.00 ms | 0.53x |" in report
    # No file table when the scenario did not run.
    assert "MiB/s" not in format_report(_results())


def test_the_file_goal_wants_more_bytes_and_less_cpu() -> None:
    what = (
        "16 MiB file: at least 1.5x uvicorn-h11's bytes per second with lower "
        "CPU per request"
    )
    met = _file_results(30.0, 1.0)
    assert file_goal(met) == (
        f"{what}: met (1.50x the bytes per second, 480 against 320 MiB/s; "
        "server CPU per request 0.50x)"
    )
    assert file_goal(met) in goals(met)
    slow = file_goal(_file_results(29.0, 1.0))
    assert slow is not None
    assert slow.startswith(f"{what}: missed (1.45x")
    costly = file_goal(_file_results(40.0, 2.0))  # as much CPU as uvicorn-h11
    assert costly is not None
    assert costly.startswith(f"{what}: missed (2.00x")
    assert costly.endswith("server CPU per request 1.00x)")
    unmeasured = Results(servers=["triasgi", BASELINE])
    unmeasured.add_http(FILE, "triasgi", HttpSample(30.0, 1.0, 1.0))
    unmeasured.add_http(FILE, BASELINE, HttpSample(20.0, 1.0, 1.0))
    assert file_goal(unmeasured) == f"{what}: not measured"
    # Not run for both: no line, and the other goals are as before.
    assert file_goal(_results()) is None
    assert not any(line.startswith("16 MiB") for line in goals(_results()))


def test_the_pathsend_note_names_the_servers_that_advertised_it() -> None:
    note = harness.pathsend_note(
        {"triasgi": True, BASELINE: False, "hypercorn-trio": False}
    )
    assert note == (
        "16 MiB file: triasgi advertised http.response.pathsend (FileResponse "
        "sent the path, the server sent the file); uvicorn-h11, hypercorn-trio "
        "did not advertise http.response.pathsend (FileResponse read the file "
        "and sent it in 64 KiB http.response.body messages)."
    )
    assert harness.pathsend_note({BASELINE: False}) == (
        "16 MiB file: uvicorn-h11 did not advertise http.response.pathsend "
        "(FileResponse read the file and sent it in 64 KiB http.response.body "
        "messages)."
    )


async def _get_file(extensions: dict | None) -> list[dict]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "path": "/file-16m",
        "query_string": b"",
        "headers": [],
    }
    if extensions is not None:
        scope["extensions"] = extensions
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await apps.app(scope, receive, send)
    return sent


async def test_the_app_serves_the_file_by_path_when_advertised(
    tmp_path, monkeypatch
) -> None:
    path = apps.write_file(tmp_path / "file.bin")
    assert path.read_bytes() == apps.file_bytes()
    assert len(apps.file_bytes()) == apps.FILE_SIZE
    monkeypatch.setenv(apps.FILE_ENV, str(path))
    apps._served_file.cache_clear()
    try:
        start, *body = await _get_file(None)
        headers = dict(start["headers"])
        assert headers[b"x-pathsend"] == b"0"
        assert headers[b"content-length"] == b"%d" % apps.FILE_SIZE
        assert b"".join(m["body"] for m in body) == apps.file_bytes()
        start, *rest = await _get_file({apps.PATHSEND: {}})
        assert dict(start["headers"])[b"x-pathsend"] == b"1"
        assert rest == [{"type": apps.PATHSEND, "path": str(path)}]
    finally:
        apps._served_file.cache_clear()


def test_wrk_output_is_parsed_in_milliseconds() -> None:
    sample = wrk.parse_output(WRK_OUTPUT)
    assert sample.requests_per_s == 12800.5
    assert sample.p50_ms == pytest.approx(0.85)
    assert sample.p99_ms == pytest.approx(1200.0)
    assert sample.errors == 7
    assert sample.requests == 64000


def test_unreadable_wrk_output_is_an_error() -> None:
    with pytest.raises(wrk.WrkError):
        wrk.parse_output("unable to connect to 127.0.0.1:8000 Connection refused\n")


# -- HTTP/2: h2load's output, the HTTP/2 tables and goals ----------------------

H2LOAD_OUTPUT = """\
starting benchmark...
spawning thread #0: 10 total client(s). 3000 total requests
Application protocol: h2c

finished in 2.44s, 1229.28 req/s, 45.10KB/s
requests: 3000 total, 3000 started, 3000 done, 2990 succeeded, 10 failed, 6 errored, 2 timeout
status codes: 2994 2xx, 0 3xx, 0 4xx, 4 5xx
traffic: 110.06KB (112700) total, 15.60KB (15970) headers (space savings 95.12%), 41.02KB (42000) data
                     min         max         mean         sd        +/- sd
time for request:    51.78ms    178.12ms     81.17ms     28.87ms    87.00%
time for connect:      133us       568us       305us       128us    80.00%
time to 1st byte:   151.16ms    151.64ms    151.41ms       160us    80.00%
req/s           :     122.93      122.95      122.95        0.01    80.00%
"""

# A server that closed every connection: h2load counts all it was told to make.
H2LOAD_LOST = """\
finished in 687us, 0.00 req/s, 0B/s
requests: 100 total, 4 started, 0 done, 0 succeeded, 100 failed, 100 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 0B (0) total, 0B (0) headers (space savings 0.00%), 0B (0) data
                     min         max         mean         sd        +/- sd
time for request:        0us         0us         0us         0us     0.00%
"""

HYPERCORN_LOG = """\
[2026-12-06 12:42:35 +0000] [7970] [ERROR] Error in ASGI Framework
Traceback (most recent call last):
  File "hypercorn/trio/tcp_server.py", line 88, in protocol_send
trio.BusyResourceError: another task is currently sending data on this SocketStream
  + Exception Group Traceback (most recent call last):
  |   File "hypercorn/trio/tcp_server.py", line 60, in run
  | ExceptionGroup: Exceptions from Trio nursery (1 sub-exception)
  +-+---------------- 1 ----------------
    | Traceback (most recent call last):
    |   File "hypercorn/protocol/h2.py", line 154, in send_task
    | trio.ClosedResourceError: this socket was already closed
    +------------------------------------
Exception in callback StreamReaderProtocol.connection_made
"""


def test_h2load_output_is_read_as_successes_per_second() -> None:
    sample = h2load.parse_output(H2LOAD_OUTPUT)
    assert (sample.requests, sample.done, sample.succeeded) == (3000, 3000, 2990)
    assert (sample.failed, sample.errored, sample.timed_out) == (10, 6, 2)
    assert sample.seconds == pytest.approx(2.44)
    # Only the requests that succeeded are throughput.
    assert sample.requests_per_s == pytest.approx(2990 / 2.44)
    assert sample.mean_ms == pytest.approx(81.17)
    assert sample.unsuccessful == 10
    timed = H2Sample(1.0, requests=3000, done=3000, succeeded=2990, cpu_seconds=0.598)
    assert timed.cpu_us_per_request == pytest.approx(200.0)


def test_h2load_counts_the_requests_a_lost_connection_took() -> None:
    sample = h2load.parse_output(H2LOAD_LOST)
    assert sample.seconds == pytest.approx(687e-6)
    assert sample.requests_per_s == 0.0
    assert sample.unsuccessful == 100
    assert math.isnan(sample.mean_ms)
    assert math.isnan(sample.cpu_us_per_request)
    # A request asked for but never done counts as failed too.
    cut = H2LOAD_OUTPUT.replace(
        "3000 done, 2990 succeeded", "2995 done, 2985 succeeded"
    )
    assert h2load.parse_output(cut).unsuccessful == 15


def test_unreadable_h2load_output_is_an_error() -> None:
    with pytest.raises(h2load.H2loadError):
        h2load.parse_output("connect to 127.0.0.1:8000 failed\n")


def test_the_warm_up_rate_sizes_the_measured_run() -> None:
    assert h2load.measured_requests(2000.0, 5.0, 100) == 10_000
    # At least ten requests per stream in flight, even from a dead warm-up.
    assert h2load.measured_requests(0.0, 5.0, 100) == 1000
    assert h2load.measured_requests(30.0, 5.0, 16) == 160


def test_server_tracebacks_are_counted_once_per_group() -> None:
    assert h2load.count_tracebacks(HYPERCORN_LOG) == 2
    # The exception inside the group, not the group, and not a log message.
    assert h2load.last_exception(HYPERCORN_LOG) == (
        "trio.ClosedResourceError: this socket was already closed"
    )
    assert h2load.last_exception("all quiet\n") == ""


def test_the_http2_scenarios_and_servers() -> None:
    scenarios = {s.key: s for s in harness.H2_SCENARIOS}
    hello = scenarios["h2-hello"]
    assert (hello.path, hello.connections, hello.streams) == ("/", 10, 10)
    assert scenarios["h2-1mib"].path == "/1m"
    assert len(apps.DOWNLOAD) == 1 << 20
    # Run when named: they need h2load, and another baseline.
    assert harness.H2_KEYS == ["h2-hello", "h2-1mib", "h2-memory"]
    assert not set(harness.H2_KEYS) & set(harness.SCENARIOS)
    assert harness.parse_args(["--scenarios", "h2-1mib"]).scenarios == ["h2-1mib"]
    speaks_h2 = {name for name, spec in servers.SERVERS.items() if spec.http2}
    assert {"triasgi", "hypercorn-trio", "hypercorn-asyncio"} <= speaks_h2
    assert not {"uvicorn-h11", "uvicorn-httptools", "trio-floor"} & speaks_h2
    command = servers.SERVERS["hypercorn-asyncio"].command(8000)
    assert command[command.index("-k") + 1] == "asyncio"
    # The HTTP/2 baseline is added when an HTTP/2 scenario runs, as
    # uvicorn-h11 always is.
    options = harness.parse_args(["--servers", "triasgi", "--scenarios", "h2-hello"])
    assert options.servers == [BASELINE, "triasgi", H2_BASELINE]
    options = harness.parse_args(["--servers", "triasgi", "--scenarios", "hello"])
    assert H2_BASELINE not in options.servers
    lines = harness._scenario_lines(
        harness.parse_args(["--scenarios", "h2-hello,h2-memory", "--quick"])
    )
    assert lines[0].startswith(
        "- HTTP/2 hello GET: h2load -t1 -c10 -m10 (cleartext, prior knowledge), GET /;"
    )
    assert lines[1].startswith("- idle HTTP/2 memory: a fresh server, 1000 connections")


def test_http2_scenarios_need_h2load(monkeypatch, capsys) -> None:
    monkeypatch.setattr(h2load, "find_h2load", lambda: None)
    assert harness.main(["--scenarios", "h2-hello", "--servers", "triasgi"]) == 2
    assert capsys.readouterr().err == h2load.INSTALL_HINT + "\n"


def _h2(rate: float, cpu: float = 1.0, **counts: object) -> H2Sample:
    """A sample of 1,000 requests at ``rate``, all succeeded unless ``counts``."""
    fields: dict = {"requests": 1000, "done": 1000, "succeeded": 1000, "mean_ms": 50.0}
    fields.update(counts)
    return H2Sample(rate, cpu_seconds=cpu, **fields)


def _h2_results() -> Results:
    results = Results(servers=[BASELINE, "triasgi", "hypercorn-trio", H2_BASELINE])
    for tri, base in [(2200.0, 1000.0), (2500.0, 1000.0), (2000.0, 1000.0)]:
        results.add_h2("h2-hello", "triasgi", _h2(tri, cpu=0.3))
        results.add_h2("h2-hello", H2_BASELINE, _h2(base, cpu=0.6))
    crashed = _h2(
        0.0,
        succeeded=0,
        done=0,
        failed=1000,
        errored=1000,
        server_errors=4,
        last_error="trio.BusyResourceError: another task is sending",
        exited=True,
        mean_ms=math.nan,
    )
    results.add_h2("h2-hello", "hypercorn-trio", crashed)
    results.h2_memory = {"triasgi": [24 * 1024.0], H2_BASELINE: [32 * 1024.0]}
    results.memory = {"triasgi": [8 * 1024.0]}
    return results


def test_the_http2_report_gives_paired_ratios_and_failures() -> None:
    report = format_report(_h2_results(), harness.TITLES)
    lines = report.splitlines()
    # Ratios 2.2, 2.5 and 2.0 round by round: median 2.2, ± 0.25 / 2.2.
    assert (
        "| HTTP/2 hello GET | triasgi | 2,200 | ±11% | 2.20x ±11% | 50.00 ms "
        "| 300 µs | 0.50x ±0% | 0 of 3,000 | 0 |"
    ) in lines
    assert (
        "| HTTP/2 hello GET | hypercorn-trio (exited!) | 0 | ±0% | 0.00x ±0% "
        "| n/a | n/a | n/a | 1,000 of 1,000 (100.0%) | 4 |"
    ) in lines
    assert "| triasgi | 24.0 | 0.75x | 3.00x |" in lines
    assert "| hypercorn-asyncio | 32.0 | 1.00x | n/a |" in lines
    assert (
        "- HTTP/2 hello GET req/s at least 2.0x hypercorn-asyncio: met (2.20x ±11% "
        "over 3 round(s); server CPU per request 0.50x ±0%)"
    ) in lines
    assert (
        "- HTTP/2 without failed requests (triasgi): met (0 of 3,000 requests failed)"
        in (lines)
    )
    assert (
        "- HTTP/2: hypercorn-trio, HTTP/2 hello GET, sample 1: 1,000 of 1,000 "
        "requests failed (1,000 reset or lost with their connection, 0 timed out, "
        "0 with an error status, 0 never finished); 4 tracebacks in its log, the "
        "last: trio.BusyResourceError: another task is sending; the server "
        "process exited."
    ) in lines
    # An HTTP/2 run alone has no HTTP/1.1 goal lines.
    assert "- hello GET against the baseline: not measured" in lines
    results = _h2_results()
    results.memory = {}
    alone = format_report(results).splitlines()
    assert not any(line.startswith(("- hello GET", "- memory")) for line in alone)
    # Every table row has as many cells as its header.
    (header,) = [
        line
        for line in lines
        if line.startswith("| scenario | server | req/s | spread")
    ]
    for line in lines:
        if line.startswith("| HTTP/2 hello GET"):
            assert line.count("|") == header.count("|")


def test_the_http2_goals_are_missed_by_a_slow_or_failing_server() -> None:
    results = Results(servers=["triasgi", H2_BASELINE])
    results.add_h2("h2-hello", "triasgi", _h2(1500.0, failed=2, succeeded=998))
    results.add_h2("h2-hello", H2_BASELINE, _h2(1000.0))
    results.add_h2("h2-1mib", "triasgi", _h2(100.0, server_errors=1))
    assert h2_goals(results) == [
        "HTTP/2 hello GET req/s at least 2.0x hypercorn-asyncio: missed "
        "(1.50x ±0% over 1 round(s); server CPU per request 1.00x ±0%)",
        "HTTP/2 without failed requests (triasgi): missed (2 of 2,000 requests "
        "failed, 1 tracebacks logged)",
    ]
    alone = Results(servers=["triasgi"])
    alone.add_h2("h2-1mib", "triasgi", _h2(100.0))
    assert h2_goals(alone)[0] == (
        "HTTP/2 hello GET req/s at least 2.0x hypercorn-asyncio: not measured"
    )
    assert h2_goals(_results()) == []
    assert "HTTP/2" not in format_report(_results())


def _serve_h2_once(listener: socket.socket, body: bytes) -> None:
    """Answer one HTTP/2 connection's requests with ``body``, under flow control."""
    sock, _ = listener.accept()
    config = h2.config.H2Configuration(client_side=False, header_encoding=None)
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    sending: dict[int, bytes] = {}
    with sock:
        while data := sock.recv(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    conn.send_headers(event.stream_id, [(b":status", b"200")])
                    sending[event.stream_id] = body
            for stream_id, left in list(sending.items()):
                while left and (
                    size := min(
                        conn.local_flow_control_window(stream_id),
                        conn.max_outbound_frame_size,
                        len(left),
                    )
                ):
                    conn.send_data(stream_id, left[:size], end_stream=size == len(left))
                    left = left[size:]
                sending[stream_id] = left
                if not left:
                    del sending[stream_id]
            sock.sendall(conn.data_to_send())


def test_the_protocol_alone_answers_every_recorded_request() -> None:
    sent = h2protocol.record(30)
    # The preface, three batches of ten requests, and a credit or two.
    assert len(sent) >= 4
    # A clock that ticks once a reading: each phase counts its calls.
    ticks = iter(range(1000))
    spent = h2protocol.replay(sent, lambda: float(next(ticks)))
    assert spent == {"read": len(sent), "head": 30, "body": 30}


@pytest.mark.parametrize("size", [14, 1 << 20])
def test_the_http2_check_reads_a_body_larger_than_the_window(size: int) -> None:
    body = bytes(range(256)) * (size // 256) or b"Hello, world!\n"
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        server = threading.Thread(target=_serve_h2_once, args=(listener, body))
        server.start()
        try:
            assert h2get.get(port, "/1m", timeout=5) == (200, body)
        finally:
            server.join(5)


def test_an_idle_http2_connection_has_served_a_request() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        server = threading.Thread(target=_serve_h2_once, args=(listener, b"hi"))
        server.start()
        sock = h2get.open_connection(port, timeout=5)
        try:
            # Still open: the server has nothing more to say and waits.
            sock.settimeout(0.2)
            with pytest.raises(TimeoutError):
                sock.recv(1)
        finally:
            sock.close()
            server.join(5)


def test_quick_mode_and_defaults() -> None:
    quick = harness.parse_args(["--quick"])
    assert (quick.rounds, quick.seconds, quick.idle_connections) == (1, 2.0, 1000)
    full = harness.parse_args([])
    assert (full.rounds, full.seconds, full.idle_connections) == (3, 5.0, 5000)
    assert full.scenarios == harness.SCENARIOS
    assert quick.servers == full.servers
    assert quick.servers[0] == "triasgi"
    assert harness.parse_args(["--quick", "--rounds", "4"]).rounds == 4


def test_the_baseline_is_always_run() -> None:
    options = harness.parse_args(
        ["--servers", "triasgi", "--scenarios", "hello,memory"]
    )
    assert options.servers == [BASELINE, "triasgi"]
    assert options.scenarios == ["hello", "memory"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--servers", "nginx"],
        ["--scenarios", "hello,nope"],
        ["--rounds", "0"],
        ["--pace", "0"],
        ["--pace", "fast"],
        ["--pace", "0%"],
        ["--pace", "0.5%"],
        ["--pace", "150%"],
        ["--pace", "nan"],
        ["--pace", "inf"],
        ["--pace", "1e9"],
        ["--pace", "-5"],
        ["--server-core", "1", "--load-core", "1"],
    ],
)
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        harness.parse_args(argv)
    assert info.value.code == 2


def test_rounds_rotate_the_server_order() -> None:
    servers = ["a", "b", "c"]
    assert [harness.rotated(servers, i) for i in range(4)] == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
    ]


def test_websocket_client_splits_server_frames() -> None:
    big = b"x" * 300  # a 16-bit length
    stream = bytearray(wsload.server_frame(0x1, b"hi") + wsload.server_frame(0x9, big))
    stream += wsload.server_frame(0x1, b"tail")[:3]  # incomplete
    assert wsload.take_frames(stream) == [(0x1, b"hi"), (0x9, big)]
    assert stream == wsload.server_frame(0x1, b"tail")[:3]


@pytest.mark.parametrize(
    "serve",
    [
        floor._serve,
        floor._serve_with_app_task,
        floor._serve_without_yielding,
    ],
    ids=["trio-floor", "trio-floor-task", "trio-floor-noyield"],
)
async def test_floor_answers_every_request_head_on_a_keep_alive_connection(serve):
    # A socket pair: the no-yield floor writes to the socket directly.
    client_sock, server_sock = trio.socket.socketpair()
    client, server = trio.SocketStream(client_sock), trio.SocketStream(server_sock)
    request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, server)
        # Two pipelined heads, then a third one split across two writes.
        await client.send_all(request * 2)
        await client.send_all(request[:10])
        await client.send_all(request[10:])
        received = b""
        with trio.fail_after(5):
            while received.count(b"HTTP/1.1 200 OK") < 3:
                received += await client.receive_some()
        # The answering task has ended: a new head must start another one.
        await client.send_all(request)
        with trio.fail_after(5):
            while received.count(b"HTTP/1.1 200 OK") < 4:
                received += await client.receive_some()
        await client.aclose()
    assert received == floor.RESPONSE * 4


# -- --baseline: triasgi from another revision beside the working tree's -------


def test_twins_are_named_after_the_commit() -> None:
    assert servers.twin_name("triasgi", "a537609") == "triasgi@a537609"
    assert servers.split_name("triasgi-httptools@a537609") == (
        "triasgi-httptools",
        "a537609",
    )
    assert servers.split_name("uvicorn-h11") == ("uvicorn-h11", None)
    twin = servers.server_spec("triasgi-httptools@a537609")
    assert (twin.name, twin.flavour, twin.revision) == (
        "triasgi-httptools@a537609",
        "triasgi-httptools",
        "a537609",
    )
    # The same command line: only where triasgi is imported from differs.
    assert twin.command(8000) == servers.SERVERS["triasgi-httptools"].command(8000)
    assert servers.server_spec("triasgi") is servers.SERVERS["triasgi"]
    with pytest.raises(ValueError):
        servers.twin_name("uvicorn-h11", "a537609")
    with pytest.raises(KeyError):
        servers.server_spec("uvicorn-h11@a537609")


def test_baseline_adds_a_twin_after_each_triasgi_server() -> None:
    argv = ["--servers", "triasgi,triasgi-httptools,uvicorn-h11", "--baseline"]
    options = harness.parse_args([*argv, "HEAD~1"])
    assert options.baseline == "HEAD~1"
    assert options.baseline_commit is None
    assert options.servers == ["triasgi", "triasgi-httptools", BASELINE]
    options = harness.with_baseline(options, "a537609")
    assert options.baseline_commit == "a537609"
    assert options.servers == [
        "triasgi",
        "triasgi@a537609",
        "triasgi-httptools",
        "triasgi-httptools@a537609",
        BASELINE,
    ]
    # uvicorn-h11 is added first as always; the twins need no other package.
    quick = harness.parse_args(["--quick", "--servers", "triasgi", "--baseline", "v1"])
    assert harness.with_twins(quick.servers, "abc") == [
        BASELINE,
        "triasgi",
        "triasgi@abc",
    ]
    assert harness._missing_packages(["triasgi@abc"]) == []
    lines = harness._server_lines(["triasgi", "triasgi@abc"])
    assert "PYTHONPATH" not in lines[0]
    assert lines[1].startswith("- triasgi@abc: `python -m triasgi ")
    assert "triasgi package of abc that is first on PYTHONPATH" in lines[1]


def test_baseline_needs_a_triasgi_server() -> None:
    with pytest.raises(SystemExit) as info:
        harness.parse_args(["--servers", "hypercorn-trio", "--baseline", "HEAD"])
    assert info.value.code == 2


@pytest.mark.parametrize("revision", ["no-such-revision-x1", "-x", ""])
def test_a_bad_baseline_revision_exits_with_one_sentence(
    revision: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert harness.main([f"--baseline={revision}", "--servers", "triasgi"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"--baseline {revision!r} names no commit of the repository in "
        f"{harness.REPO_ROOT}.\n"
    )


def _twin_results() -> Results:
    twin = "triasgi@a537609"
    results = Results(servers=[BASELINE, "triasgi", twin])
    for server, rates, p99s, cpus in [
        ("triasgi", [1100.0, 1000.0], [9.0, 10.0], [0.9, 1.0]),
        (twin, [1000.0, 1000.0], [10.0, 10.0], [1.0, 1.0]),
        (BASELINE, [500.0, 500.0], [20.0, 20.0], [2.0, 2.0]),
    ]:
        for rate, p99, cpu in zip(rates, p99s, cpus, strict=True):
            sample = HttpSample(rate, 2.0, p99, requests=1000, cpu_seconds=cpu)
            results.add_http("hello", server, sample)
    results.memory = {"triasgi": [8 * 1024.0], twin: [10 * 1024.0]}
    results.websocket = {"triasgi": [3000.0], twin: [2000.0]}
    results.websocket_cpu = {"triasgi": [100.0], twin: [200.0]}
    return results


def test_paired_ratios_are_taken_round_by_round() -> None:
    # 1.1 in the first round and 1.0 in the second: median 1.05, ± 0.05.
    r = paired_ratio([1100.0, 1000.0], [1000.0, 1000.0])
    assert r is not None
    assert (r.median, r.rounds) == (pytest.approx(1.05), 2)
    assert r.spread == pytest.approx(0.05 / 1.05)
    # Each round against its own baseline, not the medians against each other.
    r = paired_ratio([10.0, 20.0], [5.0, 20.0])
    assert r is not None
    assert r.median == pytest.approx(1.5)
    assert paired_ratio([1.0], []) is None
    assert paired_ratio([1.0], [0.0]) is None
    assert twins([BASELINE, "triasgi", "triasgi@a", "triasgi-httptools@a"]) == [
        ("triasgi", "triasgi@a")
    ]


def test_the_report_shows_each_server_over_its_twin() -> None:
    report = format_report(_twin_results())
    lines = report.splitlines()
    assert "Against the baseline revision a537609 (`--baseline`):" in lines
    assert (
        "| hello | triasgi / triasgi@a537609 | 1.05x ±5% | 1.00x ±0% "
        "| 0.95x ±5% | 0.95x ±5% |"
    ) in lines
    assert (
        "| WebSocket echo | triasgi / triasgi@a537609 | 1.50x ±0% |  |  | 0.50x ±0% |"
    ) in lines
    assert "- idle memory per connection, triasgi / triasgi@a537609: 0.80x ±0%" in (
        lines
    )
    # The twin is in the tables against uvicorn-h11 too.
    assert any(
        line.startswith("| hello | triasgi@a537609 | 1,000 | 2.00x") for line in lines
    )
    # Without a twin there is no such section.
    assert "Against the baseline" not in format_report(_results())


def test_a_revision_exports_its_triasgi_package_alone(tmp_path) -> None:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=harness.REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if commit.returncode != 0:
        pytest.skip("not a git checkout")
    assert harness.resolve_commit("HEAD") == commit.stdout.strip()
    into = tmp_path / "export"
    found = harness.export_package("HEAD", into)
    assert [p.name for p in found.iterdir()] == ["triasgi"]
    where = servers.imported_from(harness.REPO_ROOT, found)
    assert where["triasgi"] == found.resolve() / "triasgi" / "__init__.py"
    assert where["benchmarks.apps"].is_relative_to(harness.REPO_ROOT)
    harness.check_imports(harness.REPO_ROOT, found, commit.stdout.strip())


def test_instruction_counts_come_from_the_callgrind_summary():
    from benchmarks.instructions import per_request, read_summary

    text = b"events: Ir\nsummary: 123456789\ntotals: 1\n"
    assert read_summary(text) == 123456789
    assert per_request(1_000_000, 3_000_000, 300, 1300) == 2000
    with pytest.raises(ValueError, match="no summary"):
        read_summary(b"events: Ir\n")
    with pytest.raises(ValueError, match="more requests"):
        per_request(1, 2, 10, 10)


def test_instructions_refuses_an_unknown_scenario(capsys):
    import shutil

    from benchmarks.instructions import main

    if shutil.which("valgrind") is None:
        with pytest.raises(SystemExit) as info:
            main(["--baseline", "HEAD", "--scenarios", "nope"])
        assert info.value.code == 2
        assert "valgrind is missing" in capsys.readouterr().err
    else:
        with pytest.raises(SystemExit) as info:
            main(["--baseline", "HEAD", "--scenarios", "nope"])
        assert info.value.code == 2
        assert "unknown scenario 'nope'" in capsys.readouterr().err


def test_builds_ratio_is_the_median_of_the_ratios_within_rounds_with_their_spread():
    from benchmarks import builds

    # Rounds: B/A = 0.8, 1.0, 1.2: median 1.0, half the range 0.2.
    assert builds.ratio_summary([10, 10, 10], [8, 10, 12]) == "1.00x ±20%"
