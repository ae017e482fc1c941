"""Instructions per request of triasgi against another revision, under callgrind.

Timing cannot show a difference of 1% on a shared machine; instruction
counts do not depend on the load.  Each server runs under valgrind's
callgrind while a raw keep-alive client sends N requests one after the
other; the instructions of ``--requests`` requests less those of
``--warm`` requests give the cost of the difference (startup cancels out).

    python -m benchmarks.instructions --baseline a537609
    python -m benchmarks.instructions --baseline HEAD~1 --scenarios hello --parsers h11
    python -m benchmarks.instructions --baseline HEAD~1 --scenarios websocket

``--peers`` counts hello GETs of servers of the harness side by side
instead (``benchmarks/servers.py``), the working tree's triasgi among them:

    python -m benchmarks.instructions --peers \\
        uvicorn-httptools,trio-floor-noyield,triasgi-httptools,triasgi,uvicorn-h11

The ``websocket`` scenario counts echoes of a small text message, one after
the other on one connection, instead of requests; ``h2`` counts hello GETs
over HTTP/2 (prior knowledge), ten streams at a time on one connection, as
``h2load -m10`` sends them.

Needs valgrind (Debian package ``valgrind``); a run of the defaults takes a
few minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from . import wsload

REPO_ROOT = Path(__file__).resolve().parent.parent
PATHS = {"hello": b"/", "64k": b"/64k", "stream": b"/stream"}
WEBSOCKET = "websocket"
H2 = "h2"
SCENARIOS = [*PATHS, WEBSOCKET, H2]
# HTTP/2 streams in flight, as h2load -m10 keeps them.
_H2_STREAMS = 10
_SUMMARY = re.compile(rb"^(?:summary|totals): (\d+)", re.M)
# Under callgrind the server runs some fifty times slower, so the 1 ms turn
# of an app's task (TURN_SECONDS in triasgi/_serve/_transport.py) would end
# after some 20 µs of its own work, as often as the machine's load makes it:
# the server runs with the turn stretched by as much.  (A revision without
# turns gets an attribute it never reads.)
_TURN_UNDER_CALLGRIND = 0.05
_SERVE = (
    "import importlib, runpy\n"
    "for name in ('_call', '_websocket', '_h2call'):\n"
    "    try:\n"
    "        module = importlib.import_module('triasgi._serve.' + name)\n"
    "    except ImportError:\n"
    "        continue\n"
    f"    module.TURN_SECONDS = {_TURN_UNDER_CALLGRIND}\n"
    "runpy.run_module('triasgi', run_name='__main__', alter_sys=True)\n"
)


def read_summary(text: bytes) -> int:
    """The instruction count of a callgrind output file."""
    match = _SUMMARY.search(text)
    if match is None:
        raise ValueError("no summary line in the callgrind output")
    return int(match.group(1))


def per_request(few: int, many: int, n_few: int, n_many: int) -> float:
    """Instructions per request from two runs of ``n_few`` and ``n_many`` requests."""
    if n_many <= n_few:
        raise ValueError("the second run must send more requests")
    return (many - few) / (n_many - n_few)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _send_requests(port: int, path: bytes, count: int) -> None:
    """``count`` keep-alive GETs, each answered before the next is sent."""
    request = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"
    buffer = b""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for _ in range(count):
            sock.sendall(request)
            while True:
                end = buffer.find(b"\r\n\r\n")
                if end >= 0:
                    head = buffer[:end].lower()
                    if b"content-length:" in head:
                        length = int(
                            head.split(b"content-length:")[1].split(b"\r\n")[0]
                        )
                        if len(buffer) >= end + 4 + length:
                            buffer = buffer[end + 4 + length :]
                            break
                    else:
                        last = buffer.find(b"\r\n0\r\n\r\n", end)
                        if last >= 0:
                            buffer = buffer[last + 7 :]
                            break
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionError("the server closed the connection")
                buffer += chunk


def _send_echoes(port: int, count: int) -> None:
    """``count`` WebSocket echoes, each answered before the next is sent."""
    conn = wsload._Conn(wsload.handshake(port))
    try:
        for _ in range(count):
            conn.sock.sendall(conn.frame)
            while not wsload._echoes(conn):
                chunk = conn.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the server closed the connection")
                conn.buffer += chunk
    finally:
        wsload._close([conn])


def _send_h2_requests(port: int, count: int) -> None:
    """``count`` HTTP/2 GETs of ``/``, ``_H2_STREAMS`` at a time, each batch
    answered before the next is sent."""
    import h2.config
    import h2.connection
    import h2.events

    config = h2.config.H2Configuration(client_side=True, header_encoding=None)
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    request = [
        (b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"),
        (b":authority", b"127.0.0.1"), (b"accept", b"*/*"),
        (b"user-agent", b"h2load nghttp2/1.52.0"),
    ]  # fmt: skip
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sent = 0
        while sent < count:
            batch = min(_H2_STREAMS, count - sent)
            for _ in range(batch):
                conn.send_headers(conn.get_next_available_stream_id(), request, True)
            sent += batch
            sock.sendall(conn.data_to_send())
            ended = 0
            while ended < batch:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionError("the server closed the connection")
                for event in conn.receive_data(chunk):
                    if isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    elif isinstance(event, h2.events.StreamEnded):
                        ended += 1
                credit = conn.data_to_send()
                if credit:
                    sock.sendall(credit)


def measure(
    package_dir: Path, parser: str, scenario: str, count: int, out: Path
) -> int:
    """Instructions of a server (triasgi from ``package_dir``) over ``count`` GETs."""
    port = _free_port()
    command = [
        sys.executable, "-c", _SERVE, "benchmarks.apps:app", "--port", str(port),
        "--no-access-log", "--log-level", "warning", "--http", parser,
        "--timeout-keep-alive", "300", "--lifespan", "off",
    ]  # fmt: skip
    return _count(command, package_dir, port, scenario, count, out)


def measure_peer(name: str, scenario: str, count: int, out: Path) -> int:
    """Instructions of one of the harness's servers (``benchmarks/servers.py``)."""
    from .servers import SERVERS, TRIASGI_FLAVOURS

    if name in TRIASGI_FLAVOURS:
        # With the turn stretched, as the revisions are measured.
        parser = "httptools" if name == "triasgi-httptools" else "h11"
        return measure(REPO_ROOT, parser, scenario, count, out)
    port = _free_port()
    return _count(SERVERS[name].command(port), REPO_ROOT, port, scenario, count, out)


def _count(
    command: list[str],
    package_dir: Path,
    port: int,
    scenario: str,
    count: int,
    out: Path,
) -> int:
    """Run ``command`` under callgrind, send it ``count`` requests, count."""
    env = dict(
        os.environ,
        PYTHONPATH=f"{package_dir}{os.pathsep}{REPO_ROOT}",
        PYTHONHASHSEED="0",
    )
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *command]
    server = subprocess.Popen(command, env=env, cwd=tempfile.gettempdir(),
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(
                        "the server under callgrind did not start"
                    ) from None
                time.sleep(0.1)
        if scenario == WEBSOCKET:
            _send_echoes(port, count)
        elif scenario == H2:
            _send_h2_requests(port, count)
        else:
            _send_requests(port, PATHS[scenario], count)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    return read_summary(out.read_bytes())


@contextlib.contextmanager
def _export(revision: str, into: Path) -> Iterator[Path]:
    """The triasgi package of ``revision``, exported into ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", revision, "triasgi"],
        capture_output=True, check=False,
    )  # fmt: skip
    if archive.returncode:
        raise SystemExit(f"--baseline {revision!r} names no commit of the repository.")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    yield into


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="the revision to compare with")
    parser.add_argument(
        "--peers",
        help="instead: servers of the harness to count hello GETs of, side by "
        "side (ratios to the first)",
    )
    parser.add_argument(
        "--scenarios",
        default="hello,stream",
        help=f"of {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--parsers", default="h11,httptools")
    parser.add_argument(
        "--warm", type=int, default=300, help="requests of the first run"
    )
    parser.add_argument("--requests", type=int, default=1300, help="of the second run")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        parser.exit(2, "valgrind is missing: apt-get install -y valgrind\n")
    if (args.baseline is None) == (args.peers is None):
        parser.exit(2, "give either --baseline or --peers\n")
    if args.peers is not None:
        return _compare_peers(args.peers.split(","), args.warm, args.requests)
    scenarios = args.scenarios.split(",")
    unknown = [name for name in scenarios if name not in SCENARIOS]
    if unknown:
        parser.exit(
            2, f"unknown scenario {unknown[0]!r}: use {', '.join(SCENARIOS)}\n"
        )
    with tempfile.TemporaryDirectory(prefix="triasgi-instructions-") as tmp:
        work = Path(tmp)
        baseline_dir = work / "baseline"
        baseline_dir.mkdir()
        with _export(args.baseline, baseline_dir):
            trees = {"baseline": baseline_dir, "working tree": REPO_ROOT}
            print(f"instructions per request, working tree / {args.baseline}:")
            for http in args.parsers.split(","):
                for scenario in scenarios:
                    counts = {}
                    for name, tree in trees.items():
                        few, many = (
                            measure(tree, http, scenario, n, work / f"cg.{n}")
                            for n in (args.warm, args.requests)
                        )
                        counts[name] = per_request(few, many, args.warm, args.requests)
                    old, new = counts["baseline"], counts["working tree"]
                    print(
                        f"  {scenario:7} {http:9} {old / 1000:9.1f}k {new / 1000:9.1f}k"
                        f"  {new / old:.3f}x",
                        flush=True,
                    )
    return 0


def _compare_peers(names: list[str], warm: int, requests: int) -> int:
    """Instructions per hello GET of each server, and its ratio to the first."""
    from .servers import SERVERS

    unknown = [name for name in names if name not in SERVERS]
    if unknown:
        print(f"unknown server {unknown[0]!r}: use {', '.join(SERVERS)}")
        return 2
    print(f"instructions per hello GET, and the ratio to {names[0]}:")
    first = None
    with tempfile.TemporaryDirectory(prefix="triasgi-instructions-") as tmp:
        work = Path(tmp)
        for name in names:
            few, many = (
                measure_peer(name, "hello", n, work / f"cg.{n}")
                for n in (warm, requests)
            )
            count = per_request(few, many, warm, requests)
            first = first or count
            print(f"  {name:20} {count / 1000:9.1f}k  {count / first:.3f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
