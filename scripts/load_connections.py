"""Many concurrent connections against one triasgi worker, and a soak mode.

Not a test: a tool to run by hand, on loopback only.

    python scripts/load_connections.py                  # 10,000 connections
    python scripts/load_connections.py --connections 2000 --soak 600

It raises its open-files limit (and so the server's, which it starts as a
child process) to the hard limit, starts ``python -m triasgi`` with one
worker on a free 127.0.0.1 port, and then:

* connections mode: opens N keep-alive connections (a bounded number of
  connects at a time), sends one request on each and keeps them all open;
  once all are open, sends a second request on every one at the same time.
  It reports how many succeeded, the latency percentiles, and the server's
  memory and file descriptors with all connections open.
* soak mode (``--soak SECONDS``): keeps the connections busy with requests
  in a loop for that long and reports latency and server memory every ten
  seconds, to show that nothing grows without bound.

Everything is bounded: the number of connections, the soak duration, and a
timeout on every operation.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import trio

REQUEST = b"GET / HTTP/1.1\r\nhost: load\r\n\r\n"
APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})
"""


def raise_open_files_limit(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(wanted, soft)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_stats(pid: int) -> tuple[float, int]:
    """Resident memory in MiB and open file descriptors of ``pid``."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds


async def read_response(stream: trio.SocketStream, buffer: bytearray) -> None:
    """Read one small response (the app's fixed 2-byte body)."""
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0 and len(buffer) >= end + 4 + 2:
            assert buffer.startswith(b"HTTP/1.1 200 "), bytes(buffer[:40])
            del buffer[: end + 6]
            return
        data = await stream.receive_some(65536)
        if not data:
            raise ConnectionError("closed by the server")
        buffer += data


class Connection:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def request(self) -> float:
        start = time.perf_counter()
        await self.stream.send_all(REQUEST)
        await read_response(self.stream, self.buffer)
        return time.perf_counter() - start


def percentiles(samples: list[float]) -> str:
    if not samples:
        return "no samples"
    samples = sorted(samples)
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))] * 1000  # noqa: E731
    return (
        f"p50 {pick(0.50):.1f} ms, p90 {pick(0.90):.1f} ms, p99 {pick(0.99):.1f} ms, "
        f"max {samples[-1] * 1000:.1f} ms"
    )


async def open_all(
    port: int, count: int, parallel: int
) -> tuple[list[Connection], int]:
    connections: list[Connection] = []
    failures = 0
    limiter = trio.CapacityLimiter(parallel)

    async def one() -> None:
        nonlocal failures
        async with limiter:
            try:
                with trio.fail_after(30):
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                    conn = Connection(stream)
                    await conn.request()
                connections.append(conn)
            except (OSError, trio.TooSlowError, ConnectionError):
                failures += 1

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    return connections, failures


async def all_at_once(connections: list[Connection]) -> tuple[list[float], int]:
    latencies: list[float] = []
    failures = 0

    async def one(conn: Connection) -> None:
        nonlocal failures
        try:
            with trio.fail_after(60):
                latencies.append(await conn.request())
        except (OSError, trio.TooSlowError, ConnectionError):
            failures += 1

    async with trio.open_nursery() as nursery:
        for conn in connections:
            nursery.start_soon(one, conn)
    return latencies, failures


async def soak(
    connections: list[Connection], seconds: float, think: float, pid: int
) -> None:
    latencies: list[float] = []
    failures = 0
    done = 0

    async def loop(conn: Connection) -> None:
        nonlocal failures, done
        while True:
            try:
                with trio.fail_after(60):
                    latencies.append(await conn.request())
                    done += 1
            except (OSError, trio.TooSlowError, ConnectionError):
                failures += 1
                return
            await trio.sleep(think)  # a steady client, not a saturating one

    async def report() -> None:
        nonlocal latencies
        start = time.monotonic()
        while True:
            await trio.sleep(10)
            rss, fds = server_stats(pid)
            print(
                f"  t={time.monotonic() - start:5.0f}s requests={done} failures={failures} "
                f"server rss={rss:.1f} MiB fds={fds}; {percentiles(latencies)}",
                flush=True,
            )
            latencies = []

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(report)
            for conn in connections:
                nursery.start_soon(loop, conn)
    print(f"soak: {done} requests in {seconds:g} s, {failures} connection(s) lost")


async def main(args: argparse.Namespace) -> None:
    limit = raise_open_files_limit(args.connections * 2 + 1000)
    print(f"open-files limit: {limit}")
    if limit < args.connections + 100:
        sys.exit(
            f"The open-files limit ({limit}) is too low for {args.connections} connections."
        )
    port = free_port()
    app_dir = Path(args.workdir)
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "load_app.py").write_text(APP)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "triasgi",
            "load_app:app",
            "--app-dir",
            str(app_dir),
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
            "--backlog",
            "4096",
            "--timeout-keep-alive",
            str(args.soak + 300),
        ],
    )
    try:
        with trio.fail_after(20):
            while True:
                try:
                    await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
                    break
                except OSError:
                    await trio.sleep(0.1)
        idle_rss, idle_fds = server_stats(server.pid)
        print(
            f"server pid {server.pid} on 127.0.0.1:{port}: rss {idle_rss:.1f} MiB, {idle_fds} fds"
        )

        start = time.perf_counter()
        connections, failures = await open_all(port, args.connections, args.parallel)
        elapsed = time.perf_counter() - start
        rss, fds = server_stats(server.pid)
        print(
            f"opened {len(connections)} connections ({failures} failed) in {elapsed:.1f} s; "
            f"server rss {rss:.1f} MiB ({(rss - idle_rss) * 1024 / max(1, len(connections)):.1f} KiB "
            f"per connection), {fds} fds"
        )

        start = time.perf_counter()
        latencies, failures = await all_at_once(connections)
        elapsed = time.perf_counter() - start
        print(
            f"one request on every connection at once: {len(latencies)} ok, {failures} failed, "
            f"{elapsed:.2f} s, {len(latencies) / elapsed:.0f} req/s; {percentiles(latencies)}"
        )

        if args.soak:
            await soak(connections, args.soak, args.think, server.pid)

        for conn in connections:
            conn.stream.socket.close()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument(
        "--parallel", type=int, default=500, help="connects in flight at once"
    )
    parser.add_argument(
        "--soak", type=float, default=0, help="soak for this many seconds"
    )
    parser.add_argument(
        "--think", type=float, default=2.0, help="soak: seconds between requests"
    )
    parser.add_argument("--workdir", default="/tmp/triasgi-load")
    arguments = parser.parse_args()
    if arguments.connections > 20_000 or arguments.soak > 24 * 3600:
        sys.exit("Keep it bounded: at most 20,000 connections and a day of soak.")
    trio.run(main, arguments)
