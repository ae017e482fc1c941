"""The supervisor's metrics: the sum of its workers', and its own counts of workers.

Each worker of a server with ``metrics_bind`` sends a ``metrics`` report (a
JSON snapshot, ``_metrics.py``) with every heartbeat and a last one when it
stops.  The supervisor keeps each live worker's latest snapshot; when a
worker exits, its counts move into those of the workers that have exited, so
that the sum never goes back.  The gauges (requests in flight, open
connections) are the sum of the live workers' only.

A worker killed without warning (SIGKILL, a crash) takes with it what it
counted since its last report: at most one heartbeat interval's worth.
"""

from __future__ import annotations

import json
import logging
from typing import final

from .._metrics import Metrics, Snapshot
from ._children import WorkerProcess

logger = logging.getLogger("triasgi.error")

#: Why a worker was replaced: the ``reason`` label of worker restarts.
RESTART_REASONS = ("died", "unresponsive", "max_requests", "reload")


@final
class MetricsSum:
    """What the supervisor's metrics endpoint serves.

    Args:
        workers: the supervisor's list of its worker processes, which it
            keeps up to date.
    """

    def __init__(self, workers: list[WorkerProcess]) -> None:
        self._workers = workers
        self._exited = Metrics()
        self._latest: dict[WorkerProcess, Snapshot] = {}
        self._restarts = dict.fromkeys(RESTART_REASONS, 0)

    def report(self, worker: WorkerProcess, text: str) -> None:
        """A worker's ``metrics`` report: its snapshot, as JSON."""
        try:
            snapshot = json.loads(text)
            # Refuse now what could not be summed at a scrape.
            Metrics().add(snapshot)
            int(snapshot["requests_in_flight"]) + int(snapshot["connections_open"])
        except (ValueError, KeyError, TypeError) as exc:
            logger.debug("Bad metrics report from worker pid %d: %s", worker.pid, exc)
            return
        self._latest[worker] = snapshot

    def exited(self, worker: WorkerProcess) -> None:
        """A worker has exited: its last counts stay in the sum."""
        snapshot = self._latest.pop(worker, None)
        if snapshot is not None:
            self._exited.add(snapshot)

    def restarted(self, reason: str) -> None:
        """A worker was replaced, for one of :data:`RESTART_REASONS`."""
        self._restarts[reason] += 1

    def snapshot(self) -> Snapshot:
        """The sum, for :func:`triasgi._metrics.render`."""
        total = Metrics()
        total.add(self._exited.snapshot(requests_in_flight=0, connections_open=0))
        in_flight = connections_open = 0
        for snapshot in self._latest.values():
            total.add(snapshot)
            in_flight += int(snapshot["requests_in_flight"])
            connections_open += int(snapshot["connections_open"])
        summed = total.snapshot(
            requests_in_flight=in_flight, connections_open=connections_open
        )
        summed["workers"] = sum(
            1 for worker in self._workers if worker.active and worker.ready.is_set()
        )
        summed["worker_restarts"] = [[*item] for item in self._restarts.items()]
        return summed
