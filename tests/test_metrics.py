"""--metrics-bind: the real command serving real clients, scraped with httpx.

Every count is checked exactly, against what the clients did.  Under
--workers the workers report with their heartbeat, so a scrape catches up
within a second or so: the tests poll, within a bound, for the counts they
expect.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import hello_app
from h2.errors import ErrorCodes
from h2client import H2Client
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from test_supervisor import Supervisor
from test_supervisor import app_dir as app_dir  # the fixtures of start
from test_supervisor import start as start
from websockets.trio.client import connect as websockets_connect

from triasgi.testing import open_server

APP = textwrap.dedent(
    """
    import os

    import trio

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            message = await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            message = await receive()
            while message["type"] == "websocket.receive":
                await send({"type": "websocket.send", "text": message["text"]})
                message = await receive()
            return
        path = scope["path"]
        body = b""
        more_body = True
        while more_body:
            message = await receive()
            body += message.get("body", b"")
            more_body = message.get("more_body", False)
        if path in ("/hang", "/leave"):
            print("app got", path, flush=True)
        if path == "/hang":
            await trio.sleep_forever()  # until the grace period runs out
        if path == "/leave":
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        if path == "/crash":
            raise RuntimeError("the app crashed")
        status = int(path.rpartition("/")[2]) if path.startswith("/status/") else 200
        payload = body or str(os.getpid()).encode()
        await send({"type": "http.response.start", "status": status})
        await send({"type": "http.response.body", "body": payload})
    """
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def metrics_app(app_dir: Path) -> str:
    (app_dir / "metricsapp.py").write_text(APP)
    return "metricsapp:app"


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and labels, parsed by prometheus_client."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; a series not there yet counts 0."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def requests_total(samples: Samples, method: str, status: int, protocol: str) -> float:
    labels = {"method": method, "status": str(status), "protocol": protocol}
    return value(samples, "triasgi_requests_total", **labels)


async def scrape(client: httpx.AsyncClient, url: str) -> Samples:
    response = await client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    return parse(response.text)


async def scrape_until(
    client: httpx.AsyncClient,
    url: str,
    condition: Callable[[Samples], bool],
    within: float = 15,
) -> Samples:
    """Scrape until ``condition`` holds; fail with the last scrape if it never does."""
    samples: Samples = {}
    with trio.move_on_after(within):
        while True:
            samples = await scrape(client, url)
            if condition(samples):
                return samples
            await trio.sleep(0.05)
    raise AssertionError(f"the condition never held; the last scrape: {samples}")


def metrics_url(supervisor: Supervisor) -> str:
    match = re.search(
        r"Serving metrics on (http://127\.0\.0\.1:\d+/metrics)", supervisor.log()
    )
    assert match is not None, supervisor.log()
    return match.group(1)


async def serve(start: Any, app: str, *args: str) -> tuple[Supervisor, str, str]:
    """The command with metrics on a port of its own: (process, app URL, metrics URL)."""
    served = await start("--metrics-bind", "127.0.0.1:0", *args, app=app)
    await served.wait_for_log("Serving metrics on")
    return served, f"http://127.0.0.1:{served.port}", metrics_url(served)


async def test_scrapes_under_load_count_every_request_exactly(start, metrics_app):
    _, url, metrics = await serve(start, metrics_app, "--no-access-log")
    # (method, path, body) of each request, all sent at once.
    load = (
        [("GET", "/", b"")] * 40
        + [("POST", "/echo", b"x" * 1000)] * 10
        + [("PUT", "/status/201", b"abc")] * 5
        + [("GET", "/status/404", b"")] * 5
        + [("DELETE", "/status/503", b"")] * 3
        + [("GET", "/crash", b"")] * 3
    )
    answered: Counter[tuple[str, int]] = Counter()
    body_bytes_out = 0
    scrapes: list[Samples] = []
    load_done = trio.Event()

    async def send(client: httpx.AsyncClient, method: str, path: str, body: bytes):
        nonlocal body_bytes_out
        response = await client.request(method, url + path, content=body)
        answered[method, response.status_code] += 1
        if response.status_code != 500:
            body_bytes_out += len(response.content)

    async def scrape_during_load(client: httpx.AsyncClient) -> None:
        while not load_done.is_set():
            scrapes.append(await scrape(client, metrics))
            await trio.sleep(0.01)

    async def websocket_echo() -> None:
        ws_url = url.replace("http", "ws") + "/ws"
        async with websockets_connect(ws_url, proxy=None) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"

    limits = httpx.Limits(max_connections=8)
    async with (
        httpx.AsyncClient(limits=limits) as client,
        httpx.AsyncClient() as scraper,
    ):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(scrape_during_load, scraper)
            async with trio.open_nursery() as clients:
                for request in load:
                    clients.start_soon(send, client, *request)
                for _ in range(2):
                    clients.start_soon(websocket_echo)
            load_done.set()
        samples = await scrape(scraper, metrics)
    assert answered == {
        ("GET", 200): 40,
        ("POST", 200): 10,
        ("PUT", 201): 5,
        ("GET", 404): 5,
        ("DELETE", 503): 3,
        ("GET", 500): 3,
    }
    for (method, status), count in answered.items():
        assert requests_total(samples, method, status, "http/1.1") == count
    assert requests_total(samples, "GET", 101, "websocket") == 2
    counted = sum(
        v for (name, _), v in samples.items() if name == "triasgi_requests_total"
    )
    assert counted == len(load) + 2
    assert value(
        samples, "triasgi_request_duration_seconds_count", protocol="http/1.1"
    ) == len(load)
    assert value(
        samples,
        "triasgi_request_duration_seconds_bucket",
        protocol="http/1.1",
        le="+Inf",
    ) == len(load)
    assert (
        value(samples, "triasgi_request_duration_seconds_sum", protocol="http/1.1") > 0
    )
    assert (
        value(samples, "triasgi_request_duration_seconds_count", protocol="websocket")
        == 2
    )
    assert value(samples, "triasgi_request_body_bytes_total") == 10 * 1000 + 5 * 3
    assert value(samples, "triasgi_response_body_bytes_total") == body_bytes_out
    assert value(samples, "triasgi_disconnects_total", protocol="http/1.1") == 0
    assert value(samples, "triasgi_grace_cancellations_total") == 0
    # Scrapes under load parsed, and no counter ever went back.
    assert scrapes
    for before, after in zip(scrapes, [*scrapes[1:], samples], strict=True):
        for key, count in before.items():
            if key[0].endswith("_total"):
                assert after[key] >= count, key


async def test_open_connections_and_requests_in_flight_are_gauges(start, metrics_app):
    served, _, metrics = await serve(
        start, metrics_app, "--no-access-log", "--disconnect-grace-period", "0.1"
    )
    host, port = "127.0.0.1", served.port
    async with httpx.AsyncClient() as scraper:
        before = await scrape(scraper, metrics)
        streams = [await trio.open_tcp_stream(host, port) for _ in range(3)]
        try:
            samples = await scrape_until(
                scraper, metrics, lambda s: value(s, "triasgi_connections_open") == 3
            )
            assert value(samples, "triasgi_requests_in_flight") == 0
            await streams[0].send_all(b"GET /hang HTTP/1.1\r\nhost: test\r\n\r\n")
            await served.wait_for_log("app got /hang")
            samples = await scrape(scraper, metrics)
            assert value(samples, "triasgi_requests_in_flight") == 1
        finally:
            for stream in streams:
                await stream.aclose()
        samples = await scrape_until(
            scraper, metrics, lambda s: value(s, "triasgi_connections_open") == 0
        )
    assert value(samples, "triasgi_requests_in_flight") == 0
    opened = value(samples, "triasgi_connections_total") - value(
        before, "triasgi_connections_total"
    )
    assert opened == 3


async def test_disconnects_and_grace_period_cancellations(start, metrics_app):
    served, _, metrics = await serve(
        start, metrics_app, "--disconnect-grace-period", "0.2"
    )

    async def leave_during(path: str) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", served.port)
        await stream.send_all(f"GET {path} HTTP/1.1\r\nhost: test\r\n\r\n".encode())
        await served.wait_for_log(f"app got {path}")
        await stream.aclose()

    def closed(samples: Samples) -> bool:
        return value(samples, "triasgi_connections_open") == 0

    async with httpx.AsyncClient() as scraper:
        # The app returns once it sees the disconnect: no cancellation.
        await leave_during("/leave")
        samples = await scrape_until(scraper, metrics, closed)
        assert value(samples, "triasgi_disconnects_total", protocol="http/1.1") == 1
        assert value(samples, "triasgi_grace_cancellations_total") == 0
        # The app ignores it: cancelled when the grace period runs out.
        await leave_during("/hang")
        samples = await scrape_until(scraper, metrics, closed)
    assert value(samples, "triasgi_disconnects_total", protocol="http/1.1") == 2
    assert value(samples, "triasgi_grace_cancellations_total") == 1
    assert value(samples, "triasgi_requests_in_flight") == 0
    # Neither request was answered.
    assert requests_total(samples, "GET", 200, "http/1.1") == 0


async def test_http2_requests_resets_and_a_stream_s_grace_period(start, metrics_app):
    served, url, metrics = await serve(
        start, metrics_app, "--disconnect-grace-period", "0.2"
    )
    async with (
        httpx.AsyncClient(http1=False, http2=True) as client,
        httpx.AsyncClient() as scraper,
    ):
        sizes = []
        async with trio.open_nursery() as nursery:

            async def send(method: str, path: str, body: bytes) -> None:
                response = await client.request(method, url + path, content=body)
                assert response.http_version == "HTTP/2"
                sizes.append(len(response.content))

            for _ in range(5):
                nursery.start_soon(send, "GET", "/", b"")
            for _ in range(3):
                nursery.start_soon(send, "POST", "/echo", b"y" * 1000)
        # The client resets a stream whose app ignores it: the stream's own
        # grace period cancels that app, and the connection serves on.
        stream = await trio.open_tcp_stream("127.0.0.1", served.port)
        h2 = H2Client(stream)
        await h2.start()
        sid = await h2.request("GET", "/hang")
        await served.wait_for_log("app got /hang")
        h2.conn.reset_stream(sid, ErrorCodes.CANCEL)
        await h2.flush()

        def cancelled(samples: Samples) -> bool:
            return value(samples, "triasgi_grace_cancellations_total") == 1

        samples = await scrape_until(scraper, metrics, cancelled)
        assert value(samples, "triasgi_connections_open") == 2
        await stream.aclose()
    assert requests_total(samples, "GET", 200, "http/2") == 5
    assert requests_total(samples, "POST", 200, "http/2") == 3
    assert (
        value(samples, "triasgi_request_duration_seconds_count", protocol="http/2") == 8
    )
    assert value(samples, "triasgi_request_body_bytes_total") == 3000
    assert value(samples, "triasgi_response_body_bytes_total") == sum(sizes)
    assert value(samples, "triasgi_disconnects_total", protocol="http/2") == 1
    assert value(samples, "triasgi_requests_in_flight") == 0


async def test_workers_are_summed_and_a_killed_worker_s_counts_stay(start, metrics_app):
    served, url, metrics = await serve(start, metrics_app, "--workers", "2")
    pids = await served.wait_for_workers(2)
    sent = 0
    serving: set[int] = set()
    # A connection per request, so that both workers serve.
    no_keep_alive = httpx.Limits(max_keepalive_connections=0)
    async with (
        httpx.AsyncClient(limits=no_keep_alive) as client,
        httpx.AsyncClient() as scraper,
    ):

        async def send(count: int) -> None:
            nonlocal sent
            for _ in range(count):
                response = await client.get(url + "/")
                assert response.status_code == 200
                serving.add(int(response.text))
                sent += 1

        with trio.fail_after(20):
            while serving != pids or sent < 20:
                await send(1)

        def all_counted(samples: Samples) -> bool:
            return requests_total(samples, "GET", 200, "http/1.1") == sent

        samples = await scrape_until(scraper, metrics, all_counted)
        assert value(samples, "triasgi_workers") == 2
        assert value(samples, "triasgi_worker_restarts_total", reason="died") == 0
        assert value(samples, "triasgi_connections_total") == sent

        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        await served.wait_for_log(f"Worker pid {victim} died unexpectedly")
        (replacement,) = await served.wait_for_workers(2) - pids

        def replaced(samples: Samples) -> bool:
            return (
                value(samples, "triasgi_worker_restarts_total", reason="died") == 1
                and value(samples, "triasgi_workers") == 2
            )

        samples = await scrape_until(scraper, metrics, replaced)
        # What the killed worker had reported is still in the sum.
        assert requests_total(samples, "GET", 200, "http/1.1") == sent
        await send(10)
        samples = await scrape_until(scraper, metrics, all_counted)
    assert (
        value(samples, "triasgi_request_duration_seconds_count", protocol="http/1.1")
        == sent
    )
    assert value(samples, "triasgi_worker_restarts_total", reason="unresponsive") == 0
    assert replacement not in pids


async def test_a_reload_keeps_the_counts_of_the_workers_it_replaces(start, metrics_app):
    served, url, metrics = await serve(start, metrics_app, "--workers", "2")
    old = await served.wait_for_workers(2)
    async with httpx.AsyncClient() as client:
        for _ in range(10):
            assert (await client.get(url + "/")).status_code == 200
        served.send(signal.SIGHUP)
        await served.wait_for_log("Reload complete")
        for pid in old:
            await served.wait_for_log(rf"Worker pid {pid} stopped \(exit code 0\)")

        def reloaded(samples: Samples) -> bool:
            return value(samples, "triasgi_worker_restarts_total", reason="reload") == 2

        samples = await scrape_until(client, metrics, reloaded)
    assert requests_total(samples, "GET", 200, "http/1.1") == 10
    assert value(samples, "triasgi_workers") == 2
    assert value(samples, "triasgi_worker_restarts_total", reason="died") == 0


async def test_a_worker_that_stops_gracefully_reports_its_last_counts(
    start, metrics_app
):
    served, url, metrics = await serve(start, metrics_app, "--workers", "1")
    (worker,) = await served.wait_for_workers(1)
    async with httpx.AsyncClient() as client:
        for _ in range(10):
            assert (await client.get(url + "/")).status_code == 200
    # At once, before its next heartbeat most likely: the counts since the
    # last one go with its last report.
    os.kill(worker, signal.SIGTERM)
    await served.wait_for_log(f"Worker pid {worker} left without being asked to")
    async with httpx.AsyncClient() as scraper:
        samples = await scrape_until(
            scraper,
            metrics,
            lambda s: value(s, "triasgi_worker_restarts_total", reason="died") == 1,
        )
    assert requests_total(samples, "GET", 200, "http/1.1") == 10


async def test_endpoint_answers_get_and_head_at_metrics_only():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"app"})

    async with (
        open_server(app, metrics_bind="127.0.0.1:0") as live,
        httpx.AsyncClient() as client,
    ):
        base = live.metrics_url.removesuffix("/metrics")
        assert (await client.get(live.url + "/")).text == "app"
        metrics = await client.get(base + "/metrics")
        root = await client.get(base + "/")
        head = await client.head(base + "/metrics")
        missing = await client.get(base + "/other")
        post = await client.post(base + "/metrics")
    assert metrics.status_code == root.status_code == head.status_code == 200
    assert metrics.headers["connection"] == "close"
    assert head.content == b""
    assert int(head.headers["content-length"]) > 0
    assert missing.status_code == 404
    assert post.status_code == 405
    assert post.headers["allow"] == "GET, HEAD"
    samples = parse(root.text)
    # The app's one request; the scrapes before it are not counted.
    assert requests_total(samples, "GET", 200, "http/1.1") == 1
    assert value(samples, "triasgi_connections_total") == 1


async def test_the_fixture_takes_metrics_bind_and_gives_the_url_to_scrape(
    triasgi_server,
):
    server = await triasgi_server(hello_app, metrics_bind="127.0.0.1:0")
    async with httpx.AsyncClient() as client:
        await client.get(server.url + "/")
        text = (await client.get(server.metrics_url)).text
    line = 'triasgi_requests_total{method="GET",protocol="http/1.1",status="200"} 1.0'
    assert line in text.splitlines()


async def test_metrics_bind_from_the_environment_on_a_unix_socket(
    start, metrics_app, tmp_path
):
    path = tmp_path / "metrics.sock"
    served = await start(app=metrics_app, env={"TRIASGI_METRICS_BIND": f"unix:{path}"})
    await served.wait_for_log(f"Serving metrics on unix socket {path}, path /metrics")
    transport = httpx.AsyncHTTPTransport(uds=str(path))
    async with (
        httpx.AsyncClient() as client,
        httpx.AsyncClient(transport=transport) as scraper,
    ):
        await client.get(f"http://127.0.0.1:{served.port}/status/202")
        samples = await scrape(scraper, "http://metrics/metrics")
    assert requests_total(samples, "GET", 202, "http/1.1") == 1
    served.send(signal.SIGTERM)
    assert await served.exit_code() == 0
    assert not path.exists()


async def test_metrics_bind_from_a_config_file(start, metrics_app, app_dir):
    (app_dir / "triasgi.toml").write_text('metrics_bind = "127.0.0.1:0"\n')
    served = await start("--config", "triasgi.toml", app=metrics_app)
    await served.wait_for_log("Serving metrics on")
    async with httpx.AsyncClient() as client:
        samples = await scrape(client, metrics_url(served))
    assert value(samples, "triasgi_requests_in_flight") == 0


def run_command(
    cwd: Path, *args: str, code: str = ""
) -> subprocess.CompletedProcess[str]:
    """The command, to its exit; ``code`` runs first in the same process."""
    program = f"{code}\nfrom triasgi._cli import main\nmain({list(args)!r})\n"
    return subprocess.run(
        [sys.executable, "-c", program],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1", "[::1]", "unix:"])
def test_bad_metrics_bind_is_one_sentence_and_exit_2(app_dir, metrics_app, address):
    result = run_command(app_dir, metrics_app, "--metrics-bind", address)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: metrics_bind addresses look like HOST:PORT, [IPV6]:PORT, unix:PATH "
        f"or fd://N, got {address!r}."
    )
    assert "Traceback" not in result.stderr


def test_metrics_bind_on_a_port_in_use_is_one_sentence_and_exit_1(app_dir, metrics_app):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_command(
            app_dir, metrics_app, "--port", "0", "--metrics-bind", f"127.0.0.1:{port}"
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: Cannot listen on 127.0.0.1:{port}: address already in use."
    )


def test_metrics_bind_without_prometheus_client_is_one_sentence_and_exit_2(
    app_dir, metrics_app
):
    result = run_command(
        app_dir,
        metrics_app,
        "--metrics-bind",
        "127.0.0.1:0",
        code="import sys; sys.modules['prometheus_client'] = None",
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: --metrics-bind needs the prometheus_client package: "
        "pip install 'triasgi[metrics]'."
    )
    assert "Traceback" not in result.stderr
