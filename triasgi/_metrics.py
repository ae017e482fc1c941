"""The counts behind ``--metrics-bind``, and their Prometheus text (docs/metrics.md).

Theory of operation.  A serving process with metrics keeps one
:class:`Metrics`: plain integers and dicts, which the serving layer adds to
in a few places, each behind a single ``server.metrics is not None`` check,
so that a server without metrics pays nothing more per request:

- a response is complete (where its access line is written), or the server
  answers a request with an error of its own: :meth:`Metrics.request_done`;
- an HTTP client goes away before its response is complete:
  :meth:`Metrics.disconnected`;
- a connection is accepted, and ends (the server counts both, whatever the
  protocol): :meth:`Metrics.connection_opened`, :meth:`Metrics.connection_closed`
  (which says whether the connection's disconnect grace period ran out and
  cancelled what it ran);
- an HTTP/2 stream's own grace period, after the client reset it, runs out
  and cancels its app: :meth:`Metrics.grace_cancelled`.

The gauges, requests in flight and open connections, are not kept here: the
server counts them anyway and hands them to :meth:`Metrics.snapshot`.

A snapshot is a dict of plain values that JSON carries.  A single process
renders its own at each scrape.  Under ``--workers`` each worker sends one to
the supervisor with its heartbeat and a last one when it stops; the
supervisor adds them up (:meth:`Metrics.add`), keeps the counts of workers
that have exited, and renders the sum with its own counts of workers.

prometheus_client writes the text format (:func:`render`); it is imported
only by a process that serves the endpoint.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from itertools import accumulate
from math import inf
from typing import TYPE_CHECKING, Any, final

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

#: The sentence for ``metrics_bind`` without the library that writes the format.
MISSING_PROMETHEUS_CLIENT = (
    "--metrics-bind needs the prometheus_client package: "
    "pip install 'triasgi[metrics]'."
)

#: Upper bounds of the request duration histogram's buckets, in seconds.
BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    inf,
)

# The methods of RFC 9110, and PATCH.  Any other counts as "other": a label
# value a client could choose would let it grow the metrics without bound.
_METHODS = {
    name.encode(): name
    for name in (
        "GET",
        "HEAD",
        "POST",
        "PUT",
        "DELETE",
        "CONNECT",
        "OPTIONS",
        "TRACE",
        "PATCH",
    )
}
_PROTOCOLS = {b"1.1": "http/1.1", b"1.0": "http/1.0", b"2": "http/2"}


#: What :meth:`Metrics.snapshot` gives: str keys, JSON values.  The
#: supervisor adds ``workers`` (an int) and ``worker_restarts`` (rows of
#: reason and count) before rendering.
Snapshot = dict[str, Any]


def have_prometheus_client() -> bool:
    """Whether prometheus_client (the triasgi[metrics] extra) can be imported."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def http_protocol(http_version: bytes) -> str:
    """The ``protocol`` label of an HTTP request: ``http/1.1``, ``http/2``."""
    return _PROTOCOLS.get(http_version) or "http/" + http_version.decode(
        "ascii", "replace"
    )


@final
class Metrics:
    """What one process has served since it started (or, summed, several).

    Each hook is a few dict and integer operations, on the event loop's
    thread; nothing here waits or does I/O.
    """

    __slots__ = (
        "connections",
        "disconnects",
        "durations",
        "grace_cancellations",
        "request_body_bytes",
        "requests",
        "response_body_bytes",
    )

    def __init__(self) -> None:
        #: (method, status, protocol) -> requests answered.
        self.requests: dict[tuple[str, int, str], int] = {}
        #: protocol -> [a count per bucket of BUCKETS (not cumulative), sum].
        self.durations: dict[str, tuple[list[int], list[float]]] = {}
        self.request_body_bytes = 0
        self.response_body_bytes = 0
        self.connections = 0
        #: protocol -> requests whose client left before the response ended.
        self.disconnects: dict[str, int] = {}
        self.grace_cancellations = 0

    # -- what the serving layer calls ----------------------------------------

    def request_done(
        self,
        method: bytes,
        status: int,
        protocol: str,
        bytes_in: int,
        bytes_out: int,
        seconds: float,
    ) -> None:
        """A request has been answered.

        Args:
            method: as on the wire; an unknown one counts as ``other``.
            status: the response's status.
            protocol: ``http/1.1``, ``http/2``, ``websocket`` (the handshake).
            bytes_in: request body bytes received since the last count.
            bytes_out: the response's body bytes.
            seconds: from the request head to the end of the response.
        """
        key = (_METHODS.get(method, "other"), status, protocol)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        histogram = self.durations.get(protocol)
        if histogram is None:
            histogram = self.durations[protocol] = ([0] * len(BUCKETS), [0.0])
        counts, total = histogram
        counts[bisect_left(BUCKETS, seconds)] += 1
        total[0] += seconds
        self.request_body_bytes += bytes_in
        self.response_body_bytes += bytes_out

    def disconnected(self, protocol: str) -> None:
        """An HTTP client went away before its response was complete."""
        self.disconnects[protocol] = self.disconnects.get(protocol, 0) + 1

    def connection_opened(self) -> None:
        """A connection was accepted."""
        self.connections += 1

    def connection_closed(self, bytes_in: int, *, grace_cancelled: bool) -> None:
        """A connection ended.

        Args:
            bytes_in: request body bytes received and not counted yet.
            grace_cancelled: the connection's disconnect grace period ran out,
                and cancelled what it ran.
        """
        self.request_body_bytes += bytes_in
        if grace_cancelled:
            self.grace_cancellations += 1

    def grace_cancelled(self) -> None:
        """An app was cancelled because its disconnect grace period ran out."""
        self.grace_cancellations += 1

    # -- snapshots -----------------------------------------------------------

    def snapshot(self, *, requests_in_flight: int, connections_open: int) -> Snapshot:
        """The counts and the gauges as plain values (JSON carries them)."""
        return {
            "requests": [[*key, count] for key, count in self.requests.items()],
            "durations": [
                [protocol, counts, total[0]]
                for protocol, (counts, total) in self.durations.items()
            ],
            "request_body_bytes": self.request_body_bytes,
            "response_body_bytes": self.response_body_bytes,
            "connections": self.connections,
            "disconnects": [[*item] for item in self.disconnects.items()],
            "grace_cancellations": self.grace_cancellations,
            "requests_in_flight": requests_in_flight,
            "connections_open": connections_open,
        }

    def add(self, snapshot: Snapshot) -> None:
        """Add the counts of another process's snapshot (not its gauges).

        Raises:
            ValueError: the snapshot is not one :meth:`snapshot` made.
        """
        try:
            for method, status, protocol, count in snapshot["requests"]:
                key = (str(method), int(status), str(protocol))
                self.requests[key] = self.requests.get(key, 0) + int(count)
            for protocol, counts, total in snapshot["durations"]:
                if len(counts) != len(BUCKETS):
                    raise ValueError("a histogram of other buckets")
                mine = self.durations.setdefault(
                    str(protocol), ([0] * len(BUCKETS), [0.0])
                )
                for index, count in enumerate(counts):
                    mine[0][index] += int(count)
                mine[1][0] += float(total)
            self.request_body_bytes += int(snapshot["request_body_bytes"])
            self.response_body_bytes += int(snapshot["response_body_bytes"])
            self.connections += int(snapshot["connections"])
            for protocol, count in snapshot["disconnects"]:
                name = str(protocol)
                self.disconnects[name] = self.disconnects.get(name, 0) + int(count)
            self.grace_cancellations += int(snapshot["grace_cancellations"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a metrics snapshot: {exc!r}") from None


# -- the text format ---------------------------------------------------------


def render(snapshot: Snapshot) -> bytes:
    """The Prometheus text exposition of a snapshot (prometheus_client's)."""
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import Collector, CollectorRegistry

    class _Once(Collector):
        def collect(self) -> Iterator[Metric]:
            return _families(snapshot)

    registry = CollectorRegistry()
    registry.register(_Once())
    return generate_latest(registry)


#: The metrics without labels: (kind, name, help, the snapshot's key).
_SINGLE = (
    (
        "gauge",
        "triasgi_requests_in_flight",
        "Requests (and WebSocket sessions) whose app call is running.",
        "requests_in_flight",
    ),
    (
        "counter",
        "triasgi_request_body_bytes",
        "Bytes of request bodies received.",
        "request_body_bytes",
    ),
    (
        "counter",
        "triasgi_response_body_bytes",
        "Bytes of response bodies sent.",
        "response_body_bytes",
    ),
    (
        "gauge",
        "triasgi_connections_open",
        "Connections accepted and not yet closed.",
        "connections_open",
    ),
    ("counter", "triasgi_connections", "Connections accepted.", "connections"),
    (
        "counter",
        "triasgi_grace_cancellations",
        "Apps cancelled because their disconnect grace period ran out.",
        "grace_cancellations",
    ),
    ("gauge", "triasgi_workers", "Worker processes serving.", "workers"),
)
#: The counters with labels: (name, help, label names, the snapshot's key),
#: whose rows are the label values followed by the count.
_LABELLED = (
    (
        "triasgi_requests",
        "Requests answered, by method, status and protocol.",
        ("method", "status", "protocol"),
        "requests",
    ),
    (
        "triasgi_disconnects",
        "HTTP requests whose client went away before the response was complete.",
        ("protocol",),
        "disconnects",
    ),
    (
        "triasgi_worker_restarts",
        "Workers replaced, by reason.",
        ("reason",),
        "worker_restarts",
    ),
)


def _families(snapshot: Snapshot) -> Iterator[Metric]:
    """The metric families of a snapshot; those of workers only with theirs."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    for name, text, labels, key in _LABELLED:
        if key in snapshot:
            family = CounterMetricFamily(name, text, labels=labels)
            for *values, count in snapshot[key]:
                family.add_metric([str(value) for value in values], count)
            yield family
    kinds = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily}
    for kind, name, text, key in _SINGLE:
        if key in snapshot:
            yield kinds[kind](name, text, value=snapshot[key])
    durations = HistogramMetricFamily(
        "triasgi_request_duration_seconds",
        "Seconds from a request's head to the end of its response.",
        labels=("protocol",),
    )
    bounds = ["+Inf" if bound == inf else repr(bound) for bound in BUCKETS]
    for protocol, counts, total in snapshot["durations"]:
        buckets = list(zip(bounds, accumulate(counts), strict=True))
        durations.add_metric((protocol,), buckets, total)
    yield durations
