"""The sans-io work of a hello GET alone: no socket, no trio, no task.

One loop iteration is what triasgi's protocol and ASGI layers do for a
keep-alive hello GET, in one process with nothing else: the head parsed
and checked (``H1Protocol``), the scope built, the app's two messages
checked (``HTTPCycle.app_sent``, with the messages the benchmark app
sends), the response framed, and the connection readied for the next
request.  What the serving layer, trio and the kernel add comes on top, so
this is a lower bound of what triasgi spends per request beyond a server
that does none of it (``trio-floor-noyield``, docs/performance.md).

    python -m benchmarks.sansio              # instructions, under callgrind
    python -m benchmarks.sansio --time       # microseconds, without it

Instructions need valgrind, as ``benchmarks.instructions`` does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .apps import HELLO
from .instructions import REPO_ROOT, per_request, read_summary

_HEAD = b"GET / HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"
_DEFAULTS = [
    (b"date", b"date: Sun, 06 Dec 2026 17:00:00 GMT\r\n"),
    (b"server", b"server: triasgi\r\n"),
]


def loop(parser: str, count: int) -> float:
    """``count`` hello GETs through the sans-io layers; seconds each."""
    from triasgi._asgi._http import HTTPCycle
    from triasgi._asgi._scope import http_scope
    from triasgi._protocol._h1 import H1Protocol
    from triasgi._protocol._h1parse import H1Limits, parser_factory

    limits = H1Limits(max_head=16384, request_line=8190, fields=100, field_size=8190)
    protocol = H1Protocol(parser_factory(parser, limits), limits)
    state: dict[str, Any] = {}
    client, server = ("127.0.0.1", 40000), ("127.0.0.1", 8000)
    started = time.perf_counter()
    for _ in range(count):
        protocol.receive_data(_HEAD)
        request: Any = protocol.next_event()
        protocol.next_event()  # the end of the (empty) body
        scope = http_scope(
            request,
            scheme="http",
            client=client,
            server=server,
            root_path="",
            state=state,
        )
        cycle = HTTPCycle(request, scope)
        # The benchmark app's messages (benchmarks/apps.py).
        cycle.app_sent(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", b"%d" % len(HELLO)),
                ],
            }
        )
        body: Any = cycle.app_sent({"type": "http.response.body", "body": HELLO})
        protocol.response_data(
            cycle.status, cycle.response_headers, body, True, _DEFAULTS
        )
        if protocol.next_request() is not True:
            raise AssertionError("the connection did not stay open")
    return (time.perf_counter() - started) / count


def _instructions(parser: str, count: int, out: Path) -> int:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONHASHSEED="0")
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
         sys.executable, "-m", "benchmarks.sansio", "--run", parser, str(count)],
        env=env, cwd=REPO_ROOT, check=True, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return read_summary(out.read_bytes())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parsers", default="h11,httptools")
    parser.add_argument("--time", action="store_true", help="time it instead")
    parser.add_argument("--run", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        loop(args.run[0], int(args.run[1]))
        return 0
    parsers = args.parsers.split(",")
    if args.time:
        for name in parsers:
            best = min(loop(name, 20000) for _ in range(5))
            print(f"  {name:9} {best * 1e6:6.1f} µs per hello GET (best of 5)")
        return 0
    if shutil.which("valgrind") is None:
        parser.exit(2, "valgrind is missing: apt-get install -y valgrind\n")
    few, many = 1000, 11000
    with tempfile.TemporaryDirectory(prefix="triasgi-sansio-") as tmp:
        for name in parsers:
            counts = [
                _instructions(name, n, Path(tmp) / f"cg.{n}") for n in (few, many)
            ]
            each = per_request(counts[0], counts[1], few, many)
            print(f"  {name:9} {each / 1000:6.1f}k instructions per hello GET")
    return 0


if __name__ == "__main__":
    sys.exit(main())
