"""BackgroundTasks: the engine behind the Catzilla background-task API.

Data flow in process mode (the default):

    app threads                        |  shared memory (one segment)     |  worker processes
                                       |                                  |
    add_task(fn, *args) ──pickle──►  slot[i] payload (inline/chunk)     |
         │                             |  ring[priority] ◄─ hint i ───────┼── take: QUEUED→RUNNING(w)
         ▼                             |                                  |        unpickle, run fn,
    TaskResult ◄── collector thread ◄──┼─ result ring ◄── hint i ─────────┼── finish: RUNNING→DONE(w)
         ▲         (unpickle, retry?)  |                                  |
         └──── supervisor thread: spawns/reaps/scales workers, enforces timeouts, repairs rings
               delay thread:      delayed starts and retry back-offs

Actors:
  * Submitters (any app thread) take a free slot, write the pickled call into
    it and push its index on the ring of its priority. A full table waits up
    to ``queue_full_timeout`` seconds, then raises QueueFullError: a task is
    never dropped silently.
  * The collector thread sleeps in C (GIL released) until results arrive,
    unpickles each outcome, and either schedules a retry (the slot and its
    arguments are kept) or releases the slot and completes the TaskResult.
  * The supervisor thread (supervisor.py) owns the worker processes.
  * The delay thread (delays.py) re-queues delayed and backing-off tasks.
  * The callback threads (callbacks.py) run user callbacks (add_callback,
    Future.add_done_callback): never the threads above, so a callback that
    blocks or waits on another task holds up no delivery.
  * If one of the engine's threads dies anyway, _thread_died fails every
    pending task with EngineBrokenError and later submissions raise it.

Who frees what after a crash: see the header of native/slots.c. In short,
the slot state word says who owns a task at every instant, a dead worker's
RUNNING slots are re-run (as a new attempt) or failed with
WorkerCrashedError, and its chunks are reclaimed by holder tag.

Thread mode (``mode="thread"``) runs the same API on threads of the app
process (thread_backend.py), for I/O-bound work.
"""
from __future__ import annotations

import atexit
import itertools
import logging
import os
import random
import threading
import time
import weakref
import collections
from concurrent.futures import Executor
from typing import Any, Callable, Iterable, Iterator, Optional, TypeVar

from .errors import (
    EngineBrokenError,
    EngineClosedError,
    PayloadTooLargeError,
    SerializationError,
    TaskTimeoutError,
    UnknownTaskError,
)
from .records import EngineStats, TaskConfig, TaskPriority, TaskStatus
from .results import TaskFuture, TaskResult, cancelled_error

T = TypeVar("T")
log = logging.getLogger("catzilla_mp")

MODES = ("process", "thread")
_EVENTS = {TaskStatus.COMPLETED: "completed", TaskStatus.FAILED: "failed",
           TaskStatus.CANCELLED: "cancelled"}
#: How often shutdown() looks whether every task has finished.
SHUTDOWN_POLL_S = 0.01
#: Errors a retry cannot fix: the same input fails the same way.
NOT_RETRYABLE = (SerializationError, PayloadTooLargeError, TaskTimeoutError)

_DEFAULTS = TaskConfig()
#: How long cancel(force=True) waits for the killed worker to be reaped.
FORCE_CANCEL_WAIT_S = 10.0
#: Task functions whose config and name are cached (see BackgroundTasks._describe).
FN_INFO_CACHE = 1024
_id_prefix = itertools.count(1)


class EngineOptions:
    """Every option of an engine, validated once. Raises ValueError/TypeError on bad values."""

    def __init__(self, *, workers, min_workers, max_workers, queue_size, enable_auto_scaling,
                 memory_pool_mb, mode, threads_per_worker, start_method, max_payload_bytes,
                 queue_full_timeout, retry_backoff_base, retry_backoff_cap, timeout_grace_ms,
                 scale_down_idle_s, max_tasks_per_worker, worker_memory_limit_mb,
                 worker_niceness, shutdown_timeout, keep_finished, populate) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if start_method != "spawn":
            raise ValueError("start_method must be 'spawn': workers are fresh interpreters; "
                             "forking a threaded app is unsafe")
        cpus = os.cpu_count() or 1
        _int_at_least("workers", workers, 1, allow_none=True)
        _int_at_least("min_workers", min_workers, 0)
        _int_at_least("max_workers", max_workers, 1, allow_none=True)
        initial = workers if workers is not None else (cpus if mode == "process" else cpus * 2)
        if max_workers is not None and min_workers > max_workers:
            raise ValueError(f"min_workers ({min_workers}) is above max_workers ({max_workers})")
        if workers is not None and max_workers is not None and workers > max_workers:
            raise ValueError(f"workers ({workers}) is above max_workers ({max_workers})")
        # Catzilla's min_workers=2 default must not grow a workers=1 engine:
        # without an explicit max_workers, the pool never exceeds its start
        self.min_workers = min(min_workers, initial)
        self.max_workers = max_workers if max_workers is not None else initial
        self.workers = max(initial, self.min_workers)
        self.queue_size = _int_at_least("queue_size", queue_size, 1)
        if queue_size > 1 << 22:
            raise ValueError("queue_size is limited to 4,194,304 tasks in flight")
        self.enable_auto_scaling = bool(enable_auto_scaling)
        self.memory_pool_mb = _int_at_least("memory_pool_mb", memory_pool_mb, 1)
        self.mode = mode
        self.threads_per_worker = _int_at_least("threads_per_worker", threads_per_worker, 1)
        self.start_method = start_method
        self.max_payload_bytes = _int_at_least("max_payload_bytes", max_payload_bytes, 1)
        self.queue_full_timeout = _non_negative("queue_full_timeout", queue_full_timeout)
        self.retry_backoff_base = _non_negative("retry_backoff_base", retry_backoff_base)
        self.retry_backoff_cap = _non_negative("retry_backoff_cap", retry_backoff_cap)
        self.timeout_grace_ms = _int_at_least("timeout_grace_ms", timeout_grace_ms, 0)
        self.scale_down_idle_s = _non_negative("scale_down_idle_s", scale_down_idle_s)
        self.max_tasks_per_worker = _int_at_least("max_tasks_per_worker", max_tasks_per_worker, 0)
        self.worker_memory_limit_mb = _int_at_least("worker_memory_limit_mb", worker_memory_limit_mb, 0)
        self.worker_niceness = _int_at_least("worker_niceness", worker_niceness, 0)
        self.shutdown_timeout = _non_negative("shutdown_timeout", shutdown_timeout)
        self.keep_finished = _int_at_least("keep_finished", keep_finished, 0)
        self.populate = bool(populate)


class BackgroundTasks(Executor):
    """Run Python functions in the background: in worker processes (default) or threads.

    The constructor's first eight arguments are Catzilla's; the rest,
    keyword-only, are catzilla_mp's (see the README's configuration table).

    Raises:
        ValueError, TypeError: an invalid option.
        SegmentError: the shared-memory segment could not be created.
    """

    def __init__(
        self,
        workers: Optional[int] = None,
        min_workers: int = 2,
        max_workers: Optional[int] = None,
        queue_size: int = 10000,
        enable_auto_scaling: bool = True,
        memory_pool_mb: int = 500,
        enable_c_compilation: bool = True,
        enable_profiling: bool = False,
        *,
        mode: str = "process",
        threads_per_worker: int = 1,
        start_method: str = "spawn",
        max_payload_bytes: int = 256 << 20,
        queue_full_timeout: float = 10.0,
        retry_backoff_base: float = 0.1,
        retry_backoff_cap: float = 30.0,
        timeout_grace_ms: int = 2000,
        scale_down_idle_s: float = 30.0,
        max_tasks_per_worker: int = 0,
        worker_memory_limit_mb: int = 0,
        worker_niceness: int = 0,
        shutdown_timeout: float = 30.0,
        keep_finished: int = 100_000,
        populate: bool = True,
    ) -> None:
        self.options = EngineOptions(
            workers=workers, min_workers=min_workers, max_workers=max_workers,
            queue_size=queue_size, enable_auto_scaling=enable_auto_scaling,
            memory_pool_mb=memory_pool_mb, mode=mode, threads_per_worker=threads_per_worker,
            start_method=start_method, max_payload_bytes=max_payload_bytes,
            queue_full_timeout=queue_full_timeout, retry_backoff_base=retry_backoff_base,
            retry_backoff_cap=retry_backoff_cap, timeout_grace_ms=timeout_grace_ms,
            scale_down_idle_s=scale_down_idle_s, max_tasks_per_worker=max_tasks_per_worker,
            worker_memory_limit_mb=worker_memory_limit_mb, worker_niceness=worker_niceness,
            shutdown_timeout=shutdown_timeout, keep_finished=keep_finished, populate=populate)
        # Catzilla's attribute names, kept for code that reads them
        self.workers = self.options.workers
        self.min_workers = self.options.min_workers
        self.max_workers = self.options.max_workers
        self.queue_size = queue_size
        self.enable_auto_scaling = enable_auto_scaling
        self.memory_pool_mb = memory_pool_mb
        self.enable_c_compilation = enable_c_compilation
        self.enable_profiling = enable_profiling
        self.mode = mode

        self._ids = itertools.count(1)
        self._id_prefix = f"task_{os.getpid()}_{next(_id_prefix)}_"
        self._tasks: dict[str, TaskResult] = {}
        # ids of finished tasks, oldest first: the last keep_finished stay findable
        self._finished: collections.deque[str] = collections.deque()
        self._lock = threading.Lock()
        self._closed = False
        # False once shutdown stops waiting for tasks: a failed attempt is final then
        self._retries_allowed = True
        self._registered_tasks: dict[str, Callable] = {}
        self._fn_info: dict[Any, tuple[Optional[TaskConfig], str]] = {}
        from .monitor import Monitor
        from .delays import DelayQueue
        from .callbacks import CallbackRunner
        self.monitor = Monitor(self)
        # set once by the shutdown() that does the work; the others wait on it
        self._shut_down = threading.Event()
        self._shutting_down = False
        # the exception that broke the engine (an engine thread died), or None
        self._broken: Optional[BaseException] = None
        self._callback_runner = CallbackRunner()
        self._delays = DelayQueue(on_death=self._thread_died)
        try:
            self._backend = self._make_backend()
        except BaseException:
            self._delays.stop()
            raise
        self._atexit = _register_atexit(self)

    def _make_backend(self):
        if self.options.mode == "thread":
            from .thread_backend import ThreadBackend
            return ThreadBackend(self)
        from .process_backend import ProcessBackend
        return ProcessBackend(self)

    # -- submitting ----------------------------------------------------------

    def add_task(
        self,
        func: Callable[..., T],
        *args: Any,
        priority: TaskPriority = TaskPriority.NORMAL,
        delay_ms: int = 0,
        max_retries: int = 3,
        timeout_ms: int = 30000,
        compile_to_c: Optional[bool] = None,
        **kwargs: Any,
    ) -> TaskResult[T]:
        """Submit ``func(*args, **kwargs)``; returns its TaskResult at once.

        Options left at their defaults take the values of ``@task(...)`` if
        ``func`` was decorated. ``compile_to_c`` is accepted for Catzilla
        compatibility and ignored: tasks run as Python in workers.

        Raises:
            ValueError/TypeError: an invalid option or a non-callable.
            SerializationError: arguments that cannot be pickled.
            PayloadTooLargeError: arguments beyond max_payload_bytes.
            QueueFullError: no free slot within queue_full_timeout.
            EngineClosedError: after shutdown().
        In every error case the task was not queued.
        """
        task = self._new_task(func, priority, delay_ms, max_retries, timeout_ms)
        self._admit(task)
        try:
            self._live_backend().dispatch(task, func, args, kwargs)
        except BaseException:
            self._forget(task)
            raise
        if self.monitor._listeners:
            self.monitor.emit("submitted", task)
        return task

    def add_tasks(self, func: Callable[..., T], arg_tuples: Iterable[Any], *,
                  priority: TaskPriority = TaskPriority.NORMAL, delay_ms: int = 0,
                  max_retries: int = 3, timeout_ms: int = 30000) -> list[TaskResult[T]]:
        """Submit ``func(*a)`` for each ``a`` of ``arg_tuples`` in one call (a non-tuple ``a`` is one argument).

        Faster than add_task in a loop: one pass of validation and batched
        pushes. Raises as add_task; tasks submitted before an error stay
        submitted and the error names how many were.
        """
        calls = [(a if type(a) is tuple else (a,)) for a in arg_tuples]
        if not calls:
            return []
        first = self._new_task(func, priority, delay_ms, max_retries, timeout_ms)
        tasks = [first] + [self._sibling(first) for _ in range(len(calls) - 1)]
        if self._closed:
            raise EngineClosedError("the engine is shut down; it takes no new tasks")
        if self._broken is not None:
            self._raise_broken()
        self._tasks.update((t.task_id, t) for t in tasks)
        done = [0]
        try:
            self._live_backend().dispatch_many(tasks, func, calls, done)
        except BaseException as exc:
            if hasattr(exc, "add_note"):
                exc.add_note(f"add_tasks: the first {done[0]} of {len(calls)} tasks were submitted")
            raise
        finally:
            for t in tasks[done[0]:]:
                self._forget(t)
        if self.monitor._listeners:
            for t in tasks:
                self.monitor.emit("submitted", t)
        return tasks

    def _new_task(self, func, priority, delay_ms, max_retries, timeout_ms) -> TaskResult:
        try:
            config, name = self._fn_info[func]
        except (KeyError, TypeError):
            config, name = self._describe(func)
        if config is not None:
            priority = config.priority if priority == _DEFAULTS.priority else priority
            delay_ms = config.delay_ms if delay_ms == _DEFAULTS.delay_ms else delay_ms
            max_retries = config.max_retries if max_retries == _DEFAULTS.max_retries else max_retries
            timeout_ms = config.timeout_ms if timeout_ms == _DEFAULTS.timeout_ms else timeout_ms
        # the common case costs three type checks; anything else is validated fully
        if priority.__class__ is not TaskPriority:
            priority = TaskPriority.parse(priority)
        if type(delay_ms) is not int or delay_ms < 0:
            _int_at_least("delay_ms", delay_ms, 0)
        if type(max_retries) is not int or max_retries < 0:
            _int_at_least("max_retries", max_retries, 0)
        if type(timeout_ms) is not int or timeout_ms < 0:
            _int_at_least("timeout_ms", timeout_ms, 0)
        seq = next(self._ids)
        task = TaskResult(self._id_prefix + str(seq), self, priority,
                          max_retries, timeout_ms, delay_ms)
        task.name = name
        task.seq = seq
        return task

    def _sibling(self, task: TaskResult) -> TaskResult:
        """A new task with the options of ``task`` (already validated), for add_tasks."""
        seq = next(self._ids)
        sib = TaskResult(self._id_prefix + str(seq), self, task.priority, task.max_retries,
                         task.timeout_ms, task.delay_ms)
        sib.name = task.name
        sib.seq = seq
        return sib

    def _describe(self, func) -> tuple[Optional[TaskConfig], str]:
        """(the @task config, the name) of a task function, cached while the cache is small."""
        if not callable(func):
            raise TypeError(f"task function must be callable, not {type(func).__name__}")
        info = (getattr(func, "_task_config", None),
                getattr(func, "__qualname__", None) or type(func).__qualname__)
        try:
            if len(self._fn_info) >= FN_INFO_CACHE:
                self._fn_info.clear()  # lambdas made per call must not grow it for ever
            self._fn_info[func] = info
        except TypeError:
            pass  # an unhashable callable object: described on every call
        return info

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

    def _live_backend(self):
        """The backend, or EngineClosedError: a submitter racing shutdown() finds it gone."""
        backend = self._backend
        if backend is None:
            raise EngineClosedError("the engine is shut down; it takes no new tasks")
        return backend

    def _forget(self, task: TaskResult) -> None:
        self._tasks.pop(task.task_id, None)

    def task(self, priority: TaskPriority = TaskPriority.NORMAL, compile_to_c: bool = True,
             **config_kwargs: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: attach a TaskConfig that add_task applies to this function.

        The function itself is returned unchanged, so calling it still runs it
        inline; ``fn.submit(*args, **kwargs)`` is added as a shortcut for
        ``add_task(fn, ...)``.

        Raises:
            TypeError: an unknown configuration name. ValueError: a bad value.
        """
        config = TaskConfig(priority=TaskPriority.parse(priority), compile_to_c=compile_to_c,
                            **config_kwargs)
        _int_at_least("delay_ms", config.delay_ms, 0)
        _int_at_least("max_retries", config.max_retries, 0)
        _int_at_least("timeout_ms", config.timeout_ms, 0)

        def decorate(func: Callable[..., T]) -> Callable[..., T]:
            func._task_config = config  # type: ignore[attr-defined]
            self._fn_info.pop(func, None)
            func._is_background_task = True  # type: ignore[attr-defined]
            func.submit = _Submitter(self, func)  # type: ignore[attr-defined]
            self._registered_tasks[getattr(func, "__name__", repr(func))] = func
            return func

        return decorate

    # -- results ---------------------------------------------------------------

    def get_task_result(self, task_id: str) -> TaskResult:
        """The TaskResult of ``task_id``.

        Raises:
            UnknownTaskError: never submitted here, or finished so long ago it
                was forgotten (the engine keeps the last ``keep_finished``).
        """
        task = self._tasks.get(task_id)
        if task is None:
            raise UnknownTaskError(f"no task {task_id!r} in this engine")
        return task

    def get_stats(self) -> EngineStats:
        return self.monitor.snapshot()

    # -- concurrent.futures.Executor ----------------------------------------

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> TaskFuture:
        """Executor.submit: run ``fn(*args, **kwargs)`` with max_retries=0 (as an executor would)."""
        return self.add_task(fn, *args, max_retries=0, **kwargs).future

    def map(self, fn: Callable[..., T], *iterables: Iterable[Any], timeout: Optional[float] = None,
            chunksize: int = 1) -> Iterator[T]:
        """Executor.map, in order; ``chunksize`` > 1 sends that many calls per task."""
        _int_at_least("chunksize", chunksize, 1)
        calls = list(zip(*iterables))
        deadline = None if timeout is None else time.monotonic() + timeout
        if chunksize == 1:
            tasks = self.add_tasks(fn, calls, max_retries=0)
        else:
            chunks = [calls[i:i + chunksize] for i in range(0, len(calls), chunksize)]
            tasks = self.add_tasks(_run_chunk, [(fn, c) for c in chunks], max_retries=0)

        def results() -> Iterator[T]:
            for t in tasks:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if chunksize == 1:
                    yield t.wait(left)
                else:
                    yield from t.wait(left)

        return results()

    def shutdown(self, wait_for_completion: bool = True, timeout: float = 30.0, *,
                 cancel_futures: bool = False, wait: Optional[bool] = None) -> None:
        """Stop the engine; afterwards no worker process and no segment remain.

        Args:
            wait_for_completion: True lets every submitted task finish
                (delayed and retrying ones included) for up to ``timeout``
                seconds; False cancels what has not started and lets running
                tasks finish for up to ``timeout``. Tasks still running after
                that are stopped and fail with EngineClosedError.
            wait / cancel_futures: Executor.shutdown's spelling
                (``wait=False`` returns at once; the shutdown completes in a
                background thread).
        """
        if cancel_futures:
            wait_for_completion = False
        if wait is False:
            threading.Thread(target=self.shutdown, args=(wait_for_completion, timeout),
                             name="czmp-shutdown", daemon=True).start()
            return
        with self._lock:
            self._closed = True
            loser = self._shutting_down
            self._shutting_down = True
        if loser:
            # Another shutdown() does the work: return when it is done, not
            # before (issue 20.9) -- unless this is one of the engine's own
            # callback threads, which that shutdown may be waiting for.
            if not self._callback_runner.in_pool():
                self._shut_down.wait()
            return
        try:
            self._shutdown(wait_for_completion, timeout)
        finally:
            self._shut_down.set()

    def _shutdown(self, wait_for_completion: bool, timeout: float) -> None:
        deadline = time.monotonic() + max(0.0, timeout)
        if not wait_for_completion:
            self._retries_allowed = False
            self._cancel_not_started()
        while self._in_flight() and time.monotonic() < deadline:
            time.sleep(SHUTDOWN_POLL_S)
        self._retries_allowed = False
        # Drop the timers, do not fire them: firing would queue a delayed task
        # (or a retry) before it is due, and an idle worker would start it
        # early. The backend's close() abandons every task still unfinished.
        self._delays.drain()
        backend = self._backend
        if backend is not None:
            backend.close(self._abandon)
        self._backend = None
        self._delays.stop()
        # callbacks of the tasks settled above still run, for a bounded time
        self._callback_runner.stop(max(0.0, deadline - time.monotonic()) + 1.0)
        if self._atexit is not None:
            atexit.unregister(self._atexit)
            self._atexit = None

    def __enter__(self) -> "BackgroundTasks":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown(wait_for_completion=exc[0] is None, timeout=self.options.shutdown_timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- called by backends --------------------------------------------------------

    def _attempt_failed(self, task: TaskResult, exc: BaseException) -> bool:
        """Decide after a failed attempt: True to retry (the caller keeps the task's payload)."""
        # while shutdown waits for completion, retries still run (see shutdown())
        if (not self._retries_allowed or task.attempt >= task.max_retries
                or isinstance(exc, NOT_RETRYABLE)):
            return False
        task.attempt += 1
        task.status = TaskStatus.RETRYING
        self.monitor.count_retry(task, exc)
        return True

    def _backoff_s(self, attempt: int) -> float:
        """Exponential back-off with "full jitter": uniform in [0.5, 1] x base x 2^(attempt-1), capped."""
        o = self.options
        ceiling = min(o.retry_backoff_cap, o.retry_backoff_base * (2 ** (attempt - 1)))
        return ceiling * (0.5 + random.random() * 0.5)

    def _schedule(self, delay_s: float, fn: Callable[[], None]):
        """Call ``fn()`` on the delay thread in ``delay_s`` s; returns a handle for _unschedule."""
        return self._delays.call_at(time.monotonic() + delay_s, fn)

    def _unschedule(self, timer) -> None:
        """Drop a timer from _schedule that is no longer needed (what it holds goes with it)."""
        self._delays.cancel(timer)

    def _finish(self, task: TaskResult, ok: bool, value: Any, status: TaskStatus) -> None:
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
            task.status = status
            task.completed_at = time.time()
            monitor.count_final_locked(task, ok, value, status)
            finished = self._finished
            finished.append(task.task_id)
            if len(finished) > self.options.keep_finished:
                self._tasks.pop(finished.popleft(), None)
        if monitor._listeners:
            monitor.emit(_EVENTS[status], task, value)
        task._finish(ok, value, status)

    def _abandon(self, task: TaskResult) -> None:
        """A task still unfinished when the engine closed."""
        if task.status in (TaskStatus.PENDING, TaskStatus.RETRYING) and task.started_at is None:
            self._finish(task, False, cancelled_error(task), TaskStatus.CANCELLED)
        else:
            self._finish(task, False, EngineClosedError(
                f"the engine shut down before task {task.task_id} finished"), TaskStatus.FAILED)

    def _cancel(self, task: TaskResult, force: bool = False) -> bool:
        backend = self._backend
        if task.done() or backend is None:
            return False
        if backend.cancel(task):
            self._finish(task, False, cancelled_error(task), TaskStatus.CANCELLED)
            return True
        terminate = getattr(backend, "terminate", None)  # threads cannot be killed
        if not force or terminate is None or not terminate(task):
            return False
        # the supervisor reaps the killed worker within a tick; the task may
        # also have finished just before the kill, and then it stays finished
        ev = task._waiter()
        if ev is not None:
            ev.wait(FORCE_CANCEL_WAIT_S)
        return task.cancelled()

    def _cancel_not_started(self) -> None:
        # submitters add to _tasks without the lock: copy it in one step
        for t in self._unfinished():
            self._cancel(t)

    def _thread_died(self, name: str, exc: BaseException) -> None:
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
        for t in self._unfinished():
            with self._lock:
                t.parked = False
            self._finish(t, False, err, TaskStatus.FAILED)

    def _help_collect(self, task: TaskResult, timeout: Optional[float]) -> None:
        """Let a waiting thread collect outcomes itself for a moment (see ProcessBackend)."""
        backend = self._backend
        if backend is not None:
            backend.help_collect(task, timeout)

    def _observe(self, task: TaskResult) -> None:
        backend = self._backend
        if backend is not None and not task.done():
            backend.observe(task)

    def _live_progress(self, task: TaskResult):
        backend = self._backend
        if backend is None or task.done():
            return None
        return backend.live_progress(task)

    def _in_flight(self) -> int:
        """Tasks submitted and not yet final: every task in _tasks is either
        unfinished or one of the finished ones remembered in _finished."""
        return len(self._tasks) - len(self._finished)

    def _unfinished(self) -> list[TaskResult]:
        # list() copies the values in one step under the GIL: submitters may
        # add tasks concurrently, and they take no lock
        return [t for t in list(self._tasks.values()) if not t.done()]

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        return f"<BackgroundTasks mode={self.mode} workers={self.workers} {state}>"


class _Submitter:
    """``fn.submit(*args, **kwargs)`` of a @task function: add_task on its engine.

    Pickles to nothing: a function defined in __main__ travels by value with
    its __dict__, and must not drag its engine (threads, locks) along.
    """

    def __init__(self, engine: BackgroundTasks, func: Callable) -> None:
        self._engine = weakref.ref(engine)
        self._func = weakref.ref(func) if hasattr(func, "__weakref__") else (lambda: func)

    def __call__(self, *args: Any, **kwargs: Any) -> TaskResult:
        engine, func = self._engine(), self._func()
        if engine is None or func is None:
            raise EngineClosedError("the engine this task was registered with is gone")
        return engine.add_task(func, *args, **kwargs)

    def __reduce__(self):
        return (type(None), ())


def _run_chunk(fn: Callable, calls: list) -> list:
    return [fn(*c) for c in calls]


def _register_atexit(engine: BackgroundTasks):
    ref = weakref.ref(engine)

    def _at_exit() -> None:
        eng = ref()
        if eng is not None:
            eng.shutdown(wait_for_completion=True, timeout=eng.options.shutdown_timeout)

    atexit.register(_at_exit)
    return _at_exit


def _int_at_least(name: str, value: Any, least: int, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < least:
        raise ValueError(f"{name} must be >= {least}, not {value}")
    return value


def _non_negative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, not {value}")
    return float(value)
