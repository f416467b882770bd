"""Thread mode: the same API on threads of the app process, for I/O-bound work.

No pickling and no processes: a priority heap and ``workers`` threads. What
process mode does with processes, this does as far as threads allow: a task
past its timeout fails with TaskTimeoutError at once and its thread gets the
exception raised inside it (at its next Python instruction; a blocking C
call runs to its end first, and a thread cannot be killed).
"""
from __future__ import annotations

import heapq
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from .. import compat, progress
from ..errors import EngineClosedError, QueueFullError, TaskTimeoutError
from ..records import TaskStatus
from ..results import TaskResult
from ..thread_raise import raise_in_thread, withdraw_pending_raise
from .waiting_room import WaitingRoom

if TYPE_CHECKING:
    from ..lifecycle.host import TaskHost


class _ThreadTimeout(TaskTimeoutError):
    """Raised into an executor thread whose task ran past its timeout (never reaches a caller)."""


class _ThreadRecord:
    """What monitor.py reads of a worker, for one executor thread.

    ``lock`` orders the timer against the thread (issue 20.2): the timer
    claims a run (``claimed``) and raises into the thread only while
    ``current`` is that run, and the thread clears ``current`` -- and
    withdraws any raise not yet delivered (thread_raise.py) -- under the same
    lock. So exactly one of them settles the run, and the raise lands in that
    run or nowhere.
    """

    def __init__(self) -> None:
        self.pid = 0
        self.busy_ns = 0
        self.current_slot = 0
        self.tasks_done = 0
        self.current: Optional[TaskResult] = None
        self.ident = 0
        self.init_error: Optional[BaseException] = None  # the engine's initializer raised here
        self.lock = threading.Lock()
        self.claimed = False   # the timer settled the current run


class ThreadBackend:
    def __init__(self, host: "TaskHost") -> None:
        self.host = host
        o = host.options
        # the executor threads wait on the room's condition for its heap
        self._room = WaitingRoom(host, on_push=_nothing)
        self._cond, self._heap = self._room.cond, self._room.heap
        self._capacity = o.queue_size
        self._in_use = 0
        self._running = True
        self._records = [_ThreadRecord() for _ in range(o.workers)]
        self._threads = [threading.Thread(target=self._loop, args=(r,), name=f"czmp-thread-{i}",
                                          daemon=True) for i, r in enumerate(self._records)]
        for t in self._threads:
            t.start()

    # -- submit -------------------------------------------------------------

    def dispatch(self, task: TaskResult, fn: Callable, args: tuple, kwargs: dict) -> None:
        self._reserve()
        task.fn = fn
        task.payload = (args, kwargs)
        if task.delay_ms:
            self._room.park(task, task.delay_ms / 1000.0)
        else:
            self._room.push(task)

    def dispatch_many(self, tasks: list[TaskResult], fn: Callable, calls: list[tuple],
                      done: list[int]) -> None:
        for task, args in zip(tasks, calls):
            self.dispatch(task, fn, args, {})
            done[0] += 1

    def _reserve(self) -> None:
        timeout = self.host.queue_wait_s()  # 0 inside add_task_async
        with self._cond:
            if not self._cond.wait_for(lambda: self._in_use < self._capacity or not self._running,
                                       timeout):
                raise QueueFullError(f"all {self._capacity} task places stayed in use for "
                                     f"{timeout:g} s (queue_size); the task was not queued")
            if not self._running:
                raise EngineClosedError("the engine is shut down; it takes no new tasks")
            self._in_use += 1

    def _unreserve(self) -> None:
        with self._cond:
            self._in_use -= 1
            self._cond.notify_all()

    def cancel(self, task: TaskResult) -> bool:
        with self._cond:
            if not self._room.withdraw_locked(task):
                return False
            self._in_use -= 1
            self._cond.notify_all()
        return True

    # -- run ----------------------------------------------------------------------

    def _loop(self, rec: _ThreadRecord) -> None:
        try:
            self._serve(rec)
        except BaseException as exc:  # noqa: BLE001 - the engine is broken: waiters must know
            self.host.thread_died(threading.current_thread().name, exc)
            raise

    def _serve(self, rec: _ThreadRecord) -> None:
        rec.ident = threading.get_ident()
        progress.set_thread_sink(lambda f, m: self._progress(rec, f, m))
        rec.init_error = compat.run_thread_initializer(self.host.options)
        while True:
            with self._cond:
                while self._running and not self._heap:
                    self._cond.wait()
                if not self._heap:
                    return
                _, _, task = heapq.heappop(self._heap)
            try:
                self._run(rec, task)
            except _ThreadTimeout:
                # the one raise of this run landed outside the task: finish leaving it
                self._end_run(rec)
            # an idle thread must not keep its last task (and result) alive
            task = None

    def _run(self, rec: _ThreadRecord, task: TaskResult) -> None:
        args, kwargs = task.payload
        task.status = TaskStatus.RUNNING
        task.started_at = time.time()
        task.worker_id = self._records.index(rec)
        task.progress_value = None
        attempt = task.attempt
        with rec.lock:
            rec.current, rec.current_slot, rec.claimed = task, 1, False
        timer = None
        if task.timeout_ms:
            timer = self.host.schedule(task.timeout_ms / 1000.0,
                                          lambda: self._time_out(rec, task, attempt))
        t0 = time.perf_counter_ns()
        try:
            ok, value = True, compat.run_in_thread(task, args, kwargs, rec.init_error)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            ok, value = False, exc
        finally:
            claimed = self._end_run(rec)
        if timer is not None:
            self.host.unschedule(timer)  # it holds the task: drop it now, not in 30 s
        elapsed = time.perf_counter_ns() - t0
        rec.busy_ns += elapsed
        rec.tasks_done += 1
        if claimed:
            return  # timed out: the timer gave the outcome already
        task.exec_ms = elapsed / 1e6
        if not ok and not isinstance(value, Exception):
            from ..errors import TaskError

            wrapped = TaskError(f"the task raised {type(value).__name__}")
            wrapped.__cause__ = value
            value = wrapped
        self._settle(task, ok, value)

    def _settle(self, task: TaskResult, ok: bool, value: Any) -> None:
        host = self.host
        if not ok and host.attempt_failed(task, value):
            self._room.park(task, host.backoff_s(task.attempt, task))
            return
        self._unreserve()
        task.fn = task.payload = None  # let the arguments go
        host.finish(task, ok, value, TaskStatus.COMPLETED if ok else TaskStatus.FAILED)

    def _end_run(self, rec: _ThreadRecord) -> bool:
        """Leave the current run; True if the timer claimed it. Idempotent."""
        with rec.lock:
            claimed = rec.claimed
            if rec.current is not None and claimed:
                withdraw_pending_raise()  # drop the raise if not delivered yet
            rec.current, rec.current_slot = None, 0
        return claimed

    def _time_out(self, rec: _ThreadRecord, task: TaskResult, attempt: int) -> None:
        with rec.lock:
            if (rec.current is not task or rec.claimed or task.attempt != attempt
                    or task.done()):
                return
            rec.claimed = True
            # raised while the thread is still in this run (it leaves under this lock)
            raise_in_thread(rec.ident, _ThreadTimeout)
        err = TaskTimeoutError(f"task {task.task_id} ran past its timeout of {task.timeout_ms} ms")
        self._settle(task, False, err)

    def _progress(self, rec: _ThreadRecord, fraction: float, message: str) -> None:
        if rec.current is not None:
            rec.current.progress_value = (fraction, message)

    # -- observation ----------------------------------------------------------------

    def help_collect(self, task: TaskResult, timeout) -> None:
        pass  # threads complete their tasks themselves

    def observe(self, task: TaskResult) -> None:
        pass  # status is kept current by the threads themselves

    def live_progress(self, task: TaskResult):
        return task.progress_value

    def is_running(self, task: TaskResult) -> bool:
        return False  # the threads write RUNNING into the task themselves

    def terminate(self, task: TaskResult) -> bool:
        return False  # a thread cannot be killed: cancel(force=True) is cancel()

    def queue_depths(self) -> list[int]:
        with self._cond:
            return self._room.depths_locked()

    def worker_records(self):
        return [(r, r) for r in self._records]

    def in_flight_memory(self) -> tuple[int, int]:
        return 0, 0

    # -- shutdown -----------------------------------------------------------------

    def close(self, abandon: Callable[[TaskResult], None]) -> None:
        with self._cond:
            self._running = False
            queued = [e[2] for e in self._heap]
            self._heap.clear()
            self._cond.notify_all()
        for task in queued:
            abandon(task)
        for t in self._threads:
            t.join(timeout=1.0)
        for task in self.host.unfinished():
            task.parked = False
            abandon(task)


def _nothing() -> None:
    """The thread backend's on_push: its executor threads wake on the room's condition."""
