"""Task dependencies: a task queued only once every task it depends on has completed.

    add_task(fn, depends_on=[r1, r2])
          │  the engine numbers the task and holds it (in its table, not queued)
          ▼
    Dependencies ── r1.add_callback ─┐   (callbacks run on the engine's callback threads)
                 ── r2.add_callback ─┤
                                     ▼
                        _Waiter: one parent settled
             ┌─ COMPLETED, others left: wait
             ├─ COMPLETED, the last: release ──► host.release(fn, fed args) ──► queued, runs
             ├─ FAILED:    finish FAILED,    DependencyFailedError(parent)    (its exception as __cause__)
             └─ CANCELLED: finish CANCELLED, DependencyCancelledError(parent)

What a dependant receives (``feed``): nothing ("none", add_task's
depends_on), its one parent's result as the first argument ("first",
chain), or the list of its parents' results, in their order, as the first
argument ("list", chord).

Cycles are impossible by construction: ``depends_on`` takes TaskResults,
which exist only once submitted, so a task can depend only on tasks
submitted before it.

Worker-to-worker (issue 15): for a "first" feed (chain) the host may
store the dependant in its backend at once, for the parent's worker to
feed and queue it without the app (WorkflowHost.prefeed; the process
backend does, docs/workflows.md says when). The graph still waits for the
parent; when it completes, ``feed(value)`` says whether a worker fed the
task (the graph leaves it alone) or the app did, in the task's own slot
(the fallback: the parent ended before its worker could see the task), or
gives the task back to release as above; when it fails or the task is
cancelled, ``take_back()`` gives it back unless a worker fed it.

A held dependant can be cancelled (TaskResult.cancel) until it is
released; the release and the cancel take the same lock, so exactly one
wins. A dependant's failure or cancellation reaches its own dependants the
same way, each error naming its direct parent.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Iterable, Optional

from ..errors import DependencyCancelledError, DependencyFailedError
from ..records import TaskStatus
from ..results import TaskResult, cancelled_error
from .host import WorkflowHost

FEEDS = ("none", "first", "list")


class Dependencies:
    """What a task waits for, and what of it it receives (``feed``: see the module doc).

    ``add_task(fn, depends_on=[r1, r2])`` is ``Dependencies([r1, r2])``; the
    canvas (chain, chord) makes the feeding kinds.

    Raises:
        TypeError: a parent that is not a TaskResult. ValueError: an
            unknown feed, no parent, or "first" with more than one parent.
    """

    __slots__ = ("parents", "feed")

    def __init__(self, parents: Iterable[TaskResult], feed: str = "none") -> None:
        if isinstance(parents, TaskResult):
            parents = [parents]
        parents = list(parents)
        if feed not in FEEDS:
            raise ValueError(f"feed must be one of {FEEDS}, not {feed!r}")
        for p in parents:
            if not isinstance(p, TaskResult):
                raise TypeError("depends_on takes the TaskResults of submitted tasks, "
                                f"not {type(p).__name__}")
        if not parents:
            raise ValueError("depends_on is empty: give at least one TaskResult")
        if feed == "first" and len(parents) != 1:
            raise ValueError("feed='first' passes one parent's result: give exactly one parent")
        self.parents: list[TaskResult] = parents
        self.feed = feed

    @classmethod
    def of(cls, value: Any) -> "Dependencies":
        """``depends_on`` as given to add_task: a Dependencies, a TaskResult or an iterable of them."""
        if isinstance(value, cls):
            return value
        if isinstance(value, (str, bytes)) or not isinstance(value, (TaskResult, Iterable)):
            raise TypeError("depends_on takes a TaskResult or a list of them, "
                            f"not {type(value).__name__}")
        return cls(value)


class _Waiter:
    """One held task and the parents it still waits for."""

    __slots__ = ("task", "deps", "values", "remaining", "release", "stored")

    def __init__(self, task: TaskResult, deps: Dependencies,
                 release: Callable[[tuple], None], stored: Any = None) -> None:
        self.task = task
        self.deps = deps
        self.values: list[Any] = [None] * len(deps.parents)
        self.remaining = len(deps.parents)
        self.release = release
        #: the backend's hold on a task its parent's worker may feed (see
        #: DependencyGraph.wait_for); None: the task is only here
        self.stored = stored

    def taken_back(self) -> bool:
        """True if the task is the graph's to release, fail or cancel; False if a
        worker fed and queued it already (it runs as any task from there)."""
        return self.stored is None or self.stored.take_back()


class DependencyGraph:
    """The held tasks of one engine, each waiting for its parents.

    Args:
        host: the engine (WorkflowHost).
    """

    def __init__(self, host: WorkflowHost) -> None:
        self._host = host
        self._lock = threading.Lock()
        self._held: dict[str, _Waiter] = {}
        #: results handed to a dependant by the app (collected, then queued
        #: with the next task) and by the parent's worker (issue 15); plain
        #: counters, for tests and bench/workflows.py
        self.app_feeds = 0
        self.direct_feeds = 0

    def check(self, deps: Dependencies) -> None:
        """Refuse parents of another engine (their callbacks would never reach this one).

        Raises:
            ValueError: a parent was submitted to another engine.
        """
        for p in deps.parents:
            if not self._host.owns(p):
                raise ValueError(f"depends_on: task {p.task_id} belongs to another engine")

    def wait_for(self, task: TaskResult, deps: Dependencies,
                 release: Callable[[tuple], None], stored: Any = None) -> None:
        """Hold ``task`` (already in the engine's table) until ``deps`` settle.

        ``release(fed_args)`` is called once, on a callback thread (or here if
        every parent has ended already), when all parents completed, unless
        a worker fed the task itself.

        Args:
            stored: given when the backend stored the task for its parent's
                worker to feed (WorkflowHost.prefeed): once the parent
                completed, ``stored.feed(value)`` says who fed it ("worker",
                "app" in place, or "back": release it here); when it failed,
                or on cancel or close, ``stored.take_back()`` is False if a
                worker fed and queued it, and the graph then leaves it alone.
        """
        waiter = _Waiter(task, deps, release, stored)
        with self._lock:
            self._held[task.task_id] = waiter
        for index, parent in enumerate(deps.parents):
            parent.add_callback(_Settled(self, waiter, index))

    def cancel(self, task: TaskResult) -> bool:
        """Cancel ``task`` if it is held here; False if it is not (queued already, or unknown)."""
        with self._lock:
            waiter = self._held.get(task.task_id)
            if waiter is None or waiter.task is not task:
                return False
            if waiter.stored is None:
                del self._held[task.task_id]
        if waiter.stored is not None:
            # stored in the backend: its slot decides, not our table. A worker
            # feeding it right now wins (False); the waiter stays, so if that
            # feed fails the parent's settling still feeds it from the app.
            if not waiter.stored.take_back():
                return False
            with self._lock:
                if self._held.get(task.task_id) is waiter:
                    del self._held[task.task_id]
        self._host.finish(task, False, cancelled_error(task), TaskStatus.CANCELLED)
        return True

    def held(self) -> list[TaskResult]:
        """The tasks still waiting for a parent."""
        with self._lock:
            return [w.task for w in self._held.values()]

    def cancel_all(self) -> None:
        """Cancel every held task (the engine is closing; nothing will release them)."""
        with self._lock:
            waiters = list(self._held.values())
            self._held.clear()
        for w in waiters:
            if w.taken_back():  # else fed and queued: the backend's close settles it
                self._host.finish(w.task, False, cancelled_error(w.task), TaskStatus.CANCELLED)

    def parent_settled(self, waiter: _Waiter, index: int, value: Any) -> None:
        """A parent of ``waiter`` ended with ``value`` (its result or its exception)."""
        parent = waiter.deps.parents[index]
        status = parent.status
        with self._lock:
            if self._held.get(waiter.task.task_id) is not waiter:
                return  # settled already: cancelled, or another parent failed first
            if status is TaskStatus.COMPLETED:
                waiter.values[index] = value
                waiter.remaining -= 1
                if waiter.remaining:
                    return
            del self._held[waiter.task.task_id]
        task = waiter.task
        stored = waiter.stored
        if status is TaskStatus.COMPLETED:
            how = "back" if stored is None else stored.feed(waiter.values[0])
            if how == "worker":
                self.direct_feeds += 1
                return
            if waiter.deps.feed != "none":
                self.app_feeds += 1
            if how == "back":
                waiter.release(_fed(waiter))
            return
        if not waiter.taken_back():
            # the parent's worker fed and queued it, then died before it
            # published, and the parent's retry failed: the task ran (or
            # runs) on the first attempt's result, as any crash re-runs
            self.direct_feeds += 1
            return
        if status is TaskStatus.CANCELLED:
            self._host.finish(task, False, _cancelled(task, parent), TaskStatus.CANCELLED)
        else:
            err = DependencyFailedError(
                f"task {task.task_id} ({task.name}) did not run: task {parent.task_id} "
                f"({parent.name}) it depends on failed ({type(value).__name__})",
                parent.task_id, parent.name)
            err.__cause__ = value if isinstance(value, BaseException) else None
            self._host.finish(task, False, err, TaskStatus.FAILED)


class _Settled:
    """A parent's done-callback (a class, not a closure: its repr names the tasks in logs)."""

    __slots__ = ("graph", "waiter", "index")

    def __init__(self, graph: DependencyGraph, waiter: _Waiter, index: int) -> None:
        self.graph, self.waiter, self.index = graph, waiter, index

    def __call__(self, value: Any) -> None:
        self.graph.parent_settled(self.waiter, self.index, value)

    def __repr__(self) -> str:
        return (f"<dependency of {self.waiter.task.task_id} on "
                f"{self.waiter.deps.parents[self.index].task_id}>")


def _fed(waiter: _Waiter) -> tuple:
    feed = waiter.deps.feed
    if feed == "first":
        return (waiter.values[0],)
    if feed == "list":
        return (list(waiter.values),)
    return ()


def _cancelled(task: TaskResult, parent: TaskResult) -> DependencyCancelledError:
    return DependencyCancelledError(
        f"task {task.task_id} ({task.name}) did not run: task {parent.task_id} "
        f"({parent.name}) it depends on was cancelled", parent.task_id, parent.name)

