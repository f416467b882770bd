"""TaskLifecycle: one task's life from admission to its final outcome.

Every backend runs attempts; this class decides what an attempt's end means.
It owns the task table and the policies:

    admit ──► (backend: queued / parked by delay_ms) ──► attempt ──┬─ ok ─────────► finish COMPLETED
                                                                   ├─ failed ─► attempt_failed?
                                                                   │     yes: RETRYING, backoff_s ─► parked ─► attempt
                                                                   │     no:  finish FAILED
                                                                   ├─ cancel_task ─► finish CANCELLED
                                                                   └─ engine closed ─► abandon ─► CANCELLED / FAILED

  * admission: a closed or broken engine takes no task (EngineClosedError,
    EngineBrokenError); submission counters for the monitor.
  * retry and back-off: attempt_failed (NOT_RETRYABLE, max_retries,
    retry_on/retry_if) and backoff_s (retry_backoff, capped).
  * delays and timeouts: schedule/unschedule on the delay thread
    (lifecycle/delays.py); a backend parks a task there.
  * finishing: finish() settles a task once, counts it (monitor), keeps it
    findable within keep_finished / keep_finished_bytes / result_ttl_s, emits
    its event, then completes the TaskResult (whose callbacks run on the
    callback threads, lifecycle/callbacks.py). finish_many() does the same
    for a collector's batch under one lock acquisition.
  * a dead engine thread: thread_died fails every unfinished task.

Backends see this class through the TaskHost protocol (lifecycle/host.py);
TaskResult sees it through its owner methods (cancel_task, observe,
help_collect, live_progress, is_running, callback_runner). The engine
(engine.py) is the public API built on it: it validates and numbers
submissions, makes the backend (``_backend``) and shuts down.
"""
from __future__ import annotations

import functools
import itertools
import logging
import sys
import threading
import time
import weakref
import collections
from typing import Any, Callable, Optional

from .. import compat
from ..errors import (
    EngineBrokenError,
    EngineClosedError,
    MemoryLimitError,
    PayloadTooLargeError,
    SerializationError,
    TaskTimeoutError,
    WorkerInitializerError,
)
from ..records import TaskStatus
from ..results import TaskResult, cancelled_error
from .callbacks import CallbackRunner
from .delays import DelayQueue
from .monitor import Monitor

log = logging.getLogger("catzilla_mp")

EVENTS = {TaskStatus.COMPLETED: "completed", TaskStatus.FAILED: "failed",
          TaskStatus.CANCELLED: "cancelled"}
#: Errors a retry cannot fix: the same input fails the same way.
NOT_RETRYABLE = (SerializationError, PayloadTooLargeError, TaskTimeoutError, MemoryLimitError,
                 WorkerInitializerError)
#: How long cancel(force=True) waits for the killed worker to be reaped.
FORCE_CANCEL_WAIT_S = 10.0
#: Items of a container result measured to estimate its size (keep_finished_bytes).
SIZE_SAMPLE = 32


#: Why a finished task's result was dropped (see expired_reason).
DROPPED_BY_COUNT, DROPPED_BY_BYTES, DROPPED_BY_AGE = 0, 1, 2


class TaskLifecycle:
    """The task table and the policies of a task's life; the TaskHost of a backend.

    A base class of BackgroundTasks: the engine is one object, so the hot
    paths (submit, finish) cost no extra indirection. Subclasses set
    ``options`` (EngineOptions), ``worker_extras`` and ``_backend`` and call
    ``_init_lifecycle()`` then ``_start_lifecycle()``.
    """

    options: Any
    worker_extras: dict
    _backend: Any

    # -- state -------------------------------------------------------------------

    def _init_lifecycle(self) -> None:
        """The task table, the submission counters and the closing flags."""
        self._ids = itertools.count(1)
        # set while add_task_async tries a submission: the backends then do not wait for room
        self._no_wait = threading.local()
        self._tasks: dict[str, TaskResult] = {}
        self._lock = threading.Lock()
        self._closed = False
        # False once shutdown stops waiting for tasks: a failed attempt is final then
        self._retries_allowed = True
        self._last_seq = 0  # the newest task number handed out (submission statistics)
        self._queue_full = 0  # submissions refused with QueueFullError
        self._submit_failed = 0  # numbered tasks that were never queued (any error)
        self._forget_finished()

    def _forget_finished(self) -> None:
        """Start the finished-task bookkeeping afresh (a new engine, or a forked child's)."""
        # finished tasks still findable, oldest first, as (task id, result
        # size, time.monotonic() when finished): bounded by keep_finished,
        # keep_finished_bytes and result_ttl_s (see _retain_locked)
        self._finished: collections.deque[tuple[str, int, float]] = collections.deque()
        self._retained_bytes = 0
        self._expiry_due = False
        # tasks whose result was dropped: id -> (status, completed_at, DROPPED_BY_*)
        self._expired: collections.OrderedDict[str, tuple] = collections.OrderedDict()
        # finished submit()/map() tasks, findable while their caller keeps them
        self._weak_tasks: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def _start_lifecycle(self, listeners: tuple = ()) -> None:
        """The monitor and the lifecycle's threads (delays, callbacks); a forked child's anew."""
        self.monitor = Monitor(self)
        self.monitor._listeners = listeners
        # set once by the shutdown() that does the work; the others wait on it
        self._shut_down = threading.Event()
        self._shutting_down = False
        # the exception that broke the engine (an engine thread died), or None
        self._broken: Optional[BaseException] = None
        self._callback_runner = CallbackRunner()
        self._delays = DelayQueue(on_death=weakly(self.thread_died))

    # -- TaskHost: what backends call (lifecycle/host.py) ---------------------------

    @property
    def lock(self) -> threading.Lock:
        """The lock under which task status fields and the task table's bookkeeping change."""
        return self._lock

    @property
    def backend(self) -> Any:
        """The backend running this lifecycle's attempts, or None once closed."""
        return self._backend

    def queue_wait_s(self) -> float:
        """How long a submission on this thread may wait for room (the backends ask).

        ``queue_full_timeout``, or 0 while add_task_async tries a submission.
        """
        return 0.0 if getattr(self._no_wait, "on", False) else self.options.queue_full_timeout

    def attempt_failed(self, task: TaskResult, exc: BaseException) -> bool:
        """Decide after a failed attempt: True to retry (the caller keeps the task's payload)."""
        # while shutdown waits for completion, retries still run (see shutdown())
        if (not self._retries_allowed or task.attempt >= task.max_retries
                or isinstance(exc, NOT_RETRYABLE)):
            return False
        if task.opts is not None and not task.opts.should_retry(exc):
            return False
        task.attempt += 1
        task.status = TaskStatus.RETRYING
        self.monitor.count_retry(task, exc)
        return True

    def backoff_s(self, attempt: int, task: Optional[TaskResult] = None) -> float:
        """Seconds before retry ``attempt``, by the task's retry_backoff (see compat.TaskOptions)."""
        o = self.options
        if task is not None and task.opts is not None:
            return task.opts.backoff_s(attempt, o.retry_backoff_base, o.retry_backoff_cap)
        return compat.exponential_backoff(attempt, o.retry_backoff_base, o.retry_backoff_cap)

    def schedule(self, delay_s: float, fn: Callable[[], None]) -> Any:
        """Call ``fn()`` on the delay thread in ``delay_s`` s; returns a handle for unschedule."""
        return self._delays.call_at(time.monotonic() + delay_s, fn)

    def unschedule(self, timer: Any) -> None:
        """Drop a timer from schedule that is no longer needed (what it holds goes with it)."""
        self._delays.cancel(timer)

    def finish(self, task: TaskResult, ok: bool, value: Any, status: TaskStatus) -> None:
        """Final outcome: account for it, then complete the TaskResult; once per task.

        The accounting comes first so that a caller woken by wait() finds the
        engine already agreeing (statistics, which finished ids are kept).
        """
        monitor = self.monitor
        with self._lock:
            if task._final:
                return
            task._final = True
            # listeners below see the final status and time, as waiters will
            task._status = status  # (the field behind TaskResult.status: no setter call)
            task.completed_at = time.time()
            monitor.count_final_locked(task, ok, value, status)
            self._retain_locked(task, value)
        if monitor._listeners:
            monitor.emit(EVENTS[status], task, value)
        task._finish(ok, value, status)

    def finish_many(self, settled: list) -> None:
        """finish() for a batch of ``(task, ok, value, status)`` (the collector's), in order.

        One acquisition of the engine lock and one clock read for the whole
        batch instead of one per task: the collector shares the GIL with the
        submitting threads, and this is most of its work per task. As in
        finish(), every task is accounted for before any of them completes.
        """
        monitor = self.monitor
        count, retain = monitor.count_final_locked, self._retain_locked
        wall, mono = time.time(), time.monotonic()
        todo = []
        with self._lock:
            for item in settled:
                task = item[0]
                if task._final:
                    continue
                task._final = True
                task._status = item[3]
                task.completed_at = wall
                count(task, item[1], item[2], item[3], mono)
                retain(task, item[2], mono)
                todo.append(item)
        for task, ok, value, status in todo:
            try:
                if monitor._listeners:
                    monitor.emit(EVENTS[status], task, value)
                task._finish(ok, value, status)
            except BaseException:  # noqa: BLE001 - the rest of the batch must still complete
                log.exception("finishing task %s failed", task.task_id)

    def thread_died(self, name: str, exc: BaseException) -> None:
        """An engine thread ended unexpectedly: the engine is broken (issue 11.4, 20.6).

        Every task not yet final fails with EngineBrokenError (the cause
        chained), and later submissions raise it: a waiter never hangs on a
        thread that is gone. shutdown() still cleans up.
        """
        if self._shutting_down:
            return
        err = EngineBrokenError(f"the engine's thread {name!r} died ({exc!r}); "
                                "pending tasks cannot complete, shut the engine down")
        err.__cause__ = exc
        log.critical("%s", err, exc_info=exc)
        with self._lock:
            if self._broken is None:
                self._broken = err
        for t in self.unfinished():
            with self._lock:
                t.parked = False
            self.finish(t, False, err, TaskStatus.FAILED)

    def unfinished(self) -> list[TaskResult]:
        """Every task submitted and not yet final."""
        # list() copies the values in one step under the GIL: submitters may
        # add tasks concurrently, and they take no lock
        return [t for t in list(self._tasks.values()) if not t.done()]

    # -- admission -------------------------------------------------------------------

    def _admit(self, task: TaskResult) -> None:
        # No lock on the submit path: the collector holds the engine lock to
        # finish tasks, and a contended acquire hands the GIL over (a
        # cross-CPU wake-up). A dict store is atomic; a task admitted while
        # shutdown() starts is found by its scan of unfinished tasks.
        if self._closed:
            raise EngineClosedError("the engine is shut down; it takes no new tasks")
        if self._broken is not None:
            self._raise_broken()
        self._tasks[task.task_id] = task

    def _raise_broken(self) -> None:
        broken = self._broken
        raise EngineBrokenError(f"{broken}; the task was not queued") from broken.__cause__

    def _forget(self, task: TaskResult) -> None:
        self._tasks.pop(task.task_id, None)

    def _in_flight(self) -> int:
        """Tasks submitted and not yet final: every task in _tasks is either
        unfinished or one of the finished ones remembered in _finished."""
        return len(self._tasks) - len(self._finished)

    # -- retention of finished tasks -----------------------------------------------

    def _retain_locked(self, task: TaskResult, value: Any, now: Optional[float] = None) -> None:
        """Keep a finished task findable by get_task_result, within bounds; the lock is held.

        A submit()/map() task is the caller's future's: the engine keeps only
        a weak reference. An add_task one is kept within keep_finished tasks,
        keep_finished_bytes of results and result_ttl_s seconds; past those
        only its status is kept (the caller's TaskResult keeps its value).
        """
        if task.executor:
            self._tasks.pop(task.task_id, None)
            self._weak_tasks[task.task_id] = task
            return
        size = task.result_bytes or approx_size(value)
        if now is None:
            now = time.monotonic()
        finished = self._finished
        finished.append((task.task_id, size, now))
        self._retained_bytes += size
        o = self.options
        # _evict_locked's own test, written out: this runs once per finished task
        if (len(finished) > o.keep_finished or self._retained_bytes > o.keep_finished_bytes
                or finished[0][2] <= now - o.result_ttl_s):
            self._evict_locked(now)
        ttl = self.options.result_ttl_s
        if self._finished and not self._expiry_due and ttl and not self._closed:
            self._expiry_due = True
            self._delays.call_at(self._finished[0][2] + ttl,
                                 functools.partial(_expire_results, weakref.ref(self)))

    def expired_reason(self, why: int) -> str:
        """Why a finished task's result was dropped, in words (``why`` from _evict_locked)."""
        o = self.options
        if why == DROPPED_BY_COUNT:
            return f"only the last {o.keep_finished} results are kept (keep_finished)"
        if why == DROPPED_BY_BYTES:
            return f"results are kept up to {o.keep_finished_bytes} bytes (keep_finished_bytes)"
        return f"results are kept for {o.result_ttl_s:g} s (result_ttl_s)"

    def _evict_locked(self, now: float) -> None:
        o = self.options
        finished, tasks, expired = self._finished, self._tasks, self._expired
        horizon = now - o.result_ttl_s
        while finished:
            # the reason is kept as a code and worded only when someone asks
            # (expired_reason): this runs once per finished task at steady state
            if len(finished) > o.keep_finished:
                why = DROPPED_BY_COUNT
            elif self._retained_bytes > o.keep_finished_bytes:
                why = DROPPED_BY_BYTES
            elif finished[0][2] <= horizon:
                why = DROPPED_BY_AGE
            else:
                return
            task_id, size, _ = finished.popleft()
            self._retained_bytes -= size
            task = tasks.pop(task_id, None)
            if task is not None and o.keep_finished:
                expired[task_id] = (task._status, task.completed_at, why)  # final: no live read
                if len(expired) > o.keep_finished:
                    expired.popitem(last=False)

    def _expire_results(self) -> None:
        """The timer of result_ttl_s: drop what is too old, then wait for the next oldest."""
        with self._lock:
            self._expiry_due = False
            if self._closed:
                return
            self._evict_locked(time.monotonic())
            if self._finished:
                self._expiry_due = True
                self._delays.call_at(self._finished[0][2] + self.options.result_ttl_s,
                                     functools.partial(_expire_results, weakref.ref(self)))

    # -- ending tasks early -----------------------------------------------------------

    def abandon(self, task: TaskResult) -> None:
        """A task still unfinished when the engine closed."""
        if task.status in (TaskStatus.PENDING, TaskStatus.RETRYING) and task.started_at is None:
            self.finish(task, False, cancelled_error(task), TaskStatus.CANCELLED)
        else:
            self.finish(task, False, EngineClosedError(
                f"the engine shut down before task {task.task_id} finished"), TaskStatus.FAILED)

    def _cancel_not_started(self) -> None:
        # submitters add to _tasks without the lock: copy it in one step
        for t in self.unfinished():
            self.cancel_task(t)

    # -- a TaskResult's owner (results.py) -------------------------------------------

    @property
    def callback_runner(self) -> CallbackRunner:
        """The threads that run the tasks' done-callbacks."""
        return self._callback_runner

    def cancel_task(self, task: TaskResult, force: bool = False) -> bool:
        """TaskResult.cancel: cancel ``task`` if not started (or kill its worker with ``force``)."""
        backend = self._backend
        if task.done() or backend is None:
            return False
        if backend.cancel(task):
            self.finish(task, False, cancelled_error(task), TaskStatus.CANCELLED)
            return True
        if not force or not backend.terminate(task):  # threads cannot be killed
            return False
        # the supervisor reaps the killed worker within a tick; the task may
        # also have finished just before the kill, and then it stays finished
        ev = task._waiter()
        if ev is not None:
            ev.wait(FORCE_CANCEL_WAIT_S)
        return task.cancelled()

    def help_collect(self, task: TaskResult, timeout: Optional[float]) -> None:
        """Let a waiting thread collect outcomes itself for a moment (see the process backend)."""
        backend = self._backend
        if backend is not None:
            backend.help_collect(task, timeout)

    def observe(self, task: TaskResult) -> None:
        """Bring ``task``'s status up to date from its backend (RUNNING is seen there only)."""
        backend = self._backend
        if backend is not None and not task.done():
            backend.observe(task)

    def is_running(self, task: TaskResult) -> bool:
        """True while a worker runs ``task`` (TaskResult.status reads it live)."""
        backend = self._backend
        return backend is not None and backend.is_running(task)

    def live_progress(self, task: TaskResult) -> Optional[tuple[float, str]]:
        """The progress ``task`` reported while running, or None."""
        backend = self._backend
        if backend is None or task.done():
            return None
        return backend.live_progress(task)


def _expire_results(ref: "weakref.ref[TaskLifecycle]") -> None:
    life = ref()
    if life is not None:
        life._expire_results()


def approx_size(value: Any) -> int:
    """Bytes a retained result holds, roughly (thread mode; process mode counts the pickle):
    exact for bytes, str and arrays; for a container or an object, its items or
    attributes one level down, sampled when there are many."""
    nbytes = getattr(value, "nbytes", None)  # NumPy arrays, memoryviews
    if type(nbytes) is int:
        return nbytes
    try:
        attrs = getattr(value, "__dict__", None)
        if type(attrs) is dict and not isinstance(value, type):
            return sys.getsizeof(value, 64) + approx_size(attrs)
        size = sys.getsizeof(value, 64)
        if isinstance(value, (list, tuple, set, frozenset, dict)) and value:
            items = list(itertools.islice(value.items() if isinstance(value, dict) else value,
                                          SIZE_SAMPLE))
            sample = sum(sys.getsizeof(x, 64) if not isinstance(x, tuple) else
                         sum(sys.getsizeof(y, 64) for y in x) for x in items)
            size += sample * len(value) // len(items)
        return size
    except Exception:  # noqa: BLE001 - a __sizeof__ or __len__ that raises: count a little
        return 64


def weakly(method: Callable[..., None]) -> Callable[..., None]:
    """``method`` called through a weak reference to its object: a thread that
    holds the result must not keep a dropped engine alive (issue 11.14)."""
    ref = weakref.WeakMethod(method)

    def call(*args: Any) -> None:
        bound = ref()
        if bound is not None:
            bound(*args)

    return call
