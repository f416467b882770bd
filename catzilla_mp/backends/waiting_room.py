"""WaitingRoom: the in-process priority queue of the thread and Ray backends.

Both keep the tasks not yet handed to a runner in a heap ordered by
(priority, arrival), and park a delayed or backing-off task on the
lifecycle's timer thread until it is due:

    dispatch ──► push ──► heap ──► (the backend takes the most urgent) ──► run
                 ▲
    park(task, delay) ── host.schedule ── unpark (when due)

Ownership: ``task.parked`` is True while a park is being set up, then the
timer (truthy) so that ``withdraw_locked`` can drop it, and False once the
task is back in the heap or withdrawn. Every field is guarded by ``cond``.
"""
from __future__ import annotations

import heapq
import itertools
import threading
from typing import TYPE_CHECKING, Callable

from ..records import TaskStatus

if TYPE_CHECKING:
    from ..lifecycle.host import TaskHost
    from ..results import TaskResult


class WaitingRoom:
    """Tasks waiting for a runner, most urgent first, and the parked ones."""

    def __init__(self, host: "TaskHost", on_push: Callable[[], None]) -> None:
        """``on_push`` runs (outside ``cond``) after a task entered the heap: the
        backend hands the most urgent tasks to free runners there, or does nothing."""
        self.host = host
        self.cond = threading.Condition()
        self.heap: list[tuple[int, int, "TaskResult"]] = []
        self._seq = itertools.count()
        self._on_push = on_push

    def push(self, task: "TaskResult") -> None:
        with self.cond:
            self.push_locked(task)
        self._on_push()

    def push_locked(self, task: "TaskResult") -> None:
        heapq.heappush(self.heap, (task.priority.value, next(self._seq), task))
        self.cond.notify_all()

    def park(self, task: "TaskResult", delay_s: float) -> None:
        """Back into the heap after ``delay_s`` (a delay or a retry's back-off)."""
        task.parked = True
        timer = self.host.schedule(delay_s, lambda: self._unpark(task))
        with self.cond:
            if task.parked is True:
                task.parked = timer

    def _unpark(self, task: "TaskResult") -> None:
        with self.cond:
            if not task.parked:
                return  # withdrawn meanwhile
            task.parked = False
        task.status = TaskStatus.PENDING
        self.push(task)

    def withdraw_locked(self, task: "TaskResult") -> bool:
        """Take ``task`` out if it is parked or in the heap (caller holds ``cond``).

        Returns:
            True if withdrawn; False if it is done or no longer waiting here.
        """
        if task.done():
            return False
        if task.parked:
            if task.parked is not True:
                self.host.unschedule(task.parked)
            task.parked = False
            return True
        entry = next((e for e in self.heap if e[2] is task), None)
        if entry is None:
            return False
        self.heap.remove(entry)
        heapq.heapify(self.heap)
        return True

    def depths_locked(self) -> list[int]:
        """Tasks in the heap per priority (CRITICAL, HIGH, NORMAL, LOW)."""
        depths = [0, 0, 0, 0]
        for prio, _, _ in self.heap:
            depths[prio] += 1
        return depths
