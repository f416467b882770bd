"""BackgroundTasks: the public API of catzilla_mp, over the task lifecycle and a backend.

Layers (imports point down only; tests/test_architecture.py checks it,
docs/architecture.md has the whole picture):

    api        engine.py (this), app.py          BackgroundTasks, @task, Catzilla's API
                   │ is a
    lifecycle  lifecycle/core.py                 TaskLifecycle: admission, retry and back-off,
                   │   host.py, delays.py,       delays, timeouts, finishing, retention,
                   │   callbacks.py, monitor.py  events; the TaskHost backends call
                   │ makes one (mode=), gives it the TaskHost
    backends   backends/base.py                  Backend: dispatch, cancel, terminate, observe,
                   │                             live_progress, queue_depths, close, ...
                   ├─ backends/thread.py         threads of this process (mode="thread")
                   ├─ backends/ray.py            Ray tasks on a cluster (mode="ray")
                   └─ backends/process/          worker processes (mode="process", the default):
                          backend.py, supervisor.py, payloads.py, worker.py (catzilla_mp.workers)
    values     results, compat, compat_worker, serialization
    native     _core (cffi wrapper of native/*.c), segment_janitor
    base       errors, records, progress

Data flow in process mode:

    app threads                        |  shared memory (one segment)     |  worker processes
                                       |                                  |
    add_task(fn, *args) ──pickle──►  slot[i] payload (inline/chunk)     |
         │   (engine: validate,        |  ring[priority] ◄─ hint i ───────┼── take: QUEUED→RUNNING(w)
         │    lifecycle: admit)        |                                  |        unpickle, run fn,
         ▼                             |                                  |        (backends/process/worker.py)
    TaskResult ◄── collector thread ◄──┼─ result ring ◄── hint i ─────────┼── finish: RUNNING→DONE(w)
         ▲         (backends/process/backend.py: unpickle; host.attempt_failed? retry : host.finish)
         └──── supervisor thread (backends/process/supervisor.py): spawns/reaps/scales workers,
               enforces timeouts, repairs rings
               delay thread (lifecycle/delays.py): delayed starts and retry back-offs

Actors:
  * Submitters (any app thread): the engine validates and numbers the task,
    the lifecycle admits it (EngineClosedError, EngineBrokenError), the
    backend takes a free slot, writes the pickled call into it and pushes
    its index on the ring of its priority. A full table waits up to
    ``queue_full_timeout`` seconds, then raises QueueFullError: a task is
    never dropped silently.
  * The collector thread (process backend) sleeps in C (GIL released) until
    results arrive, unpickles each outcome and asks its host: a retry
    (host.attempt_failed, host.backoff_s; the slot and its arguments are
    kept, the task is parked with host.schedule) or the end (the slot is
    released, host.finish completes the TaskResult).
  * The supervisor thread owns the worker processes.
  * The delay thread re-queues delayed and backing-off tasks.
  * The callback threads (lifecycle/callbacks.py) run user callbacks
    (add_callback, Future.add_done_callback): never the threads above, so a
    callback that blocks or waits on another task holds up no delivery.
  * If one of the engine's threads dies anyway, host.thread_died fails every
    pending task with EngineBrokenError and later submissions raise it.

Who frees what after a crash: see the header of native/slots.c and
docs/architecture.md. In short, the slot state word says who owns a task at
every instant, a dead worker's RUNNING slots are re-run (as a new attempt)
or failed with WorkerCrashedError, and its chunks are reclaimed by holder
tag; the backend frees a task's resources, the lifecycle decides its fate.

Thread mode (``mode="thread"``) runs the same API and the same lifecycle on
threads of the app process (backends/thread.py), for I/O-bound work. Ray
mode (``mode="ray"``, ``address=``) runs it on a Ray cluster
(backends/ray.py, docs/scale-out.md).
"""
from __future__ import annotations

import atexit
import functools
import hashlib
import itertools
import logging
import os
import threading
import time
import types
import weakref
from concurrent.futures import Executor
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, TypeVar, Union, overload

from . import compat
from .errors import (
    EngineBrokenError,
    EngineClosedError,
    QueueFullError,
    UnknownTaskError,
)
from .records import EngineStats, TaskConfig, TaskPriority, TaskStatus, parse_priority
from .lifecycle import TaskLifecycle
from .results import TaskFuture, TaskResult

if TYPE_CHECKING:
    from typing import ParamSpec

    from .compat import TaskFunction

    P = ParamSpec("P")

T = TypeVar("T")
log = logging.getLogger("catzilla_mp")
#: what add_task accepts as a priority (see TaskPriority.parse)
PriorityLike = Union[TaskPriority, Enum, str, int]

MODES = ("process", "thread", "ray")
#: How worker processes start (backends/process/zygote.py): "forkserver" forks
#: them from a fresh, preloaded zygote process (milliseconds per worker);
#: "spawn" starts each as a fresh interpreter (~60 ms, 0.2-0.5 s on a busy host).
START_METHODS = ("forkserver", "spawn")
#: How often shutdown() looks whether every task has finished.
SHUTDOWN_POLL_S = 0.01

_DEFAULTS = TaskConfig()
#: Task functions whose config and name are cached (see BackgroundTasks._describe).
FN_INFO_CACHE = 1024
#: Random bytes in a task id. A task id is a capability (whoever knows it may
#: ask the web routes for its status), so ids come from a CSPRNG: SHAKE-256
#: (an extendable-output function, KMAC's core) of a 32-byte key from the
#: OS's CSPRNG, per thread (and per process: a forked child draws a new key),
#: and a block counter. A random per-engine prefix plus a counter would be
#: cheaper and guessable from any one id a client was given.
TASK_ID_BYTES = 16
#: Ids made per refill, per thread (thread-local: no lock on the submit path).
#: One SHAKE-256 call per block, its output hex-formatted and split into ids
#: by C string methods: ~0.05 us an id here, against ~0.2 us for the keyed
#: BLAKE2b call per 4 ids and the slicing loop used before. Not os.urandom
#: per block: it releases the GIL, and getting it back from the collector
#: thread cost ~0.8 ms a call here (the switch interval); hashing never
#: releases it.
TASK_ID_BLOCK = 512
_id_blocks = threading.local()


def _id_blocks_of(key: bytes) -> Iterator[list[str]]:
    for block in itertools.count():
        xof = hashlib.shake_256(key)
        xof.update(block.to_bytes(8, "little"))
        # "task_<32 hex>" per 16 bytes: hex() puts a space between each
        # 16 bytes, replace() prefixes every id but the first, split() cuts
        yield ("task_" + xof.digest(TASK_ID_BYTES * TASK_ID_BLOCK)
               .hex(" ", TASK_ID_BYTES).replace(" ", " task_")).split(" ")


def _id_source() -> Iterator[str]:
    # chain.from_iterable hands out a block's ids from C (a list iterator):
    # ~0.03 us a next() here, against ~0.1 us resuming a generator frame
    return itertools.chain.from_iterable(_id_blocks_of(os.urandom(32)))


def _new_task_id() -> str:
    """A fresh unguessable task id (the slow path: this thread's first id)."""
    ids = _id_blocks.ids = _id_source()
    return next(ids)


def _forget_id_blocks() -> None:
    global _id_blocks
    _id_blocks = threading.local()


os.register_at_fork(after_in_child=_forget_id_blocks)
_MethodType = types.MethodType
#: add_task_async polls a full queue from this pause up to the next, doubling:
#: short enough that a freed slot is taken within a frame of the web server's
#: loop, long enough that a full queue costs the loop nothing measurable.
ASYNC_FULL_PAUSE_S = (0.002, 0.05)

# Upper bounds of every option and per-task value (issue 11.5). Each is far
# above any sane use and low enough that the C core (32-bit lengths, 16-bit
# worker owners), the kernel and the nanosecond arithmetic of deadlines cope;
# a value past one is refused at the call, the limit named in the message.
#: Worker processes (each a Python interpreter of 20+ MiB).
MAX_WORKERS = 1024
#: Executor threads per worker process.
MAX_THREADS_PER_WORKER = 256
#: Tasks in flight: the slot table is allocated up front.
MAX_QUEUE_SIZE = 1 << 22
#: The arena: 64 GiB is more than /dev/shm holds on most machines.
MAX_MEMORY_POOL_MB = 1 << 16
#: One payload: the slots' length fields are 32-bit.
MAX_PAYLOAD_BYTES = (1 << 32) - 1
#: Any wait, back-off, idle time or time-to-live in seconds: 30 days.
MAX_SECONDS = 30 * 86400
#: delay_ms, timeout_ms, timeout_grace_ms: the same 30 days.
MAX_MS = MAX_SECONDS * 1000
#: Retries of one task.
MAX_RETRIES = 1000
#: Finished tasks remembered (their status, or their result: see keep_finished_bytes).
MAX_KEEP_FINISHED = 10_000_000
MAX_TASKS_PER_WORKER = 1 << 31
MAX_WORKER_MEMORY_MB = 1 << 24
#: os.nice() increments above 19 are clamped by the kernel anyway.
MAX_NICENESS = 19
#: Workers run below the app's CPU priority unless told otherwise (nice 10 and
#: SCHED_BATCH, worker.py): a web route on the same cores then keeps its
#: latency while they run (bench/web.py). 0 gives them the app's priority.
DEFAULT_WORKER_NICENESS = 10
MAX_CHUNKSIZE = 1 << 20


#: Catzilla's default min_workers: below an explicit max_workers it yields to it.
CATZILLA_MIN_WORKERS = 2


class EngineOptions:
    """Every option of an engine, validated once. Raises ValueError/TypeError on bad values.

    Every number has an upper bound (the MAX_* constants) named in the error.
    """

    def __init__(self, *, workers, min_workers, max_workers, queue_size, enable_auto_scaling,
                 memory_pool_mb, mode, threads_per_worker, start_method, max_payload_bytes,
                 queue_full_timeout, retry_backoff_base, retry_backoff_cap, timeout_grace_ms,
                 scale_down_idle_s, max_tasks_per_worker, worker_memory_limit_mb,
                 worker_niceness, shutdown_timeout, keep_finished, populate,
                 initializer=None, initargs=(),
                 max_external_bytes=1 << 30, keep_finished_bytes=64 << 20,
                 result_ttl_s=3600.0, native_threads_per_worker=None, address=None,
                 ray_task_options=None, ray_max_in_flight=None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.address, self.ray_task_options, self.ray_max_in_flight = _ray_options(
            mode, address, ray_task_options, ray_max_in_flight)
        if start_method not in START_METHODS:
            raise ValueError(f"start_method must be one of {START_METHODS}, not {start_method!r}: "
                             "workers are forked from a fresh zygote process or spawned as fresh "
                             "interpreters; forking a threaded app is unsafe")
        cpus = os.cpu_count() or 1
        _int_at_least("workers", workers, 1, allow_none=True, most=MAX_WORKERS)
        _int_at_least("min_workers", min_workers, 0, most=MAX_WORKERS)
        _int_at_least("max_workers", max_workers, 1, allow_none=True, most=MAX_WORKERS)
        initial = workers if workers is not None else \
            min(MAX_WORKERS, cpus if mode != "thread" else cpus * 2)
        if max_workers is not None and min_workers > max_workers:
            if min_workers != CATZILLA_MIN_WORKERS:
                raise ValueError(f"min_workers ({min_workers}) is above max_workers ({max_workers})")
            # Catzilla's default min_workers=2 yields to an explicit max_workers=1
            min_workers = max_workers
        if workers is None and max_workers is not None:
            initial = min(initial, max_workers)  # the CPU count must not exceed the cap
        if workers is not None and max_workers is not None and workers > max_workers:
            raise ValueError(f"workers ({workers}) is above max_workers ({max_workers})")
        # Catzilla's min_workers=2 default must not grow a workers=1 engine:
        # without an explicit max_workers, the pool never exceeds its start
        self.min_workers = min(min_workers, initial)
        self.max_workers = max_workers if max_workers is not None else initial
        self.workers = max(initial, self.min_workers)
        self.queue_size = _int_at_least("queue_size", queue_size, 1, most=MAX_QUEUE_SIZE)
        self.enable_auto_scaling = bool(enable_auto_scaling)
        self.memory_pool_mb = _int_at_least("memory_pool_mb", memory_pool_mb, 1,
                                            most=MAX_MEMORY_POOL_MB)
        self.mode = mode
        self.threads_per_worker = _int_at_least("threads_per_worker", threads_per_worker, 1,
                                                most=MAX_THREADS_PER_WORKER)
        self.start_method = start_method
        self.max_payload_bytes = _int_at_least("max_payload_bytes", max_payload_bytes, 1,
                                               most=MAX_PAYLOAD_BYTES)
        self.queue_full_timeout = _non_negative("queue_full_timeout", queue_full_timeout,
                                                most=MAX_SECONDS)
        self.retry_backoff_base = _non_negative("retry_backoff_base", retry_backoff_base,
                                                most=MAX_SECONDS)
        self.retry_backoff_cap = _non_negative("retry_backoff_cap", retry_backoff_cap,
                                               most=MAX_SECONDS)
        self.timeout_grace_ms = _int_at_least("timeout_grace_ms", timeout_grace_ms, 0, most=MAX_MS)
        self.scale_down_idle_s = _non_negative("scale_down_idle_s", scale_down_idle_s,
                                               most=MAX_SECONDS)
        self.max_tasks_per_worker = _int_at_least("max_tasks_per_worker", max_tasks_per_worker,
                                                  0, most=MAX_TASKS_PER_WORKER)
        self.worker_memory_limit_mb = _int_at_least("worker_memory_limit_mb",
                                                    worker_memory_limit_mb, 0,
                                                    most=MAX_WORKER_MEMORY_MB)
        self.worker_niceness = _int_at_least("worker_niceness", worker_niceness, 0,
                                             most=MAX_NICENESS)
        self.shutdown_timeout = _non_negative("shutdown_timeout", shutdown_timeout,
                                              most=MAX_SECONDS)
        self.keep_finished = _int_at_least("keep_finished", keep_finished, 0,
                                           most=MAX_KEEP_FINISHED)
        self.populate = bool(populate)
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, not {type(initializer).__name__}")
        if not isinstance(initargs, (tuple, list)):
            raise TypeError(f"initargs must be a tuple, not {type(initargs).__name__}")
        self.initializer = initializer
        self.initargs = tuple(initargs)
        # payloads in segments of their own, together (see payloads.py)
        self.max_external_bytes = _int_at_least("max_external_bytes", max_external_bytes, 0,
                                                most=1 << 50)
        # results the engine keeps for get_task_result, by size and by age
        self.keep_finished_bytes = _int_at_least("keep_finished_bytes", keep_finished_bytes, 0,
                                                 most=1 << 50)
        self.result_ttl_s = _non_negative("result_ttl_s", result_ttl_s, most=MAX_SECONDS)
        # executor threads per worker for native tasks (docs/native-tasks.md); None: as many
        # as threads_per_worker, which then also bounds the Python tasks running at once
        self.native_threads_per_worker = _int_at_least(
            "native_threads_per_worker", native_threads_per_worker, 1, allow_none=True,
            most=MAX_THREADS_PER_WORKER)


class BackgroundTasks(TaskLifecycle, Executor):
    """Run Python functions in the background: in worker processes (default), threads or Ray.

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
        start_method: str = "forkserver",
        max_payload_bytes: int = 256 << 20,
        queue_full_timeout: float = 10.0,
        retry_backoff_base: float = 0.1,
        retry_backoff_cap: float = 30.0,
        timeout_grace_ms: int = 2000,
        scale_down_idle_s: float = 30.0,
        max_tasks_per_worker: int = 0,
        worker_memory_limit_mb: int = 0,
        worker_niceness: int = DEFAULT_WORKER_NICENESS,
        shutdown_timeout: float = 30.0,
        keep_finished: int = 100_000,
        populate: bool = True,
        initializer: Optional[Callable[..., Any]] = None,
        initargs: tuple = (),
        initial_workers: Optional[int] = None,
        forward_logs: bool = True,
        max_external_bytes: int = 1 << 30,
        keep_finished_bytes: int = 64 << 20,
        result_ttl_s: float = 3600.0,
        native_threads_per_worker: Optional[int] = None,
        address: Optional[str] = None,
        ray_task_options: Optional[dict] = None,
        ray_max_in_flight: Optional[int] = None,
        durable: Union[str, "os.PathLike[str]", None] = None,
        server: Optional[str] = None,
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
            initializer=initializer, initargs=initargs,
            max_external_bytes=max_external_bytes, keep_finished_bytes=keep_finished_bytes,
            result_ttl_s=result_ttl_s, native_threads_per_worker=native_threads_per_worker,
            address=address, ray_task_options=ray_task_options,
            ray_max_in_flight=ray_max_in_flight)
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
        # durable=: the SQLite journal that wraps the backend (backends/journal.py, issue 14)
        if durable is not None and not isinstance(durable, (str, os.PathLike)):
            raise TypeError(f"durable must be a file path, not {type(durable).__name__}")
        self._durable = os.fspath(durable) if durable is not None else None
        # server=: run the tasks in a `catzilla-mp serve` process (backends/remote.py, issue 14)
        if server is not None and not isinstance(server, (str, os.PathLike)):
            raise TypeError(f"server must be a socket path, not {type(server).__name__}")
        if server is not None and durable is not None:
            raise ValueError("durable= belongs to the server (catzilla-mp serve --durable), "
                             "not to its clients")
        self._server = os.fspath(server) if server is not None else None

        # First, while this process may still have a single thread: fork the
        # zygote that will fork the workers (backends/process/zygote.py); None
        # if the app runs threads already (the supervisor then spawns one).
        self.worker_zygote = self._fork_zygote()
        self._init_lifecycle()
        # set in a child process forked after this engine was made: its backend
        # is the parent's, and the first use here makes a new one (_adopt_fork)
        self._forked = False
        self._registered_tasks: dict[str, Callable] = {}
        # id(function) -> (weak reference to it, its JitTask, asked by @task): compile_to_c
        self._jit_tasks: dict[int, tuple[Any, Any, bool]] = {}
        # workflows (catzilla_mp/workflows): made on the first submission that
        # needs them; _rate_limited turns on once a @task carries a rate_limit
        self._workflows: Any = None
        self._rate_limited = False
        # id(function) -> (weak reference to it, its @task config, its name)
        self._fn_info: dict[int, tuple[Any, Optional[TaskConfig], str]] = {}
        # options every task gets unless it says otherwise (enable_profiling)
        self._default_opts = compat.TaskOptions(profile=True) if enable_profiling else None
        self._logs: Optional[compat.LogReceiver] = None
        #: what every worker process is started with besides the supervisor's own config
        self.worker_extras: dict[str, Any] = {}
        if mode == "process":
            self.worker_extras = self._worker_setup(bool(forward_logs))
        self._start_lifecycle()
        try:
            self._backend = self._make_backend()
            if self._durable is not None:
                self._resume_journal()
        except BaseException:
            if self.worker_zygote is not None:
                self.worker_zygote.kill()
            self._delays.stop()
            if self._logs is not None:
                self._logs.close()
            raise
        self._atexit = _register_atexit(self)
        self._orphan_finalizer = _finalize_orphan(self)
        _live_engines.add(self)

    def _fork_zygote(self):
        """A zygote forked from this process (process mode, forkserver), if it is safe now."""
        if (self.options.mode != "process" or self.options.start_method != "forkserver"
                or self._server is not None):  # a client of `serve` starts no workers
            return None
        from .backends.process.zygote import fork_from_app
        return fork_from_app()

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
        if self.options.native_threads_per_worker:  # the worker's Python gate (native_tasks)
            extras["native_threads"] = self.options.native_threads_per_worker
        return extras

    def _make_backend(self, host: Any = None):
        if host is None and self._server is not None:
            from .backends.remote import RemoteBackend
            return RemoteBackend(weakref.proxy(self), self._server)
        if host is None and self._durable is not None:
            # durable=: the journal wraps the backend and gives it its TaskHost (issue 14)
            from .backends.journal import JournalBackend
            return JournalBackend(weakref.proxy(self), self._durable, self._make_backend)
        # The backend's threads hold the backend, and it holds the engine only
        # weakly: an engine dropped without shutdown() can be collected, and
        # its finalizer (_finalize_orphan) then stops the backend, as
        # ProcessPoolExecutor's manager thread does (issue 11.14).
        engine = host if host is not None else weakref.proxy(self)
        if self.options.mode == "thread":
            from .backends.thread import ThreadBackend
            return ThreadBackend(engine)
        if self.options.mode == "ray":
            from .backends.ray import RayBackend  # ImportError naming the extra without Ray
            return RayBackend(engine)
        from .backends.process.backend import ProcessBackend
        return ProcessBackend(engine)

    # -- fork ------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        """os.register_at_fork hook, in the child: only flag and reset locks.

        The child has none of the engine's threads, and its slots, rings and
        workers are the parent's: using them would take the parent's results
        and hand this process's tasks to the parent's collector. Nothing of
        the parent's backend is touched (not even closed: that would stop the
        parent's workers); the child's first use builds its own (_adopt_fork).
        """
        self._lock = threading.Lock()  # a parent thread may have held it at the fork
        self._forked = True
        self._inherited_backend, self._backend = self._backend, None
        self._orphan_finalizer.detach()  # the parent's finalizer stops the parent's backend

    def _adopt_fork(self, start: bool = True) -> None:
        """First use of an engine in a child forked after it was made: a fresh engine here.

        Tasks the parent submitted are the parent's: their copies here fail
        with EngineBrokenError (nothing in this process could ever finish
        them). With ``start`` (a submit), a new backend starts: new segment,
        new workers, this process's. Each forked child thus runs its own
        engine (gunicorn --preload: one per web worker).
        """
        with self._lock:
            if not self._forked:
                return
            self._forked = False
            inherited = [t for t in self._tasks.values() if not t.done()]
            self._tasks = {}
            self._workflows = None  # the parent's: its scheduler thread did not come along
            self._forget_finished()
            if self._closed:
                start = False
        for task in inherited:
            task._finish(False, EngineBrokenError(
                f"task {task.task_id} was submitted before this process (pid {os.getpid()}) "
                "was forked: its result goes to the parent process only"), TaskStatus.FAILED)
        # the parent's threads did not come along: nothing of theirs is ours
        # (and its zygote is the parent's: fork our own while single-threaded)
        self.worker_zygote = self._fork_zygote() if start else None
        self._start_lifecycle(listeners=self.monitor._listeners)
        forward_logs = self._logs is not None
        if self._logs is not None:
            self._logs.sock.close()  # the parent's receiver: its workers' logs are not ours
            self._logs = None
        if self._atexit is not None:
            atexit.unregister(self._atexit)
            self._atexit = None
        if not start:
            return
        if self.mode == "process":
            self.worker_extras = self._worker_setup(forward_logs)
        self._backend = self._make_backend()
        self._atexit = _register_atexit(self)
        self._orphan_finalizer = _finalize_orphan(self)
        log.info("engine re-created in forked process %d", os.getpid(),
                 extra={"event": "engine_forked", "pid": os.getpid()})

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
        depends_on: Any = None,
        job_id: Optional[str] = None,
        unique_for: Optional[float] = None,
        rate_limit: Optional[str] = None,
        **kwargs: Any,
    ) -> TaskResult[T]:
        """Submit ``func(*args, **kwargs)``; returns its TaskResult at once.

        Options left at their defaults take the values of ``@task(...)`` if
        ``func`` was decorated. ``compile_to_c=True`` (or
        ``@task(compile_to_c=True)``) compiles ``func`` with numba in each
        worker and runs it without the GIL; if numba cannot, it runs as
        Python and its TaskStats says why (docs/native-tasks.md). A C task
        (TaskCompiler.compile_c) is submitted like a function. The
        keyword-only options (retry_backoff, retry_on, retry_if,
        memory_limit_mb, enable_profiling) are catzilla_mp's, as on @task.

        Workflow options (docs/workflows.md): ``depends_on`` (TaskResults this
        task waits for; it fails or is cancelled with them), ``job_id`` /
        ``unique_for`` (a second submission while the first is live, or
        within unique_for seconds, returns the first's TaskResult),
        ``rate_limit`` ("10/s", "100/m", "5/h": tasks over it are delayed).

        Raises:
            ValueError/TypeError: an invalid option or a non-callable.
            SerializationError: arguments that cannot be pickled.
            PayloadTooLargeError: arguments beyond max_payload_bytes.
            QueueFullError: no free slot within queue_full_timeout.
            EngineClosedError: after shutdown().
        In every error case the task was not queued.
        """
        if compile_to_c is not None or self._jit_tasks:
            func = self._native_task(func, compile_to_c)
        if (depends_on is not None or job_id is not None or unique_for is not None
                or rate_limit is not None or self._rate_limited):
            return self._workflow_submit(
                func, args, kwargs, priority, delay_ms, max_retries, timeout_ms, retry_backoff,
                retry_on, retry_if, memory_limit_mb, enable_profiling,
                depends_on=depends_on, job_id=job_id, unique_for=unique_for,
                rate_limit=rate_limit)
        task = self._new_task(func, priority, delay_ms, max_retries, timeout_ms)
        if (retry_backoff is not None or retry_on is not None or retry_if is not None
                or memory_limit_mb is not None or enable_profiling is not None):
            self._merge_options(task, retry_backoff, retry_on, retry_if, memory_limit_mb,
                                enable_profiling)
        if compat.PROPAGATED:
            compat.add_context(task)
        return self._submit_task(task, func, args, kwargs)

    def _merge_options(self, task: TaskResult, retry_backoff, retry_on, retry_if,
                       memory_limit_mb, enable_profiling) -> None:
        """Merge add_task's per-task options into ``task`` (called only when one is given:
        the plain add_task pays one test for all of them).

        Raises:
            ValueError: memory_limit_mb outside process mode (counted as a failed submit).
        """
        base = task.opts or compat.TaskOptions()
        task.opts = base.merged(backoff=retry_backoff, retry_on=retry_on, retry_if=retry_if,
                                memory_limit_mb=memory_limit_mb, profile=enable_profiling)
        task.wextras = task.opts.extras
        self._refuse_unenforceable(task.opts)

    def _refuse_unenforceable(self, opts: compat.TaskOptions) -> None:
        """A memory limit outside process mode is refused, not ignored (counted as a failed submit)."""
        if opts.memory_limit_mb is not None and self.mode != "process":
            self._submit_failed += 1
            raise ValueError("memory_limit_mb is enforced in mode='process' only: "
                             "threads share the app's memory")

    # -- workflows (catzilla_mp/workflows; docs/workflows.md) --------------------

    def _workflow_submit(self, func, args, kwargs, priority, delay_ms, max_retries, timeout_ms,
                         retry_backoff, retry_on, retry_if, memory_limit_mb, enable_profiling, *,
                         depends_on, job_id, unique_for, rate_limit) -> TaskResult:
        """add_task with a workflow option: numbered and validated as add_task, then workflows."""
        task = self._new_task(func, priority, delay_ms, max_retries, timeout_ms)
        if (retry_backoff is not None or retry_on is not None or retry_if is not None
                or memory_limit_mb is not None or enable_profiling is not None):
            self._merge_options(task, retry_backoff, retry_on, retry_if, memory_limit_mb,
                                enable_profiling)
        if rate_limit is None:
            rate_limit = getattr(func, "_czmp_rate_limit", None)
        if depends_on is None and job_id is None and unique_for is None and rate_limit is None:
            if compat.PROPAGATED:
                compat.add_context(task)
            return self._submit_task(task, func, args, kwargs)
        if compat.PROPAGATED:
            compat.add_context(task)
        target = func.__func__ if type(func) is types.MethodType else func
        name = f"{getattr(target, '__module__', None) or ''}.{task.name}"
        return self._workflow_state().submit(
            task, func, args, kwargs, name=name, depends_on=depends_on, job_id=job_id,
            unique_for=unique_for, rate_limit=rate_limit)

    def _workflow_state(self):
        if self._forked:
            # a forked child's first use (periodic, find_job): its own engine and
            # connection, not the parent's workflows (their threads stayed there)
            self._adopt_fork()
        wf = self._workflows
        if wf is None:
            from .workflows.core import Workflows
            with self._lock:
                wf = self._workflows
                if wf is None:
                    wf = self._workflows = Workflows(_WorkflowPort(self))
        return wf

    def periodic(self, fn: Callable[..., Any], *args: Any, cron: Optional[str] = None,
                 every: Any = None, tz: Any = None, missed: str = "once",
                 name: Optional[str] = None, **kwargs: Any):
        """Run ``fn(*args, **kwargs)`` periodically: by ``cron`` or ``every`` (a timedelta or seconds).

        Each run is an add_task (``kwargs`` may carry its options: priority,
        timeout_ms, job_id, ...). See docs/workflows.md and
        workflows/schedule.py for the missed-runs policy. (Not named
        ``schedule``: that is the TaskHost's timer, which backends call.)

        Args:
            cron: a five-field cron expression (needs cronsim: the ``cron`` extra).
            every: an interval; the first run is one interval from now.
            tz: the time zone the cron expression is read in (name or tzinfo; default UTC).
            missed: "once" (default: runs missed while the app could not fire
                are fired as one), "skip" (dropped) or "catch_up" (each fired).
            name: for logs (default: the function's qualified name).
        Returns:
            A Schedule (``.cancel()``, ``.next_run``, ``.runs``, ``.last_result``).
        Raises:
            ValueError, TypeError: a bad expression, interval, zone or policy.
            ImportError: cron without cronsim. EngineClosedError: after shutdown().
        """
        if self._closed:
            raise EngineClosedError("the engine is shut down; it takes no new schedules")
        return self._workflow_state().schedule(fn, args, kwargs, cron=cron, every=every, tz=tz,
                                               missed=missed, name=name)

    def schedules(self) -> list:
        """The active schedules (see periodic()); with server=, this process's registrations."""
        wf = self._workflows
        return [] if wf is None else wf.schedules()

    def find_job(self, job_id: str) -> Optional[TaskResult]:
        """The TaskResult holding ``job_id`` (add_task(..., job_id=)) now, or None.

        With server=, the server's holder (whichever process submitted it)."""
        wf = self._workflows
        if wf is None and self._server is not None:
            wf = self._workflow_state()  # the job table is the server's: ask it
        return None if wf is None else wf.job(job_id)

    def cancel_task(self, task: TaskResult, force: bool = False) -> bool:
        """TaskResult.cancel; a task waiting for its dependencies is cancelled here."""
        wf = self._workflows
        if wf is not None and wf.cancel_held(task):
            return True
        return TaskLifecycle.cancel_task(self, task, force)

    def _submit_task(self, task: TaskResult, func: Callable, args: tuple,
                     kwargs: dict) -> TaskResult:
        self._admit(task)
        try:
            backend = self._backend
            if backend is None:  # _live_backend() written out: the submit hot path
                raise EngineClosedError("the engine is shut down; it takes no new tasks")
            backend.dispatch(task, func, args, kwargs)
        except BaseException as exc:
            self._forget(task)
            self._submit_failed += 1
            if isinstance(exc, QueueFullError):
                self._queue_full += 1
            raise
        if self.monitor._listeners:
            self.monitor.emit("submitted", task)
        return task

    def add_task_with_id(self, task_id: str, func: Callable[..., T], args: tuple = (),
                         kwargs: Optional[dict] = None, *,
                         priority: PriorityLike = TaskPriority.NORMAL, delay_ms: int = 0,
                         max_retries: int = 3, timeout_ms: int = 30000,
                         options: Optional[Any] = None) -> TaskResult[T]:
        """``add_task(func, *args, **kwargs)`` under an id made elsewhere.

        For ``catzilla-mp serve`` (catzilla_mp/server.py): a client's task keeps
        the id its app process made, so every process, and the server's
        journal after a restart, know it by that id. ``options`` is the
        client task's compat.TaskOptions (retry_backoff, retry_on, ...).

        Raises:
            ValueError: ``task_id`` is not a task id, or this engine holds it already.
            As add_task otherwise (the task was not queued).
        """
        if not isinstance(task_id, str) or not task_id.startswith("task_") or len(task_id) > 64:
            raise ValueError(f"not a task id: {task_id!r}")
        if task_id in self._tasks:
            raise ValueError(f"task {task_id} is already in this engine")
        task = self._new_task(func, priority, delay_ms, max_retries, timeout_ms)
        task.task_id = task_id
        if options is not None:
            task.opts = options
            task.wextras = options.extras
        return self._submit_task(task, func, args, kwargs or {})

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
        import asyncio  # loaded already: the caller runs in an event loop

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

    def add_tasks(self, func: Callable[..., T], arg_tuples: Iterable[Any], *,
                  priority: PriorityLike = TaskPriority.NORMAL, delay_ms: int = 0,
                  max_retries: int = 3, timeout_ms: int = 30000) -> list[TaskResult[T]]:
        """Submit ``func(*a)`` for each ``a`` of ``arg_tuples`` in one call (a non-tuple ``a`` is one argument).

        Faster than add_task in a loop: one pass of validation and batched
        pushes. Raises as add_task; tasks submitted before an error stay
        submitted and the error names how many were.
        """
        calls = [(a if type(a) is tuple else (a,)) for a in arg_tuples]
        return self._add_tasks(func, calls, priority, delay_ms, max_retries, timeout_ms, False)

    def _add_tasks(self, func: Callable, calls: list, priority: TaskPriority, delay_ms: int,
                   max_retries: int, timeout_ms: int, executor: bool) -> list[TaskResult]:
        if not calls:
            return []
        if self._jit_tasks:  # @task(compile_to_c=True) functions go compiled here too
            func = self._native_task(func, None)
        first = self._new_task(func, priority, delay_ms, max_retries, timeout_ms)
        if compat.PROPAGATED:
            compat.add_context(first)
        first.executor = executor
        tasks = [first] + self._siblings(first, len(calls) - 1)
        if self._closed:
            raise EngineClosedError("the engine is shut down; it takes no new tasks")
        if self._broken is not None:
            self._raise_broken()
        self._tasks.update(zip([t.task_id for t in tasks], tasks))
        done = [0]
        try:
            self._live_backend().dispatch_many(tasks, func, calls, done)
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
        if self._forked:
            self._adopt_fork()
        # A bound method is a new object at every attribute access, and keeping
        # it would keep its instance: its function is what is described.
        target = func.__func__ if type(func) is _MethodType else func
        entry = self._fn_info.get(id(target))
        if entry is not None and entry[0]() is target:
            config, name = entry[1], entry[2]
        else:
            config, name = self._describe(func, target)
        opts: Optional[compat.TaskOptions] = self._default_opts
        if config is not None:
            opts = getattr(config, "options", None) or opts
            if opts is not None:  # a @task of another engine may carry a memory limit
                self._refuse_unenforceable(opts)
            priority = config.priority if priority == _DEFAULTS.priority else priority
            delay_ms = config.delay_ms if delay_ms == _DEFAULTS.delay_ms else delay_ms
            max_retries = config.max_retries if max_retries == _DEFAULTS.max_retries else max_retries
            timeout_ms = config.timeout_ms if timeout_ms == _DEFAULTS.timeout_ms else timeout_ms
        # the common case costs three type checks; anything else is validated fully
        if priority.__class__ is not TaskPriority:
            priority = parse_priority(priority)  # "normal" etc.: one dict lookup
        if type(delay_ms) is not int or not 0 <= delay_ms <= MAX_MS:
            _int_at_least("delay_ms", delay_ms, 0, most=MAX_MS)
        if type(max_retries) is not int or not 0 <= max_retries <= MAX_RETRIES:
            _int_at_least("max_retries", max_retries, 0, most=MAX_RETRIES)
        if type(timeout_ms) is not int or not 0 <= timeout_ms <= MAX_MS:
            _int_at_least("timeout_ms", timeout_ms, 0, most=MAX_MS)
        seq = self._last_seq = next(self._ids)
        try:
            task_id = next(_id_blocks.ids)
        except AttributeError:
            task_id = _new_task_id()
        return TaskResult(task_id, self, priority, max_retries, timeout_ms, delay_ms, seq, name,
                          opts)

    def _siblings(self, task: TaskResult, n: int) -> list[TaskResult]:
        """``n`` new tasks with the options of ``task`` (already validated), for add_tasks.

        The numbers are taken in one step (islice over the counter runs in C,
        under the GIL: no other submitter's number falls in between) and the
        ids as one slice of this thread's stream.
        """
        if n <= 0:
            return []
        seqs = list(itertools.islice(self._ids, n))
        self._last_seq = seqs[-1]
        try:
            ids = list(itertools.islice(_id_blocks.ids, n))
        except AttributeError:
            ids = [_new_task_id()] + list(itertools.islice(_id_blocks.ids, n - 1))
        # every argument spelled out: a star-args call builds a tuple per task
        prio, retries, timeout, delay = task.priority, task.max_retries, task.timeout_ms, task.delay_ms
        name, opts, executor = task.name, task.opts, task.executor
        sibs = [TaskResult(i, self, prio, retries, timeout, delay, q, name, opts, executor)
                for i, q in zip(ids, seqs)]
        if task.wextras is not (None if opts is None else opts.extras):
            for sib in sibs:  # extras of its own (compat.add_context): the siblings share them
                sib.wextras = task.wextras
        return sibs

    def _describe(self, func, target) -> tuple[Optional[TaskConfig], str]:
        """(the @task config, the name) of a task function, cached while the cache is small.

        The cache holds a weak reference to ``target`` (the function, or a
        bound method's function) and is keyed by its id: it must not keep
        alive a function (or what its closure holds) that the caller dropped.
        """
        if not callable(func):
            raise TypeError(f"task function must be callable, not {type(func).__name__}")
        config = getattr(func, "_task_config", None)
        name = getattr(func, "__qualname__", None) or type(func).__qualname__
        cache = self._fn_info
        key = id(target)
        try:
            ref = weakref.ref(target, functools.partial(_forget_fn_info, cache, key))
        except TypeError:
            return config, name  # no weak references (a builtin): described on every call
        if len(cache) >= FN_INFO_CACHE:
            cache.clear()  # lambdas made per call must not grow it for ever
        cache[key] = (ref, config, name)
        return config, name

    def task_id_for_log(self, seq: int, slot: Optional[int]) -> Optional[str]:
        """The id of the task a worker's log record names by (sequence number, slot), or None.

        None when the slot has moved on to another task since (the record
        arrived after its task finished).
        """
        finder = getattr(self._backend, "task_id_of_log", None)
        if finder is None or not isinstance(slot, int) or not isinstance(seq, int):
            return None
        return finder(slot, seq)

    def _live_backend(self):
        """The backend, or EngineClosedError: a submitter racing shutdown() finds it gone."""
        backend = self._backend
        if backend is None:
            raise EngineClosedError("the engine is shut down; it takes no new tasks")
        return backend

    @overload
    def task(self, priority: Callable[P, T]) -> TaskFunction[P, T]: ...

    @overload
    def task(self, priority: Any = ..., compile_to_c: Optional[bool] = ...,
             **config_kwargs: Any) -> Callable[[Callable[P, T]], TaskFunction[P, T]]: ...

    def task(self, priority: Any = TaskPriority.NORMAL, compile_to_c: Optional[bool] = None,
             **config_kwargs: Any) -> Any:
        """Decorator: attach a TaskConfig that add_task applies to this function.

        Usable bare (``@engine.task``), empty (``@engine.task()``) or with
        options (``@engine.task(priority=..., max_retries=..., ...)``): any
        TaskConfig field, Catzilla's TaskPriority included. The function itself
        is returned unchanged, so calling it still runs it inline;
        ``fn.submit(*args, **kwargs)`` is added as a shortcut for
        ``add_task(fn, ...)``. ``memory_limit_mb`` applies only when given.
        ``compile_to_c=True`` submits it compiled (numba, in each worker);
        left at None it runs as Python, as Catzilla's tasks do in practice.

        Raises:
            TypeError: an unknown configuration name. ValueError: a bad value.
        """
        if callable(priority) and not isinstance(priority, (str, int, Enum)):
            return self.task()(priority)  # the bare decorator: priority is the function
        rate_limit = config_kwargs.pop("rate_limit", None)
        if rate_limit is not None:
            from .workflows.ratelimit import parse as parse_rate_limit
            rate_limit = parse_rate_limit(rate_limit)
        config = TaskConfig(priority=TaskPriority.parse(priority), compile_to_c=compile_to_c,
                            **config_kwargs)
        _int_at_least("delay_ms", config.delay_ms, 0, most=MAX_MS)
        _int_at_least("max_retries", config.max_retries, 0, most=MAX_RETRIES)
        _int_at_least("timeout_ms", config.timeout_ms, 0, most=MAX_MS)
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
            self._fn_info.pop(id(func), None)
            self._jit_tasks.pop(id(func), None)
            if compile_to_c:
                self._native_task(func, True, decorated=True)
            func._is_background_task = True  # type: ignore[attr-defined]
            func.submit = _Submitter(self, func)  # type: ignore[attr-defined]
            if rate_limit is not None:
                func._czmp_rate_limit = rate_limit  # type: ignore[attr-defined]
                self._rate_limited = True
            self._registered_tasks[getattr(func, "__name__", repr(func))] = func
            return func

        return decorate

    def _native_task(self, func: Callable, compile_to_c: Optional[bool], *,
                     decorated: bool = False) -> Callable:
        """What to submit for ``func``: its JitTask if compilation is asked for, else ``func``.

        Asked for by ``compile_to_c=True`` here, or by @task(compile_to_c=True)
        (``decorated``) when ``compile_to_c`` is None; ``compile_to_c=False``
        overrides the decorator. One JitTask per function (cached by id,
        weakly, like _fn_info), so the function table ships it to each
        worker once and each worker compiles it once.

        Raises:
            TypeError: compile_to_c is not a bool or None.
        """
        from .native_tasks import NATIVE_TYPES, JitTask

        if compile_to_c is not None and not isinstance(compile_to_c, bool):
            raise TypeError(f"compile_to_c must be True, False or None, not {compile_to_c!r}")
        if type(func) in NATIVE_TYPES or compile_to_c is False:
            return func
        key = id(func)
        entry = self._jit_tasks.get(key)
        if entry is not None and entry[0]() is func:
            return entry[1] if compile_to_c or entry[2] else func
        if not compile_to_c:
            return func
        if not callable(func):
            raise TypeError(f"task function must be callable, not {type(func).__name__}")
        jit = JitTask(func, enabled=bool(self.enable_c_compilation))
        try:
            ref = weakref.ref(func, functools.partial(_forget_fn_info, self._jit_tasks, key))
        except TypeError:
            return jit  # no weak references (a builtin): numba rejects it anyway
        if len(self._jit_tasks) >= FN_INFO_CACHE:
            self._jit_tasks.clear()
        self._jit_tasks[key] = (ref, jit, decorated)
        return jit

    # -- results ---------------------------------------------------------------

    def get_task_result(self, task_id: Any) -> TaskResult:
        """The TaskResult of ``task_id`` (an id, or a TaskResult as Catzilla's docs pass).

        Raises:
            UnknownTaskError: never submitted here, or its result was dropped
                (the engine keeps the last ``keep_finished`` results, up to
                ``keep_finished_bytes`` bytes, for ``result_ttl_s`` seconds;
                the message then gives the task's final status).
        """
        if not isinstance(task_id, str):
            task_id = getattr(task_id, "task_id", task_id)
        task = self._tasks.get(task_id) or self._weak_tasks.get(task_id)
        if task is not None:
            return task
        if self._durable is not None and isinstance(task_id, str):
            task = self._journaled_result(task_id)
            if task is not None:
                return task
        if self._server is not None and isinstance(task_id, str):
            if self._forked:
                # a pre-forked web worker's first use may be a lookup: its own
                # connection, not the parent's inherited socket (no reader here)
                self._adopt_fork()
            backend = self._backend
            task = backend.find_task(self, task_id) if backend is not None else None
            if task is not None:  # submitted by another process of the server
                return task
        gone = self._expired.get(task_id)
        if gone is not None:
            status, completed_at, code = gone
            why = self.expired_reason(code)
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(completed_at))
            raise UnknownTaskError(
                f"task {task_id!r} finished ({status.name}) at {when}; the engine no longer "
                f"holds its result: {why}. The TaskResult add_task returned keeps it.")
        raise UnknownTaskError(f"no task {task_id!r} in this engine (a submit() or map() task "
                               "is kept only while its future is)")

    def _resume_journal(self) -> None:
        """durable=: admit again, under their ids, the tasks the journal holds unfinished."""
        backend = self._backend
        pairs = []
        for rec in backend.recovered():
            task = TaskResult(rec.task_id, self, rec.priority, rec.max_retries, rec.timeout_ms,
                              rec.delay_ms)
            task.name = rec.name
            task.seq = self._last_seq = next(self._ids)
            task.attempt = rec.attempt
            task.created_at = rec.created_at
            if rec.opts is not None:
                task.opts = rec.opts
                task.wextras = rec.opts.extras
            self._tasks[task.task_id] = task
            pairs.append((task, rec))
        if pairs:
            log.info("durable journal: %d unfinished tasks resumed", len(pairs),
                     extra={"event": "journal_resumed", "count": len(pairs)})
        backend.resume(pairs)

    def _journaled_result(self, task_id: str) -> Optional[TaskResult]:
        """A task finished before this engine started, from the journal (durable=), or None."""
        backend = self._backend
        found = backend.outcome(task_id) if backend is not None else None
        if found is None:
            return None
        task = TaskResult(task_id, self)
        task.name = found.name
        task.attempt = found.attempt
        task.created_at = found.created_at
        task.completed_at = found.completed_at
        task._final = True
        task._finish(found.ok, found.value, found.status)
        return task

    def get_stats(self) -> EngineStats:
        return self.monitor.snapshot()

    # -- concurrent.futures.Executor ----------------------------------------

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> TaskFuture:
        """Executor.submit: schedule ``fn(*args, **kwargs)`` once (no retries, as an executor).

        Every keyword goes to ``fn``, those named like add_task's options
        (``priority``, ``delay_ms``, ``timeout_ms``, ``max_retries``,
        ``compile_to_c``, ``func``) included: for those options, use
        ``add_task(...).future``. The engine keeps the task only while it runs
        and, after, only as long as the caller keeps its future.

        Returns:
            A TaskFuture.
        Raises:
            As add_task.
        """
        task = self._new_task(fn, _DEFAULTS.priority, _DEFAULTS.delay_ms, 0, _DEFAULTS.timeout_ms)
        task.executor = True
        return self._submit_task(task, fn, args, kwargs).future

    def map(self, fn: Callable[..., T], *iterables: Iterable[Any], timeout: Optional[float] = None,
            chunksize: int = 1) -> Iterator[T]:
        """Executor.map: ``fn`` over the iterables, results in order.

        Args:
            timeout: seconds from this call for all results; TimeoutError
                past it (the unfinished calls are cancelled).
            chunksize: that many calls per task.
        Returns:
            An iterator; results it yielded are no longer held by it or the
            engine. Closing it early cancels the calls not yet started.
        Raises:
            As add_tasks, and ValueError/TypeError for a bad chunksize or timeout.
        """
        _int_at_least("chunksize", chunksize, 1, most=MAX_CHUNKSIZE)
        if timeout is not None:
            _non_negative("timeout", timeout, most=MAX_SECONDS)
        calls = list(zip(*iterables))
        deadline = None if timeout is None else time.monotonic() + timeout
        d = _DEFAULTS
        if chunksize == 1:
            tasks = self._add_tasks(fn, calls, d.priority, d.delay_ms, 0, d.timeout_ms, True)
        else:
            chunks = [(fn, calls[i:i + chunksize]) for i in range(0, len(calls), chunksize)]
            tasks = self._add_tasks(_run_chunk, chunks, d.priority, d.delay_ms, 0, d.timeout_ms,
                                    True)
        tasks.reverse()  # popped from the end, in order: a yielded result is let go

        def results() -> Iterator[T]:
            try:
                while tasks:
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    if chunksize == 1:
                        yield _result_or_cancel(tasks.pop(), left)
                    else:
                        yield from _result_or_cancel(tasks.pop(), left)
            finally:
                for t in tasks:
                    t.cancel()

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
        if self._forked:
            self._adopt_fork(start=False)  # the backend here is the parent's: leave it be
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
        workflows = self._workflows
        if workflows is not None:
            workflows.stop_schedules()  # no new runs while shutting down
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
        self._orphan_finalizer.detach()
        # the process backend's unmap comes after this engine's thread joins:
        # while it runs, starting or ending a thread waits (issue 18)
        # (asked of the class: a wrapping backend, the journal's, forwards
        # attributes to the one it wraps but closes it its own way)
        release = getattr(type(backend), "release_mapping", None)
        try:
            if release is not None:
                backend.keep_mapped()
            if backend is not None:
                backend.close(self.abandon)
            self._backend = None
            if workflows is not None:
                workflows.close()  # dependants whose parents were just abandoned
            self._delays.stop()
            if self._logs is not None:
                self._logs.close()
                self._logs = None
            # callbacks of the tasks settled above still run, for a bounded time
            self._callback_runner.stop(max(0.0, deadline - time.monotonic()) + 1.0)
        finally:
            if release is not None:
                release(backend)
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

    # -- the lifecycle's private names the tests use ------------------------------

    _backoff_s = TaskLifecycle.backoff_s

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


class _WorkflowPort:
    """The engine as the workflows package sees it (workflows/host.py's WorkflowHost).

    Holds the engine weakly: the workflows' scheduler thread must not keep a
    dropped engine alive (its finalizer stops the backend).
    """

    def __init__(self, engine: BackgroundTasks) -> None:
        self._engine = weakref.proxy(engine)

    def hold(self, task: TaskResult) -> None:
        self._engine._admit(task)

    def forget(self, task: TaskResult) -> None:
        self._engine._forget(task)

    def release(self, task: TaskResult, func: Callable, args: tuple, kwargs: dict,
                delay_s: float) -> Optional[BaseException]:
        engine = self._engine
        if delay_s > 0:
            task.delay_ms = min(MAX_MS, task.delay_ms + int(delay_s * 1000 + 0.999))
        try:
            if task.done():
                return None  # cancelled while held
            engine._live_backend().dispatch(task, func, args, kwargs)
        except BaseException as exc:  # noqa: BLE001 - the task carries it; the caller decides
            engine._submit_failed += 1
            if isinstance(exc, QueueFullError):
                engine._queue_full += 1
            engine.finish(task, False, exc, TaskStatus.FAILED)
            return exc
        if engine.monitor._listeners:
            engine.monitor.emit("submitted", task)
        return None

    def prefeed(self, task: TaskResult, func: Callable, args: tuple, kwargs: dict,
                parent: TaskResult) -> Any:
        engine = self._engine
        backend = engine._backend
        store = getattr(backend, "dispatch_waiting", None)
        if store is None:
            return None
        try:
            stored = store(task, func, args, kwargs, parent)
        except Exception:  # noqa: BLE001 - the app path reports it when the parent completes
            return None
        if stored is not None and engine.monitor._listeners:
            engine.monitor.emit("submitted", task)
        return stored

    def finish(self, task: TaskResult, ok: bool, value: Any, status: TaskStatus) -> None:
        self._engine.finish(task, ok, value, status)

    def owns(self, task: TaskResult) -> bool:
        # the proxy is not the engine: its bound method's __self__ is
        return task._engine is self._engine.get_task_result.__self__

    def add_task(self, func: Callable, *args: Any, **kwargs: Any) -> TaskResult:
        return self._engine.add_task(func, *args, **kwargs)

    def shared(self) -> Any:
        backend = self._engine._backend
        return backend if getattr(backend, "shares_workflows", False) else None

    def release_shared(self, task: TaskResult, func: Callable, args: tuple, kwargs: dict,
                       shared: dict) -> tuple[Optional[BaseException], Optional[str]]:
        engine = self._engine
        try:
            if task.done():
                return None, None  # cancelled while held
            first = engine._live_backend().dispatch_shared(task, func, args, kwargs, shared)
        except BaseException as exc:  # noqa: BLE001 - the task carries it; the caller decides
            engine._submit_failed += 1
            if isinstance(exc, QueueFullError):
                engine._queue_full += 1
            engine.finish(task, False, exc, TaskStatus.FAILED)
            return exc, None
        if first is None and engine.monitor._listeners:
            engine.monitor.emit("submitted", task)
        return None, first

    def lookup(self, task_id: str) -> TaskResult:
        return self._engine.get_task_result(task_id)

    def schedule_store(self) -> Any:
        maker = getattr(self._engine._backend, "schedule_store", None)
        return maker() if maker is not None else None


def _run_chunk(fn: Callable, calls: list) -> list:
    return [fn(*c) for c in calls]


def _result_or_cancel(task: TaskResult, timeout: Optional[float]) -> Any:
    """map()'s wait for one task; a task left behind by a timeout is cancelled."""
    try:
        return task.wait(timeout)
    finally:
        task.cancel()


def _forget_fn_info(cache: dict, key: int, ref: Any) -> None:
    """A cached task function died: drop its entry (unless the id was reused meanwhile)."""
    entry = cache.get(key)
    if entry is not None and entry[0] is ref:
        del cache[key]


#: Engines alive in this process, for the fork hook.
_live_engines: "weakref.WeakSet[BackgroundTasks]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for engine in list(_live_engines):
        engine._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _finalize_orphan(engine: BackgroundTasks) -> "weakref.finalize":
    """Stop ``engine``'s backend when the engine is collected without shutdown() (issue 11.14)."""
    fin = weakref.finalize(engine, _close_orphan, engine._backend, engine._delays, os.getpid())
    fin.atexit = False  # at exit, the atexit hook shuts down a live engine
    return fin


def _close_orphan(backend: Any, delays: Any, pid: int) -> None:
    if os.getpid() != pid:
        return  # a forked child's copy: the backend is the parent's
    # The last reference may go in one of the backend's own threads (a
    # collection runs wherever it is triggered), which cannot join itself:
    # stop from a thread of our own. Not a daemon, so the interpreter waits
    # for it at exit and the segment is removed.
    threading.Thread(target=_stop_backend, args=(backend, delays),
                     name="czmp-orphan-shutdown").start()


def _stop_backend(backend: Any, delays: Any) -> None:
    log.info("engine dropped without shutdown(); stopping its workers")
    delays.drain()
    try:
        # Tasks in flight hold their engine: a collected engine has none, so
        # nothing is abandoned; the backend only needs the engine for them.
        backend.close(lambda task: None)
    except ReferenceError:
        pass
    except Exception:  # noqa: BLE001 - a finalizer must not raise
        log.exception("stopping a dropped engine failed")
    delays.stop()


def _register_atexit(engine: BackgroundTasks):
    ref = weakref.ref(engine)

    def _at_exit() -> None:
        eng = ref()
        if eng is not None:
            eng.shutdown(wait_for_completion=True, timeout=eng.options.shutdown_timeout)

    atexit.register(_at_exit)
    return _at_exit


def _ray_options(mode: str, address: Any, task_options: Any, max_in_flight: Any) -> tuple:
    """Validate mode="ray"'s options: the cluster address, options of every Ray task, and
    how many tasks are handed to Ray at once (default: max_workers).

    Raises:
        ValueError: one given in another mode, or out of range. TypeError: a wrong type.
    """
    if mode != "ray":
        if address is not None or task_options is not None or max_in_flight is not None:
            raise ValueError("address, ray_task_options and ray_max_in_flight apply to "
                             "mode='ray' only")
        return None, None, None
    _int_at_least("ray_max_in_flight", max_in_flight, 1, allow_none=True, most=MAX_QUEUE_SIZE)
    if address is not None and not isinstance(address, str):
        raise TypeError(f"address must be a str ('local', 'auto', 'host:port' or "
                        f"'ray://host:port'), not {type(address).__name__}")
    if task_options is not None and not isinstance(task_options, dict):
        raise TypeError(f"ray_task_options must be a dict, not {type(task_options).__name__}")
    return address or "local", dict(task_options or {}), max_in_flight


def _int_at_least(name: str, value: Any, least: int, allow_none: bool = False,
                  most: Optional[int] = None):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < least:
        raise ValueError(f"{name} must be >= {least}, not {value}")
    if most is not None and value > most:
        raise ValueError(f"{name} must be <= {most:,}, not {_short(value)}")
    return value


def _non_negative(name: str, value: Any, most: Optional[float] = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if value != value:  # NaN compares false with everything: it would pass every check
        raise ValueError(f"{name} must be a number, not NaN")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, not {value}")
    if most is not None and value > most:
        raise ValueError(f"{name} must be <= {most:,} s, not {_short(value)}")
    return float(value)


def _short(value: Any) -> str:
    """A number for an error message: 10**30 must not print 31 digits."""
    text = repr(value)
    return text if len(text) <= 20 else f"{float(value):.3g}"
