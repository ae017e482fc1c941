"""Two builds of triasgi on hello GET, side by side.

``python -m benchmarks.builds A B``: A and B are directories that each
hold a ``triasgi`` package, such as a clean export of a revision and the
same export with modules compiled by mypyc (docs/performance.md,
"Compiling the sans-io layers").  For each parser the two builds take
turns, round after round (the first one to go alternates), each served as
the harness serves triasgi and loaded by wrk as in its hello GET scenario.
It prints every cell, then B over A per parser: the median over the rounds
of the ratio within each round, ± half the range of those ratios, for
req/s and CPU per request.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from . import servers, wrk

_FLAVOURS = ("triasgi", "triasgi-httptools")
_SECONDS = 5
_WARMUP = 1
_CONNECTIONS = 64


def ratio_summary(a: list[float], b: list[float]) -> str:
    """``median(b/a) ±spread`` over paired rounds, as the harness writes it."""
    ratios = [y / x for x, y in zip(a, b, strict=True)]
    middle = statistics.median(ratios)
    spread = (max(ratios) - min(ratios)) / 2 / middle
    return f"{middle:.2f}x ±{spread:.0%}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="directory holding build A's triasgi")
    parser.add_argument("b", type=Path, help="directory holding build B's triasgi")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--load-core", type=int, default=1)
    args = parser.parse_args(argv)
    builds = {"A": args.a.resolve(), "B": args.b.resolve()}
    for name, tree in builds.items():
        if not (tree / "triasgi" / "__init__.py").exists():
            parser.exit(2, f"{name}: no triasgi package in {tree}\n")
    cells: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="triasgi-builds-") as tmp:
        for round_index in range(args.rounds):
            order = list(builds.items())
            if round_index % 2:
                order.reverse()
            for flavour in _FLAVOURS:
                for name, tree in order:
                    spec = servers.SERVERS[flavour]
                    with servers.running(
                        spec,
                        core=args.server_core,
                        log_dir=Path(tmp),
                        triasgi_from=tree,
                    ) as server:
                        url = server.url + "/"
                        wrk.run(
                            url,
                            seconds=_WARMUP,
                            connections=_CONNECTIONS,
                            core=args.load_core,
                        )
                        before = server.cpu_seconds()
                        sample = wrk.run(
                            url,
                            seconds=_SECONDS,
                            connections=_CONNECTIONS,
                            core=args.load_core,
                        )
                        cpu = server.cpu_seconds() - before
                    rate = sample.requests_per_s
                    cpu_us = cpu / (rate * _SECONDS) * 1e6
                    cells.setdefault((flavour, name), []).append((rate, cpu_us))
                    print(
                        f"round {round_index + 1} {flavour} {name}: "
                        f"{rate:,.0f} req/s, {cpu_us:.0f} µs CPU/req",
                        flush=True,
                    )
    for flavour in _FLAVOURS:
        a, b = cells[flavour, "A"], cells[flavour, "B"]
        rates = ratio_summary([x[0] for x in a], [x[0] for x in b])
        cpus = ratio_summary([x[1] for x in a], [x[1] for x in b])
        print(
            f"{flavour} B/A: req/s {rates}, CPU/req {cpus}; "
            f"medians A {statistics.median(x[1] for x in a):.0f} µs, "
            f"B {statistics.median(x[1] for x in b):.0f} µs CPU/req"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
