"""TaskResult and TaskFuture: what a caller holds for a submitted task.

A TaskResult is also the engine's record of its task (one object per task:
the submit path is measured in microseconds). Its fields are written by the
engine's threads; callers read them through the public methods. Completion
happens exactly once, under ``_lock``; waiters and futures are created only
when someone asks for them, so a task nobody waits on costs no Event.
"""
from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Generic, Optional, Protocol, TypeVar

from .errors import TaskCancelledError
from .records import TaskPriority, TaskStats, TaskStatus

if TYPE_CHECKING:
    from .compat import TaskOptions

T = TypeVar("T")
log = logging.getLogger("catzilla_mp")

# One lock for every task's completion hand-off: held for a few attribute
# writes only, so sharing it costs less than a lock per task would.
_lock = threading.Lock()


def _reset_lock_after_fork() -> None:
    # another thread of the parent may have held it at the fork
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_lock_after_fork)

_FINAL = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)
#: Read once per task on the hot paths: a module global, not an Enum member lookup (~50 ns).
_PENDING = TaskStatus.PENDING
#: How long wait() waits, once the outcome is known, for the task's callbacks
#: (which run on the engine's callback threads) to have run.
CALLBACK_WAIT_S = 5.0


class TaskOwner(Protocol):
    """What a TaskResult asks of the engine that owns it (lifecycle/core.py implements it).

    A TaskResult holds its owner for the calls below only; the owner settles
    the task through ``_finish`` (once, under this module's lock).
    """

    #: runs done-callbacks off the engine's threads (lifecycle/callbacks.py)
    callback_runner: Any

    def cancel_task(self, task: "TaskResult", force: bool = False) -> bool: ...

    def help_collect(self, task: "TaskResult", timeout: Optional[float]) -> None: ...

    def observe(self, task: "TaskResult") -> None: ...

    def is_running(self, task: "TaskResult") -> bool: ...

    def live_progress(self, task: "TaskResult") -> Optional[tuple[float, str]]: ...


class TaskFuture(concurrent.futures.Future, Generic[T]):
    """A concurrent.futures.Future for a task, awaitable from asyncio."""

    def __init__(self, task_id: str, engine: Optional["TaskOwner"] = None,
                 task: Optional["TaskResult"] = None) -> None:
        super().__init__()
        self.task_id = task_id
        self._engine = engine
        self._task = task

    def _invoke_callbacks(self) -> None:
        # done-callbacks are user code: they run on the engine's callback
        # threads, never on the engine thread that settles the future (issue 20.5)
        runner = getattr(self._engine, "callback_runner", None)
        if runner is None or runner.in_pool():
            super()._invoke_callbacks()
        else:
            runner.submit(super()._invoke_callbacks)

    def cancel(self) -> bool:
        """Cancel the task if it has not started (Executor semantics)."""
        if self._task is not None and not self.done():
            self._task.cancel()
            return self.cancelled()
        if super().cancel():
            # as Executor implementations do for a cancelled future: waiters of
            # concurrent.futures.wait()/as_completed() count it as done
            self.set_running_or_notify_cancel()
            return True
        return self.cancelled()

    def running(self) -> bool:
        """True while the task runs (in a worker, or a thread of the app in thread mode)."""
        task = self._task
        if task is None or self.done():
            return super().running()
        if task.status is not TaskStatus.RUNNING:
            task._engine.observe(task)  # RUNNING is visible in the task's slot only
        return task.status is TaskStatus.RUNNING and not self.done()

    def __await__(self):
        # wrap_future hands completion to the running loop thread-safely;
        # awaiting never blocks the event loop. asyncio is imported here, not
        # at the top: an awaiting caller has loaded it, and the app that never
        # awaits does not pay its ~10 ms import at start-up.
        import asyncio
        return asyncio.wrap_future(self).__await__()

    def then(self, callback: Callable[[T], Any]) -> "TaskFuture":
        """A future of ``callback(result)``; failures pass through unchanged."""
        chained: TaskFuture = TaskFuture(f"{self.task_id}_chained", self._engine)

        def _chain(fut: concurrent.futures.Future) -> None:
            try:
                chained.set_result(callback(fut.result()))
            except BaseException as exc:  # noqa: BLE001 - handed to the chained future
                chained.set_exception(exc)

        self.add_done_callback(_chain)
        return chained

    def catch(self, handler: Callable[[BaseException], Any]) -> "TaskFuture":
        """A future of the result, or of ``handler(exception)`` if the task failed."""
        caught: TaskFuture = TaskFuture(f"{self.task_id}_error", self._engine)

        def _catch(fut: concurrent.futures.Future) -> None:
            try:
                caught.set_result(fut.result())
            except BaseException as exc:  # noqa: BLE001
                try:
                    caught.set_result(handler(exc))
                except BaseException as again:  # noqa: BLE001
                    caught.set_exception(again)

        self.add_done_callback(_catch)
        return caught


class TaskResult(Generic[T]):
    """A submitted task: its outcome, status and statistics."""

    __slots__ = (
        "task_id", "_engine", "_status", "_ok", "_value", "_event", "_callbacks", "_fut",
        "fn", "func_id", "payload", "priority", "delay_ms", "max_retries", "timeout_ms",
        "attempt", "created_at", "started_at", "completed_at", "exec_ms", "worker_id",
        "slot", "ext_args", "progress_value", "meta", "parked", "name", "seq", "_final",
        "opts", "wextras", "memory_mb", "profile", "native",
        "executor", "result_bytes", "__weakref__",
        "_tb", "_cbs_done",
    )

    def __init__(self, task_id: str, engine: "TaskOwner",
                 priority: TaskPriority = TaskPriority.NORMAL, max_retries: int = 3,
                 timeout_ms: int = 30000, delay_ms: int = 0, seq: int = 0, name: str = "",
                 opts: Optional["TaskOptions"] = None, executor: bool = False) -> None:
        # (task_id, engine) is Catzilla's signature; the rest the engine passes
        # (all of it here, once: every store counts on the submit path)
        self.task_id = task_id
        self._engine = engine
        self._status = _PENDING
        self._ok = None          # None until final; then True/False
        self._value: Any = None  # result, or the exception to raise
        self._tb = None  # the exception's own traceback, restored on every raise
        # set once the callbacks added before the end have run (None: there were none)
        self._cbs_done: Optional[threading.Event] = None
        self._event: Optional[threading.Event] = None
        self._callbacks: Optional[list] = None
        self._fut: Optional[TaskFuture] = None
        self.priority = priority
        self.max_retries = max_retries
        self.timeout_ms = timeout_ms
        self.delay_ms = delay_ms
        self.attempt = 0
        self.created_at = time.time()
        self.started_at: Optional[float] = None
        self.completed_at: Optional[float] = None
        self.exec_ms: Optional[float] = None
        self.worker_id: Optional[int] = None
        self.slot = -1
        self.ext_args = 0
        self.progress_value: Optional[tuple] = None
        self.meta: Optional[dict] = None
        self.parked = False
        self.name = name  # the function's qualified name, for stats and logs
        self.seq = seq  # the number in task_id, written to the slot for observers
        self._final = False  # set once, under the engine's lock, by TaskLifecycle.finish
        self.executor = executor  # submitted by submit()/map(): the engine keeps it weakly once final
        self.result_bytes = 0  # the pickled outcome's size (process mode), for keep_finished_bytes
        self.fn = None
        self.func_id = 0
        self.payload = None
        self.opts: Optional["TaskOptions"] = opts  # None: the defaults
        # what the worker must know besides the call
        self.wextras: Optional[dict] = None if opts is None else opts.extras
        self.memory_mb: Optional[float] = None  # peak RSS over the start, as measured
        self.profile: Optional[list] = None  # top functions, with enable_profiling
        self.native: Optional[dict] = None  # a native task's outcome: compiled, compile_error

    @property
    def status(self) -> TaskStatus:
        """PENDING, RUNNING (live: read from the worker's slot), then final; see TaskStatus."""
        s = self._status
        if s is _PENDING and self._ok is None and self.slot >= 0:
            running = getattr(self._engine, "is_running", None)
            if running is not None and running(self):
                return TaskStatus.RUNNING
        return s

    @status.setter
    def status(self, value: TaskStatus) -> None:
        self._status = value

    # -- the Catzilla API -------------------------------------------------

    def wait(self, timeout: Optional[float] = None) -> T:
        """Block until the task ends; return its result or raise its exception.

        Raises:
            TimeoutError: the built-in, if ``timeout`` seconds pass first
                (the task keeps running).
            Exception: the task's own exception (remote traceback as
                ``__cause__``), or TaskTimeoutError, WorkerCrashedError,
                TaskCancelledError, SerializationError.
        """
        if self._ok is None:
            self._engine.help_collect(self, timeout)
        if self._ok is None:
            ev = self._waiter()
            if ev is not None and not ev.wait(timeout):
                raise TimeoutError(f"task {self.task_id} did not finish within {timeout} s")
        cbs_done = self._cbs_done
        if cbs_done is not None and not cbs_done.is_set():
            # The callbacks run on the callback threads: when wait() returns
            # they have run, as when they ran on the collector. Not on those
            # threads themselves, though: a callback waiting for another
            # task's callbacks could wait for its own thread.
            # Bounded: a callback that blocks delays its task's waiters by
            # CALLBACK_WAIT_S at most.
            runner = getattr(self._engine, "callback_runner", None)
            if runner is not None and not runner.in_pool():
                cbs_done.wait(CALLBACK_WAIT_S)
        if self._ok:
            return self._value
        # Raising the same object again would append this caller's frames to
        # its traceback on every call (and keep them alive): start from the
        # traceback it had when the task ended (issue 20.10).
        raise self._value.with_traceback(self._tb)

    def result(self, timeout: Optional[float] = None) -> T:
        """Alias of wait(), as on a Future."""
        return self.wait(timeout)

    def is_ready(self) -> bool:
        """True once the task has a final outcome (result, error or cancel)."""
        return self._ok is not None

    def add_callback(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(result)`` when the task ends, or ``callback(exception)`` if it failed.

        Callbacks run on the engine's callback threads ("czmp-callbacks-N"),
        never on the thread that delivers results: a callback may block, wait
        on another task or submit more tasks without holding up any delivery.
        The callbacks of one task run in the order they were added, on one
        thread; callbacks of different tasks may run at the same time on
        different threads. If the task has already ended, ``callback`` runs
        at once on the calling thread; after ``shutdown()`` it runs on the
        thread that settles the task. Anything the callback raises
        (``SystemExit`` included) is logged, never propagated.

        Args:
            callback: called with the result, or with the exception.
        """
        with _lock:
            if self._ok is None:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(callback)
                return
        _run_callback(callback, self._value)

    def get_stats(self) -> TaskStats:
        self._engine.observe(self)
        return TaskStats(
            task_id=self.task_id, status=self.status, created_at=self.created_at,
            started_at=self.started_at, completed_at=self.completed_at,
            execution_time_ms=self.exec_ms, memory_usage_mb=self.memory_mb,
            retries=self.attempt, worker_id=self.worker_id, profile=self.profile,
            **_native_stats(self.native))

    # -- extras -----------------------------------------------------------

    def on_success(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(result)`` if the task completes (a spelling Catzilla's docs use)."""
        self.add_callback(lambda value: callback(value) if self._ok else None)

    def on_error(self, callback: Callable[[BaseException], None]) -> None:
        """Call ``callback(exception)`` if the task fails or is cancelled."""
        self.add_callback(lambda value: None if self._ok else callback(value))

    @property
    def future(self) -> TaskFuture:
        """A TaskFuture bound to this task (created on first use)."""
        with _lock:
            if self._fut is None:
                self._fut = TaskFuture(self.task_id, self._engine, self)
                if self._ok is not None:
                    _settle(self._fut, self._ok, self._value, self.status)
            return self._fut

    def __await__(self):
        return self.future.__await__()

    def cancel(self, force: bool = False) -> bool:
        """Cancel the task; True if it was cancelled (it then fails with TaskCancelledError).

        Without ``force``, only a task that has not started can be cancelled,
        as with concurrent.futures: a running task is left to finish and
        False is returned. With ``force=True`` a running task is stopped by
        killing its worker process (a replacement starts; other tasks that
        process ran are re-queued); this waits until the kill is handled.
        """
        return self._engine.cancel_task(self, force)

    def cancelled(self) -> bool:
        return self.status is TaskStatus.CANCELLED

    def done(self) -> bool:
        return self._ok is not None

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        try:
            self.wait(timeout)
        except TimeoutError as exc:
            if self._ok is None:
                raise
            return exc
        except BaseException as exc:  # noqa: BLE001
            return exc
        return None

    @property
    def progress(self) -> tuple[Optional[float], Optional[str]]:
        """(fraction, message) last reported by the task, or (None, None)."""
        live = self._engine.live_progress(self)
        if live is not None:
            self.progress_value = live
        return self.progress_value or (None, None)

    def __repr__(self) -> str:
        return f"<TaskResult {self.task_id} {self.status.name}>"

    # -- engine side --------------------------------------------------------

    def _waiter(self) -> Optional[threading.Event]:
        with _lock:
            if self._ok is not None:
                return None
            if self._event is None:
                self._event = threading.Event()
            return self._event

    def _finish(self, ok: bool, value: Any, status: TaskStatus) -> bool:
        """Record the final outcome once; False if it was already final."""
        with _lock:
            if self._ok is not None:
                return False
            self._value = value
            if ok is False and isinstance(value, BaseException):
                self._tb = value.__traceback__
            self._status = status
            self.completed_at = self.completed_at or time.time()
            self._ok = ok
            ev, cbs, fut = self._event, self._callbacks, self._fut
            self._callbacks = None
            runner = getattr(self._engine, "callback_runner", None) if cbs else None
            if runner is not None:
                self._cbs_done = threading.Event()
        if ev is not None:
            ev.set()
        if fut is not None:
            _settle(fut, ok, value, status)
        if cbs:
            if runner is None:
                _run_callbacks(cbs, value)
            else:
                runner.submit(_run_callbacks, cbs, value, self._cbs_done)
        return True


def _native_stats(native: Optional[dict]) -> dict:
    """TaskStats' compiled/compile_error/compile_ms: all None for a task that is not native."""
    if native is None:
        return {}
    return {"compiled": native.get("compiled"), "compile_error": native.get("compile_error"),
            "compile_ms": native.get("compile_ms")}


def cancelled_error(task: TaskResult) -> TaskCancelledError:
    return TaskCancelledError(f"task {task.task_id} was cancelled before it started")


def _settle(fut: concurrent.futures.Future, ok: bool, value: Any, status: TaskStatus) -> None:
    if fut.done():
        return
    if status is TaskStatus.CANCELLED:
        # Future.cancel() alone leaves concurrent.futures.wait()/as_completed()
        # waiting for ever: the notify half is what Executors call (issue 11.10)
        if concurrent.futures.Future.cancel(fut):
            fut.set_running_or_notify_cancel()
    elif ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


def _run_callback(cb: Callable, value: Any) -> None:
    try:
        cb(value)
    except BaseException:  # noqa: BLE001 - sys.exit() in a callback must not end an engine thread
        log.exception("task callback %r raised", cb)


def _run_callbacks(cbs: list, value: Any, done: Optional[threading.Event] = None) -> None:
    try:
        for cb in cbs:
            _run_callback(cb, value)
    finally:
        if done is not None:
            done.set()
