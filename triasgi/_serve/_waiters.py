"""Minimal waiting primitives for one connection's own tasks.

A connection has a few of these and rarely more than one task in any, so
they do without trio's ParkingLot and Event: part of the difference
between under and over 10 KiB per idle connection (docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Awaitable
from functools import partial
from typing import Any

import trio


class Waiters:
    """Tasks waiting for a connection's state to change: a minimal ParkingLot.

    A list stands in for ParkingLot's ordered dict.
    """

    __slots__ = ("tasks",)

    def __init__(self) -> None:
        #: The waiting tasks, None when there are none: a caller on the hot
        #: path looks before it calls :meth:`unpark_all`, which is then a
        #: call saved for nearly every request.
        self.tasks: list[trio.lowlevel.Task] | None = None

    def park(self) -> Awaitable[object]:
        """Wait until :meth:`unpark_all` is called (or the task is cancelled).

        Use as ``await waiters.park()``.  Not a coroutine function itself, so
        that a parked task holds one frame fewer.
        """
        task = trio.lowlevel.current_task()
        if self.tasks is None:
            self.tasks = [task]
        else:
            self.tasks.append(task)
        # The caller awaits it at once: that is the contract of park().
        return trio.lowlevel.wait_task_rescheduled(  # noqa: ASYNC105
            partial(self._abort, task)
        )

    def _abort(self, task: trio.lowlevel.Task, _: Any) -> trio.lowlevel.Abort:
        if self.tasks is not None:
            self.tasks.remove(task)
        return trio.lowlevel.Abort.SUCCEEDED

    def unpark_all(self) -> None:
        tasks = self.tasks
        if tasks is not None:
            self.tasks = None
            for task in tasks:
                trio.lowlevel.reschedule(task)
