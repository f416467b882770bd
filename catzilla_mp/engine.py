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

Who frees what after a crash: see the header of native/slots.c. In short,
the slot state word says who owns a task at every instant, a dead worker's
RUNNING slots are re-run (as a new attempt) or failed with
WorkerCrashedError, and its chunks are reclaimed by holder tag.

Thread mode (``mode="thread"``) runs the same API on threads of the app
process (thread_backend.py), for I/O-bound work.
"""
from __future__ import annotations

import asyncio
import atexit
import itertools
import logging
import os
import secrets
import threading
import time
import weakref
import collections
from concurrent.futures import Executor
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, TypeVar, Union, overload

from . import compat
from .errors import (
    EngineClosedError,
    MemoryLimitError,
    PayloadTooLargeError,
    QueueFullError,
    SerializationError,
    TaskTimeoutError,
    UnknownTaskError,
    WorkerInitializerError,
)
from .records import EngineStats, TaskConfig, TaskPriority, TaskStatus
from .results import TaskFuture, TaskResult, cancelled_error

if TYPE_CHECKING:
    from typing import ParamSpec

    from .compat import TaskFunction

    P = ParamSpec("P")

T = TypeVar("T")
log = logging.getLogger("catzilla_mp")
#: what add_task accepts as a priority (see TaskPriority.parse)
PriorityLike = Union[TaskPriority, Enum, str, int]

MODES = ("process", "thread")
_EVENTS = {TaskStatus.COMPLETED: "completed", TaskStatus.FAILED: "failed",
           TaskStatus.CANCELLED: "cancelled"}
#: How often shutdown() looks whether every task has finished.
SHUTDOWN_POLL_S = 0.01
#: Errors a retry cannot fix: the same input fails the same way.
NOT_RETRYABLE = (SerializationError, PayloadTooLargeError, TaskTimeoutError, MemoryLimitError,
                 WorkerInitializerError)

_DEFAULTS = TaskConfig()
#: How long cancel(force=True) waits for the killed worker to be reaped.
FORCE_CANCEL_WAIT_S = 10.0
#: Task functions whose config and name are cached (see BackgroundTasks._describe).
FN_INFO_CACHE = 1024
#: Random bytes in a task id. A task id is a capability (whoever knows it may
#: ask the web routes for its status), so every id is fresh output of the OS's
#: CSPRNG (secrets.token_bytes). A random per-engine prefix plus a counter
#: would be cheaper and guessable from any one id a client was given.
TASK_ID_BYTES = 16
#: Ids drawn per CSPRNG call, per thread. Measured per id: 0.43 µs with one
#: token_bytes(16).hex() per task, 0.16 µs drawn from a block of 256 (a
#: submission costs 3-5 µs in all). The block is thread-local (no lock on the
#: submit path) and dropped in a forked child, whose ids must differ from its
#: parent's.
TASK_ID_BLOCK = 256
_id_blocks = threading.local()


def _id_source() -> Iterator[str]:
    step = 2 * TASK_ID_BYTES
    while True:
        block = secrets.token_bytes(TASK_ID_BYTES * TASK_ID_BLOCK).hex()
        for i in range(0, len(block), step):
            yield "task_" + block[i:i + step]


def _new_task_id() -> str:
    """A fresh unguessable task id (the slow path: this thread's first id)."""
    ids = _id_blocks.ids = _id_source()
    return next(ids)


def _forget_id_blocks() -> None:
    global _id_blocks
    _id_blocks = threading.local()


os.register_at_fork(after_in_child=_forget_id_blocks)
#: add_task_async polls a full queue from this pause up to the next, doubling:
#: short enough that a freed slot is taken within a frame of the web server's
#: loop, long enough that a full queue costs the loop nothing measurable.
ASYNC_FULL_PAUSE_S = (0.002, 0.05)


class EngineOptions:
    """Every option of an engine, validated once. Raises ValueError/TypeError on bad values."""

    def __init__(self, *, workers, min_workers, max_workers, queue_size, enable_auto_scaling,
                 memory_pool_mb, mode, threads_per_worker, start_method, max_payload_bytes,
                 queue_full_timeout, retry_backoff_base, retry_backoff_cap, timeout_grace_ms,
                 scale_down_idle_s, max_tasks_per_worker, worker_memory_limit_mb,
                 worker_niceness, shutdown_timeout, keep_finished, populate,
                 initializer=None, initargs=()) -> None:
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
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, not {type(initializer).__name__}")
        if not isinstance(initargs, (tuple, list)):
            raise TypeError(f"initargs must be a tuple, not {type(initargs).__name__}")
        self.initializer = initializer
        self.initargs = tuple(initargs)


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
        initializer: Optional[Callable[..., Any]] = None,
        initargs: tuple = (),
        initial_workers: Optional[int] = None,
        forward_logs: bool = True,
    ) -> None:
        # Catzilla's docs also spell the starting pool size initial_workers
        if initial_workers is not None:
            if workers is not None and workers != initial_workers:
                raise ValueError(f"workers ({workers}) and initial_workers ({initial_workers}) "
                                 "name the same option; give one")
            workers = initial_workers
        self.options = EngineOptions(
            workers=workers, min_workers=min_workers, max_workers=max_workers,
            queue_size=queue_size, enable_auto_scaling=enable_auto_scaling,
            memory_pool_mb=memory_pool_mb, mode=mode, threads_per_worker=threads_per_worker,
            start_method=start_method, max_payload_bytes=max_payload_bytes,
            queue_full_timeout=queue_full_timeout, retry_backoff_base=retry_backoff_base,
            retry_backoff_cap=retry_backoff_cap, timeout_grace_ms=timeout_grace_ms,
            scale_down_idle_s=scale_down_idle_s, max_tasks_per_worker=max_tasks_per_worker,
            worker_memory_limit_mb=worker_memory_limit_mb, worker_niceness=worker_niceness,
            shutdown_timeout=shutdown_timeout, keep_finished=keep_finished, populate=populate,
            initializer=initializer, initargs=initargs)
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
        # set while add_task_async tries a submission: the backends then do not wait for room
        self._no_wait = threading.local()
        self._tasks: dict[str, TaskResult] = {}
        # ids of finished tasks, oldest first: the last keep_finished stay findable
        self._finished: collections.deque[str] = collections.deque()
        self._lock = threading.Lock()
        self._closed = False
        # False once shutdown stops waiting for tasks: a failed attempt is final then
        self._retries_allowed = True
        self._registered_tasks: dict[str, Callable] = {}
        self._fn_info: dict[Any, tuple[Optional[TaskConfig], str]] = {}
        # options every task gets unless it says otherwise (enable_profiling)
        self._default_opts = compat.TaskOptions(profile=True) if enable_profiling else None
        self._last_seq = 0  # the newest task number handed out (submission statistics)
        self._queue_full = 0  # submissions refused with QueueFullError
        self._submit_failed = 0  # numbered tasks that were never queued (any error)
        self._logs: Optional[compat.LogReceiver] = None
        #: what every worker process is started with besides the supervisor's own config
        self.worker_extras: dict[str, Any] = {}
        if mode == "process":
            self.worker_extras = self._worker_setup(bool(forward_logs))
        from .monitor import Monitor
        from .delays import DelayQueue
        self.monitor = Monitor(self)
        self._delays = DelayQueue()
        try:
            self._backend = self._make_backend()
        except BaseException:
            self._delays.stop()
            if self._logs is not None:
                self._logs.close()
            raise
        self._atexit = _register_atexit(self)

    def _worker_setup(self, forward_logs: bool) -> dict[str, Any]:
        """The worker config of compat's options: log forwarding, initializer."""
        extras: dict[str, Any] = {}
        if self.options.initializer is not None:
            extras["init"] = compat.pack_initializer(self.options.initializer,
                                                     self.options.initargs)
        if forward_logs:
            self._logs = compat.LogReceiver(self)
            extras["log"] = self._logs.address
            extras["log_level"] = compat.worker_log_level()
        return extras

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
        priority: PriorityLike = TaskPriority.NORMAL,
        delay_ms: int = 0,
        max_retries: int = 3,
        timeout_ms: int = 30000,
        compile_to_c: Optional[bool] = None,
        retry_backoff: Union[str, Callable[[int], float], None] = None,
        retry_on: Optional[Any] = None,
        retry_if: Optional[Callable[[BaseException], bool]] = None,
        memory_limit_mb: Optional[float] = None,
        enable_profiling: Optional[bool] = None,
        **kwargs: Any,
    ) -> TaskResult[T]:
        """Submit ``func(*args, **kwargs)``; returns its TaskResult at once.

        Options left at their defaults take the values of ``@task(...)`` if
        ``func`` was decorated. ``compile_to_c`` is accepted for Catzilla
        compatibility and ignored: tasks run as Python in workers. The
        keyword-only options (retry_backoff, retry_on, retry_if,
        memory_limit_mb, enable_profiling) are catzilla_mp's, as on @task.

        Raises:
            ValueError/TypeError: an invalid option or a non-callable.
            SerializationError: arguments that cannot be pickled.
            PayloadTooLargeError: arguments beyond max_payload_bytes.
            QueueFullError: no free slot within queue_full_timeout.
            EngineClosedError: after shutdown().
        In every error case the task was not queued.
        """
        task = self._new_task(func, priority, delay_ms, max_retries, timeout_ms)
        if (retry_backoff is not None or retry_on is not None or retry_if is not None
                or memory_limit_mb is not None or enable_profiling is not None):
            base = task.opts or compat.TaskOptions()
            task.opts = base.merged(backoff=retry_backoff, retry_on=retry_on, retry_if=retry_if,
                                    memory_limit_mb=memory_limit_mb, profile=enable_profiling)
            task.wextras = task.opts.extras
        if task.opts is not None and task.opts.memory_limit_mb is not None and self.mode != "process":
            self._submit_failed += 1
            raise ValueError("memory_limit_mb is enforced in mode='process' only: "
                             "threads share the app's memory")
        if compat.PROPAGATED:
            compat.add_context(task)
        self._admit(task)
        try:
            self._backend.dispatch(task, func, args, kwargs)
        except BaseException as exc:
            self._forget(task)
            self._submit_failed += 1
            if isinstance(exc, QueueFullError):
                self._queue_full += 1
            raise
        if self.monitor._listeners:
            self.monitor.emit("submitted", task)
        return task

    async def add_task_async(
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
        """``add_task`` for async code: a full queue is waited for without blocking the loop.

        Each try submits without waiting (the backends see ``_no_wait``); while
        the queue is full it sleeps on the event loop (ASYNC_FULL_PAUSE_S,
        doubling) until ``queue_full_timeout`` has passed. Other requests keep
        being served meanwhile; ``add_task`` would hold the loop's thread.

        Returns:
            The task's TaskResult, as add_task.

        Raises:
            QueueFullError: still no room after queue_full_timeout seconds.
            Everything else add_task raises, at once.
        """
        from .errors import QueueFullError

        loop = asyncio.get_running_loop()
        wait_s = self.options.queue_full_timeout
        deadline = loop.time() + wait_s
        pause, longest = ASYNC_FULL_PAUSE_S
        while True:
            self._no_wait.on = True
            try:
                return self.add_task(func, *args, priority=priority, delay_ms=delay_ms,
                                     max_retries=max_retries, timeout_ms=timeout_ms,
                                     compile_to_c=compile_to_c, **kwargs)
            except QueueFullError:
                left = deadline - loop.time()
                if left <= 0:
                    raise QueueFullError(
                        f"all {self.options.queue_size} task places stayed in use for "
                        f"{wait_s:g} s (queue_size); the task was not queued") from None
            finally:
                self._no_wait.on = False
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, longest)

    def add_task_nowait(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> TaskResult[T]:
        """``add_task`` that raises QueueFullError at once instead of waiting for room.

        For code that must not block (a sync handler on a server's event-loop
        thread): the caller answers "busy" (HTTP 503) and the client retries.

        Raises:
            QueueFullError: no room right now. Everything else add_task raises.
        """
        self._no_wait.on = True
        try:
            return self.add_task(func, *args, **kwargs)
        finally:
            self._no_wait.on = False

    def queue_wait_s(self) -> float:
        """How long a submission on this thread may wait for room (the backends ask).

        ``queue_full_timeout``, or 0 while add_task_async tries a submission.
        """
        return 0.0 if getattr(self._no_wait, "on", False) else self.options.queue_full_timeout

    def add_tasks(self, func: Callable[..., T], arg_tuples: Iterable[Any], *,
                  priority: PriorityLike = TaskPriority.NORMAL, delay_ms: int = 0,
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
        if compat.PROPAGATED:
            compat.add_context(first)
        tasks = [first] + [self._sibling(first) for _ in range(len(calls) - 1)]
        if self._closed:
            raise EngineClosedError("the engine is shut down; it takes no new tasks")
        self._tasks.update((t.task_id, t) for t in tasks)
        done = [0]
        try:
            self._backend.dispatch_many(tasks, func, calls, done)
        except BaseException as exc:
            if isinstance(exc, QueueFullError):
                self._queue_full += 1
            if hasattr(exc, "add_note"):
                exc.add_note(f"add_tasks: the first {done[0]} of {len(calls)} tasks were submitted")
            raise
        finally:
            self._submit_failed += len(tasks) - done[0]
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
        opts: Optional[compat.TaskOptions] = self._default_opts
        if config is not None:
            opts = getattr(config, "options", None) or opts
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
        seq = self._last_seq = next(self._ids)
        try:
            task_id = next(_id_blocks.ids)
        except AttributeError:
            task_id = _new_task_id()
        task = TaskResult(task_id, self, priority,
                          max_retries, timeout_ms, delay_ms)
        task.name = name
        task.seq = seq
        if opts is not None:
            task.opts = opts
            task.wextras = opts.extras
        return task

    def _sibling(self, task: TaskResult) -> TaskResult:
        """A new task with the options of ``task`` (already validated), for add_tasks."""
        seq = self._last_seq = next(self._ids)
        try:
            task_id = next(_id_blocks.ids)
        except AttributeError:
            task_id = _new_task_id()
        sib = TaskResult(task_id, self, task.priority,
                         task.max_retries, task.timeout_ms, task.delay_ms)
        sib.name = task.name
        sib.seq = seq
        sib.opts = task.opts
        sib.wextras = task.wextras
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
        self._tasks[task.task_id] = task

    def _forget(self, task: TaskResult) -> None:
        self._tasks.pop(task.task_id, None)

    @overload
    def task(self, priority: Callable[P, T]) -> TaskFunction[P, T]: ...

    @overload
    def task(self, priority: Any = ..., compile_to_c: bool = ...,
             **config_kwargs: Any) -> Callable[[Callable[P, T]], TaskFunction[P, T]]: ...

    def task(self, priority: Any = TaskPriority.NORMAL, compile_to_c: bool = True,
             **config_kwargs: Any) -> Any:
        """Decorator: attach a TaskConfig that add_task applies to this function.

        Usable bare (``@engine.task``), empty (``@engine.task()``) or with
        options (``@engine.task(priority=..., max_retries=..., ...)``): any
        TaskConfig field, Catzilla's TaskPriority included. The function itself
        is returned unchanged, so calling it still runs it inline;
        ``fn.submit(*args, **kwargs)`` is added as a shortcut for
        ``add_task(fn, ...)``. ``memory_limit_mb`` applies only when given.

        Raises:
            TypeError: an unknown configuration name. ValueError: a bad value.
        """
        if callable(priority) and not isinstance(priority, (str, int, Enum)):
            return self.task()(priority)  # the bare decorator: priority is the function
        config = TaskConfig(priority=TaskPriority.parse(priority), compile_to_c=compile_to_c,
                            **config_kwargs)
        _int_at_least("delay_ms", config.delay_ms, 0)
        _int_at_least("max_retries", config.max_retries, 0)
        _int_at_least("timeout_ms", config.timeout_ms, 0)
        config.retry_backoff = compat.check_backoff(config.retry_backoff)
        config.retry_on = compat.check_retry_on(config.retry_on)
        if "memory_limit_mb" in config_kwargs:
            compat.check_memory_limit(config.memory_limit_mb)
        options = compat.options_from_config(config, config_kwargs)
        if options is not None and self._default_opts is not None and not options.profile \
                and "enable_profiling" not in config_kwargs:
            options = options.merged(profile=True)  # the engine profiles every task
        if options is not None and options.memory_limit_mb is not None and self.mode != "process":
            raise ValueError("memory_limit_mb is enforced in mode='process' only: "
                             "threads share the app's memory")
        config.options = options  # type: ignore[attr-defined]

        def decorate(func: Callable[..., T]) -> Callable[..., T]:
            func._task_config = config  # type: ignore[attr-defined]
            self._fn_info.pop(func, None)
            func._is_background_task = True  # type: ignore[attr-defined]
            func.submit = _Submitter(self, func)  # type: ignore[attr-defined]
            self._registered_tasks[getattr(func, "__name__", repr(func))] = func
            return func

        return decorate

    # -- results ---------------------------------------------------------------

    def get_task_result(self, task_id: Any) -> TaskResult:
        """The TaskResult of ``task_id`` (an id, or a TaskResult as Catzilla's docs pass).

        Raises:
            UnknownTaskError: never submitted here, or finished so long ago it
                was forgotten (the engine keeps the last ``keep_finished``).
        """
        if not isinstance(task_id, str):
            task_id = getattr(task_id, "task_id", task_id)
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

    def imap(self, fn: Callable[..., T], *iterables: Iterable[Any],
             max_in_flight: Optional[int] = None, timeout: Optional[float] = None) -> Iterator[T]:
        """Like map, in order, but lazy: at most ``max_in_flight`` tasks are submitted ahead.

        The inputs are read as results are consumed, so an endless or huge
        iterable streams through in bounded memory. Stopping early cancels
        what was submitted and not yet started.

        Args:
            max_in_flight: tasks submitted and not yet consumed (default 2 x max_workers).
            timeout: seconds for the whole iteration (TimeoutError after that).
        Raises:
            ValueError/TypeError: a bad max_in_flight; each task's own exception
                when its result is reached.
        """
        return compat.imap(self, fn, iterables, max_in_flight, timeout)

    def imap_unordered(self, fn: Callable[..., T], *iterables: Iterable[Any],
                       max_in_flight: Optional[int] = None,
                       timeout: Optional[float] = None) -> Iterator[T]:
        """As imap, but yields each result as soon as it is ready (any order)."""
        return compat.imap_unordered(self, fn, iterables, max_in_flight, timeout)

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
            if self._closed and self._backend is None:
                return
            self._closed = True
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
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.close(self._abandon)
        self._delays.stop()
        if self._logs is not None:
            self._logs.close()
            self._logs = None
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
        if task.opts is not None and not task.opts.should_retry(exc):
            return False
        task.attempt += 1
        task.status = TaskStatus.RETRYING
        self.monitor.count_retry(task, exc)
        return True

    def _backoff_s(self, attempt: int, task: Optional[TaskResult] = None) -> float:
        """Seconds before retry ``attempt``, by the task's retry_backoff (see compat.TaskOptions)."""
        o = self.options
        if task is not None and task.opts is not None:
            return task.opts.backoff_s(attempt, o.retry_backoff_base, o.retry_backoff_cap)
        return compat.exponential_backoff(attempt, o.retry_backoff_base, o.retry_backoff_cap)

    def _schedule(self, delay_s: float, fn: Callable[[], None]) -> None:
        self._delays.call_at(time.monotonic() + delay_s, fn)

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
        with self._lock:
            pending = [t for t in self._tasks.values() if not t.done()]
        for t in pending:
            self._cancel(t)

    def _help_collect(self, task: TaskResult, timeout: Optional[float]) -> None:
        """Let a waiting thread collect outcomes itself for a moment (see ProcessBackend)."""
        backend = self._backend
        if backend is not None:
            backend.help_collect(task, timeout)

    def _observe(self, task: TaskResult) -> None:
        backend = self._backend
        if backend is not None and not task.done():
            backend.observe(task)

    def _is_running(self, task: TaskResult) -> bool:
        """True while a worker runs ``task`` (TaskResult.status reads it live)."""
        check = getattr(self._backend, "is_running", None)
        return check is not None and check(task)

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
