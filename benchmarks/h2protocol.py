"""What triasgi's HTTP/2 protocol layer costs per request, by itself.

``python -m benchmarks.h2protocol`` drives an ``H2Protocol`` (the h2 library
and HPACK under triasgi's own protocol code: no trio, no I/O, no app) with
the bytes an h2 client sends for hello GETs, ten streams at a time as
``h2load -m10`` does, answers each with the benchmark app's response, and
prints the CPU time per request of reading the requests, of the response
heads and of the bodies.  ``--instructions`` counts instructions instead,
under valgrind's callgrind: runs of 300 and 1,300 requests, the difference
divided by 1,000, as ``benchmarks.instructions`` does for whole servers.

The client's bytes are recorded first, against a protocol of their own, and
then replayed into a fresh one, so that what is measured is the server side
alone (the replay answers exactly as the recording did, so the client's
WINDOW_UPDATEs fit).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h2.config
import h2.connection
import h2.events

from triasgi._events import Request
from triasgi._protocol._h2 import H2Limits, H2Protocol

from .apps import HELLO
from .instructions import per_request, read_summary

#: Streams in flight, as h2load -m10 keeps them.
STREAMS = 10
REQUEST = [
    (b":method", b"GET"),
    (b":path", b"/"),
    (b":scheme", b"http"),
    (b":authority", b"127.0.0.1:8000"),
    (b"accept", b"*/*"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"user-agent", b"h2load nghttp2/1.52.0"),
]
RESPONSE = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", b"%d" % len(HELLO)),
]
DEFAULTS = [(b"server", b"triasgi"), (b"date", b"Sun, 06 Dec 2026 13:00:00 GMT")]
_PHASES = ("read", "head", "body")


def answer(
    server: H2Protocol,
    data: bytes,
    now: float,
    clock: Callable[[], float] | None = None,
    spent: dict[str, float] | None = None,
) -> bytes:
    """Feed the server ``data``; answer every request in it; what it sends back.

    With ``clock``, the time of each phase is added to ``spent``.
    """
    tick = clock or (lambda: 0.0)
    times = spent if spent is not None else {}
    t0 = tick()
    events = server.receive_data(data, now)
    t1 = tick()
    times["read"] = times.get("read", 0.0) + t1 - t0
    for event in events:
        if type(event) is Request:
            a = tick()
            server.respond(event.stream_id, 200, RESPONSE, DEFAULTS, False)
            b = tick()
            server.send_body(event.stream_id, memoryview(HELLO), True)
            server.stream_done(event.stream_id)
            c = tick()
            times["head"] = times.get("head", 0.0) + b - a
            times["body"] = times.get("body", 0.0) + c - b
    return server.data_to_send()


def record(requests: int) -> list[tuple[bytes, float]]:
    """What a client sends for ``requests`` GETs, answered ``STREAMS`` at a time."""
    config = h2.config.H2Configuration(client_side=True, header_encoding=None)
    client = h2.connection.H2Connection(config)
    client.initiate_connection()
    server = H2Protocol(H2Limits())
    server.start()
    sent: list[tuple[bytes, float]] = []

    def send(data: bytes, now: float) -> bytes:
        sent.append((data, now))
        return answer(server, data, now)

    client.receive_data(server.data_to_send())
    send(client.data_to_send(), 0.0)
    stream_id = 1
    for batch in range(requests // STREAMS):
        for _ in range(STREAMS):
            client.send_headers(stream_id, REQUEST, end_stream=True)
            stream_id += 2
        ended = 0
        for event in client.receive_data(send(client.data_to_send(), float(batch))):
            if isinstance(event, h2.events.DataReceived):
                client.acknowledge_received_data(
                    event.flow_controlled_length, event.stream_id
                )
            elif isinstance(event, h2.events.StreamEnded):
                ended += 1
        if ended != STREAMS:
            raise RuntimeError(f"{ended} of {STREAMS} responses came back")
        credit = client.data_to_send()  # WINDOW_UPDATE, now and then
        if credit:
            send(credit, float(batch))
    return sent


def replay(
    sent: list[tuple[bytes, float]], clock: Callable[[], float] | None = None
) -> dict[str, float]:
    """Feed a recording to a fresh server; the time of each phase with ``clock``."""
    server = H2Protocol(H2Limits())
    server.start()
    server.data_to_send()
    spent = dict.fromkeys(_PHASES, 0.0)
    for data, now in sent:
        answer(server, data, now, clock, spent)
    return spent


def _callgrind(requests: int, mode: str, out: Path) -> int:
    command = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
        sys.executable, "-m", "benchmarks.h2protocol", "--requests", str(requests),
        "--mode", mode,
    ]  # fmt: skip
    env = dict(os.environ, PYTHONHASHSEED="0")
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
    return read_summary(out.read_bytes())


def instructions() -> float:
    """Instructions per request of the server side alone, under callgrind."""
    with tempfile.TemporaryDirectory(prefix="triasgi-h2protocol-") as tmp:
        counts = {
            (n, mode): _callgrind(n, mode, Path(tmp, f"cg.{n}.{mode}"))
            for n in (300, 1300)
            for mode in ("record", "replay")
        }
    both = per_request(counts[300, "replay"], counts[1300, "replay"], 300, 1300)
    client = per_request(counts[300, "record"], counts[1300, "record"], 300, 1300)
    return both - client


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument(
        "--instructions", action="store_true", help="count under callgrind"
    )
    # What a run under callgrind does: record alone, or record and replay.
    parser.add_argument("--mode", choices=["record", "replay"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.requests < STREAMS:
        parser.error(f"--requests must be at least {STREAMS}")
    if args.mode is not None:
        sent = record(args.requests)
        if args.mode == "replay":
            replay(sent)
        return 0
    if args.instructions:
        if shutil.which("valgrind") is None:
            parser.exit(2, "valgrind is missing: apt-get install -y valgrind\n")
        print(f"H2Protocol: {instructions() / 1000:.1f}k instructions per request")
        return 0
    spent = replay(record(args.requests), time.process_time)
    per = {phase: spent[phase] / args.requests * 1e6 for phase in _PHASES}
    print(
        "H2Protocol, CPU per request: "
        + ", ".join(f"{phase} {per[phase]:.1f} µs" for phase in _PHASES)
        + f"; in all {sum(per.values()):.1f} µs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
