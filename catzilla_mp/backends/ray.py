"""Ray mode: the same task API on a Ray cluster (``mode="ray"``, issue 16).

Ray runs any cloudpickled callable on a cluster, kills a running task
(``ray.cancel(force=True)``) and replaces dead workers; it has no
priorities, per-task timeouts, back-off retries or delays. This backend adds
those on the app side and hands Ray one attempt at a time:

    app threads                          | collector thread           | Ray cluster
                                         |  ("czmp-ray-collector")    |
    add_task ─► dispatch: pickle call    |                            |
      (SerializationError here), take a  |                            |
      queue place (queue_size)           |                            |
         │ delay_ms / back-off:          |                            |
         │   parked on the delay thread  |                            |
         ▼                               |                            |
    heap[priority] (client side) ─feed─► slot free? .remote(_attempt) ┼─► a Ray worker: unpickle,
         at most max_workers in flight   |   (a slot per Ray task)    |   fn(*args) → (flags, bytes)
                                         |                            |
    TaskResult ◄─ host.finish ◄───────── outcome queue ◄── ObjectRef future done (Ray's thread)
                 or host.attempt_failed → parked (host.backoff_s)      |
    delay thread: a task's timeout ─► outcome queue ─► ray.cancel(ref, force=True): the worker dies

Actors:
  * Submitters pickle the call (standard pickle, cloudpickle fallback: the
    process backend's rules) and take a queue place; a full engine waits
    ``queue_full_timeout`` then raises QueueFullError. A task goes to Ray at
    once when a slot is free and nothing of its priority or higher waits;
    otherwise it waits in the heap. Priorities are honoured among the tasks
    not yet handed to Ray; the number in flight (``max_workers``, default:
    this machine's CPUs) is what Ray sees, so keep it near the cluster's CPUs.
  * The collector thread settles every attempt: outcomes (put on its queue
    by the done-callback of each ObjectRef's future), timeouts and forced
    cancels (put there by the delay thread and TaskResult.cancel). It is the
    only thread that frees a slot, so an attempt is settled exactly once:
    each slot carries a token, bumped when the slot is freed, and an event of
    an older token is stale.
  * The delay thread (the lifecycle's) releases delayed and backing-off
    tasks into the heap and fires timeouts.

What cannot hold on Ray (docs/scale-out.md): RUNNING means "handed to Ray"
(started_at is that moment; a task may still wait in Ray's own queue, and
its timeout runs from then); report_progress() is not seen live, only the
last report comes back with the outcome; memory_limit_mb is refused
(process mode only); a timeout kills the Ray worker at once (no grace for
an in-task TaskTimeoutError).

The connection is one per process (Ray's rule): engines of one process
share it (``_Connection``), and the last engine to close it shuts Ray down
if catzilla_mp started or joined it; a Ray the application initialised
itself is used as it is and left running.
"""
from __future__ import annotations

import heapq
import logging
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Optional

try:
    import ray
    import ray.exceptions as ray_errors
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess without ray
    raise ImportError(
        "mode='ray' needs Ray: install the extra with  pip install 'catzilla_mp[ray]'  "
        f"(import failed: {_exc})") from _exc

from .. import compat, compat_worker, progress, serialization
from ..errors import (
    EngineClosedError, QueueFullError, TaskError, TaskTimeoutError, WorkerCrashedError)
from ..records import TaskStatus
from ..results import TaskResult, cancelled_error
from .waiting_room import WaitingRoom

if TYPE_CHECKING:
    from ..lifecycle.host import TaskHost

log = logging.getLogger("catzilla_mp")

#: Function pickles kept per backend, keyed by the function's id (weakly).
FN_CACHE = 1024
#: Functions unpickled per Ray worker process, keyed by their pickle.
WORKER_FN_CACHE = 256
#: What address="local" passes to ray.init besides num_cpus and a temp dir:
#: no dashboard (a web server per engine is not ours to start), Ray's logging
#: left to the application.
LOCAL_INIT = dict(include_dashboard=False, configure_logging=False)
#: Ray task options every attempt gets: Ray must not retry on its own (the
#: lifecycle decides retries, with back-off) and one CPU per attempt.
TASK_OPTIONS = dict(max_retries=0, retry_exceptions=False, num_cpus=1)
#: Ray errors that mean the worker (or its node) running the attempt died.
CRASHES = (ray_errors.WorkerCrashedError, ray_errors.NodeDiedError,
           ray_errors.LocalRayletDiedError, ray_errors.OutOfMemoryError)

#: How long a local Ray's processes get to exit after ray.shutdown() before they are killed.
LOCAL_EXIT_WAIT_S = 10.0

_STOP = object()
_TICK = ("tick",)  # wakes the collector to look at the deadlines again


# -- the connection (one per process) ------------------------------------------------

class _Connection:
    """This process's Ray connection as catzilla_mp uses it: who made it, who uses it."""

    def __init__(self, address: str, owned: bool, temp_dir: Optional[str]) -> None:
        self.address = address
        self.owned = owned          # we called ray.init: the last user calls ray.shutdown
        self.temp_dir = temp_dir    # address="local": Ray's session files, removed at the end
        self.users = 0
        self.procs: list = []       # address="local": the processes ray.init started here


_conn_lock = threading.Lock()
_conn: Optional[_Connection] = None


def connect(address: Optional[str] = None, *, num_cpus: Optional[int] = None) -> str:
    """Take a use of this process's Ray connection, making it if needed.

    Args:
        address: "local" (None too) starts a Ray of this process, with a
            temporary directory of its own: it never joins a cluster already
            running on the host (a plain ray.init() would). "auto", "host:port"
            or "ray://host:port" join a running cluster (token authentication:
            RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, as Ray reads them).
        num_cpus: the local Ray's CPUs (address="local" only).
    Returns:
        The address in use.
    Raises:
        ValueError: Ray is connected to another address already (one per process).
        ConnectionError and Ray's errors: the cluster could not be reached.
    """
    global _conn
    address = address or "local"
    with _conn_lock:
        conn = _conn
        if conn is not None and not ray.is_initialized():
            conn = _conn = None  # someone called ray.shutdown() behind our back
        if conn is None:
            if ray.is_initialized():
                conn = _Connection("existing", False, None)  # the application's own
            elif address == "local":
                temp_dir = tempfile.mkdtemp(prefix="czmp-ray-")
                before = _children()
                try:
                    ray.init(address="local", num_cpus=num_cpus, _temp_dir=temp_dir,
                             runtime_env=_local_runtime_env(), **LOCAL_INIT)
                except BaseException:
                    _reap([p for pid, p in _children().items() if pid not in before], temp_dir)
                    raise
                conn = _Connection("local", True, temp_dir)
                conn.procs = [p for pid, p in _children().items() if pid not in before]
            else:
                ray.init(address=address, configure_logging=False)
                conn = _Connection(address, True, None)
            _conn = conn
        elif conn.address not in ("existing", address):
            raise ValueError(f"Ray is connected to {conn.address!r} in this process already; "
                             f"one process joins one Ray (asked for {address!r})")
        conn.users += 1
        return conn.address


def _local_runtime_env() -> dict:
    """The local Ray's workers see this process's sys.path, as process mode's workers do
    (Ray gives them only the working directory): task functions of the app's
    modules import there as they do here."""
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}}


def disconnect() -> None:
    """Give back a use of the connection; the last one shuts down a Ray we made or joined."""
    global _conn
    with _conn_lock:
        conn = _conn
        if conn is None:
            return
        conn.users -= 1
        if conn.users > 0:
            return
        _conn = None
        if conn.owned and ray.is_initialized():
            ray.shutdown()
        if conn.temp_dir:
            _reap(conn.procs, conn.temp_dir)


def _children() -> dict:
    import psutil

    try:
        return {p.pid: p for p in psutil.Process().children()}
    except psutil.Error:
        return {}


def _reap(procs: list, temp_dir: str) -> None:
    """After a local Ray's shutdown: wait for its processes (ray.shutdown returns before
    they are gone, and a late one would write into the directory again), then remove it."""
    import psutil

    procs = list(procs.values()) if isinstance(procs, dict) else list(procs)
    _, alive = psutil.wait_procs(procs, timeout=LOCAL_EXIT_WAIT_S)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=LOCAL_EXIT_WAIT_S)
    shutil.rmtree(temp_dir, ignore_errors=True)


# -- the worker side (runs in a Ray worker process) -----------------------------------

_worker_fns: dict[bytes, Callable] = {}
_worker_inits: dict[str, Optional[BaseException]] = {}


def run_attempt(fn_bytes: bytes, call: bytes, extras: Optional[dict]) -> tuple:
    """One attempt in a Ray worker: (flags, outcome bytes, exec ns, last progress, measured).

    Never raises for the task's sake: the task's exception travels as an
    outcome (serialization.dumps_exception, remote traceback included), so
    Ray neither retries it nor wraps it in a RayTaskError.
    """
    last: list = [None]
    measured: dict[str, Any] = {}
    progress.set_thread_sink(lambda f, m: last.__setitem__(0, (f, m)))
    t0 = time.perf_counter_ns()
    try:
        fn = _worker_fns.get(fn_bytes)
        if fn is None:
            fn = serialization.loads_function(fn_bytes)
            if len(_worker_fns) >= WORKER_FN_CACHE:
                _worker_fns.clear()
            _worker_fns[fn_bytes] = fn
        args, kwargs = serialization.loads_call(call)[:2]
        run: Callable[[], Any] = lambda: fn(*args, **kwargs)  # noqa: E731
        if extras:
            packed = extras.get("init")
            if packed:
                if packed not in _worker_inits:
                    _worker_inits[packed] = compat_worker.run_initializer({"init": packed})
                err = _worker_inits[packed]
                if err is not None:
                    raise err
            if extras.get("prof"):
                run = compat_worker.profiled(run, measured)
            if extras.get("ctx"):
                run = compat_worker.in_context(run, extras["ctx"])
        flags, data = serialization.dumps_result(run())
    except BaseException as exc:  # noqa: BLE001 - the task's failure is its outcome
        flags, data = serialization.dumps_exception(exc)
    finally:
        progress.set_thread_sink(None)
    if isinstance(data, serialization.Frame):
        data = b"".join(bytes(p) if not isinstance(p, bytes) else p for p in data.parts)
    return flags, data, time.perf_counter_ns() - t0, last[0], measured or None


# -- the app side -------------------------------------------------------------------------

class _Slot:
    """One Ray task in flight, and what monitor.py reads of a "worker" (pid 0: not ours)."""

    __slots__ = ("index", "pid", "task", "ref", "token", "deadline", "t0", "busy_ns",
                 "tasks_done", "tasks_failed", "current_slot", "current")

    def __init__(self, index: int) -> None:
        self.index = index
        self.pid = 0
        self.task: Optional[TaskResult] = None
        self.ref: Any = None
        self.token = 0
        self.deadline = 0.0     # time.monotonic() past which the attempt times out; 0: none
        self.t0 = 0
        self.busy_ns = 0
        self.tasks_done = 0
        self.tasks_failed = 0
        self.current_slot = 0   # truthy while busy (monitor.py, observability)
        self.current: Optional[TaskResult] = None


class RayBackend:
    """The Backend protocol (backends/base.py) over Ray tasks; see the module docstring."""

    def __init__(self, host: "TaskHost") -> None:
        self.host = host
        o = host.options
        self.address = connect(o.address, num_cpus=o.max_workers)
        try:
            self._remote = ray.remote(run_attempt).options(
                **{**TASK_OPTIONS, **(o.ray_task_options or {})})
        except BaseException:
            disconnect()
            raise
        self._init = (compat.pack_initializer(o.initializer, o.initargs)
                      if o.initializer is not None else None)
        # tasks not yet handed to Ray, and the parked ones; a push starts what fits
        self._room = WaitingRoom(host, on_push=self._start_waiting)
        self._cond, self._heap = self._room.cond, self._room.heap
        self._capacity = o.queue_size
        self._in_use = 0
        self._running = True
        self._slots = [_Slot(i) for i in range(o.ray_max_in_flight or o.max_workers)]
        self._free = list(reversed(self._slots))
        self._fns: dict[int, tuple[Any, bytes]] = {}
        self._events: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._next_deadline = float("inf")  # the collector's next wake-up for a timeout
        self._collector = threading.Thread(target=self._collect_loop, name="czmp-ray-collector",
                                           daemon=True)
        self._collector.start()

    # -- submit -----------------------------------------------------------------

    def dispatch(self, task: TaskResult, fn: Callable, args: tuple, kwargs: dict) -> None:
        fn_bytes = self._fn_bytes(fn)
        call = serialization.dumps_call(args, kwargs)  # SerializationError: nothing held
        if isinstance(call, serialization.Frame):
            call = b"".join(bytes(p) if not isinstance(p, bytes) else p for p in call.parts)
        extras = task.wextras
        if self._init is not None:
            extras = dict(extras or {}, init=self._init)
        self._reserve()
        task.fn = None
        task.payload = (fn_bytes, call, extras)
        if task.delay_ms:
            self._room.park(task, task.delay_ms / 1000.0)
        else:
            self._room.push(task)

    def dispatch_many(self, tasks: list[TaskResult], fn: Callable, calls: list[tuple],
                      done: list[int]) -> None:
        for task, args in zip(tasks, calls):
            self.dispatch(task, fn, args, {})
            done[0] += 1

    def _fn_bytes(self, fn: Callable) -> bytes:
        entry = self._fns.get(id(fn))
        if entry is not None and entry[0]() is fn:
            return entry[1]
        data = serialization.dumps_function(fn)
        try:
            ref = weakref.ref(fn)
        except TypeError:
            return data  # a builtin or a bound method: pickled each time
        if len(self._fns) >= FN_CACHE:
            self._fns.clear()
        self._fns[id(fn)] = (ref, data)
        return data

    def _reserve(self) -> None:
        timeout = self.host.queue_wait_s()
        with self._cond:
            if not self._cond.wait_for(lambda: self._in_use < self._capacity or not self._running,
                                       timeout):
                raise QueueFullError(f"all {self._capacity} task places stayed in use for "
                                     f"{timeout:g} s (queue_size); the task was not queued")
            if not self._running:
                raise EngineClosedError("the engine is shut down; it takes no new tasks")
            self._in_use += 1

    def _start_waiting(self) -> None:
        """Hand the most urgent waiting tasks to Ray, as many as there are free slots."""
        with self._cond:
            starts = self._take_locked()
        self._start(starts)

    def _take_locked(self) -> list[tuple[_Slot, TaskResult, int]]:
        """Pair free slots with the most urgent waiting tasks; the caller starts them."""
        starts = []
        while self._heap and self._free and self._running:
            _, _, task = heapq.heappop(self._heap)
            slot = self._free.pop()
            slot.task = slot.current = task
            slot.current_slot = 1
            slot.t0 = time.perf_counter_ns()
            slot.deadline = (time.monotonic() + task.timeout_ms / 1000.0) if task.timeout_ms else 0.0
            if slot.deadline and slot.deadline < self._next_deadline:
                self._events.put(_TICK)  # the collector sleeps longer than that: wake it
            task.slot = slot.index
            # the token is taken here, under the lock: a forced cancel or a
            # timeout may settle the attempt before _start hands it to Ray
            starts.append((slot, task, slot.token))
        return starts

    def _start(self, starts: list[tuple[_Slot, TaskResult, int]]) -> None:
        host = self.host
        for slot, task, token in starts:
            payload = task.payload
            if payload is None:
                continue  # settled (cancelled by force) before it was handed over
            fn_bytes, call, extras = payload
            with host.lock:
                if not task.done():
                    task.status = TaskStatus.RUNNING
                    task.started_at = time.time()
                    task.worker_id = slot.index
                    task.progress_value = None
            try:
                ref = self._remote.remote(fn_bytes, call, extras)
            except BaseException as exc:  # noqa: BLE001 - Ray refused it: the task fails
                err = TaskError(f"Ray did not take task {task.task_id}: {exc!r}")
                err.__cause__ = exc
                self._events.put(("failed", slot, token, err))
                continue
            with self._cond:
                current = slot.token == token
                if current:
                    slot.ref = ref
            if not current:
                # settled while being handed over (a forced cancel, a timeout,
                # close): the slot may be another attempt's already; stop this one
                _kill(ref)
                continue
            # _on_completed, not ref.future(): a concurrent Future per task adds
            # a lock and a condition, and the value is all the collector needs
            ref._on_completed(lambda value, s=slot, t=token: self._events.put(("done", s, t, value)))

    def cancel(self, task: TaskResult) -> bool:
        with self._cond:
            if not self._room.withdraw_locked(task):
                return False  # done, or handed to Ray already: only terminate() stops it
            self._in_use -= 1
            self._cond.notify_all()
        task.payload = None
        return True

    def terminate(self, task: TaskResult) -> bool:
        with self._cond:
            idx = task.slot
            if idx < 0 or task.done():
                return False
            slot = self._slots[idx]
            if slot.task is not task:
                return False
            token = slot.token
        self._events.put(("terminate", slot, token))
        return True

    # -- the collector ------------------------------------------------------------------

    def _collect_loop(self) -> None:
        try:
            events = self._events
            while True:
                wait = self._time_out_overdue()
                try:
                    event = events.get(timeout=wait)
                except queue.Empty:
                    event = None
                # drain what arrived meanwhile, then refill the free slots in one go
                while event is not None:
                    if event is _STOP:
                        return
                    if event is not _TICK:
                        self._handle(event)
                    try:
                        event = events.get_nowait()
                    except queue.Empty:
                        event = None  # an idle collector must not keep the last task alive
                self._refill()
        except BaseException as exc:  # noqa: BLE001 - the engine is broken: waiters must know
            self.host.thread_died(threading.current_thread().name, exc)
            raise

    def _time_out_overdue(self) -> Optional[float]:
        """Queue a timeout for each attempt past its deadline; seconds to the next one (None: none).

        Deadlines live in the slots and the collector watches them itself: a
        timer per task on the delay thread would wake that thread (and take
        the GIL) twice per task for the 30 s default that almost never fires.
        """
        now = time.monotonic()
        nearest = float("inf")
        overdue = []
        with self._cond:
            for slot in self._slots:
                d = slot.deadline
                if d and slot.task is not None:
                    if d <= now:
                        overdue.append((slot, slot.token))
                        slot.deadline = 0.0
                    elif d < nearest:
                        nearest = d
            self._next_deadline = nearest
        for slot, token in overdue:
            self._events.put(("timeout", slot, token))
        if overdue:
            return 0.0
        return None if nearest == float("inf") else max(0.0, nearest - now)

    def _release(self, slot: _Slot, token: int) -> Optional[TaskResult]:
        """Free ``slot`` if its attempt ``token`` is still current; the task it ran, or None."""
        with self._cond:
            if slot.token != token or slot.task is None:
                return None
            task = slot.task
            slot.token += 1
            slot.task = slot.current = slot.ref = None
            slot.current_slot = 0
            slot.busy_ns += time.perf_counter_ns() - slot.t0
            slot.deadline = 0.0
            task.slot = -1
            self._free.append(slot)
        return task

    def _handle(self, event: tuple) -> None:
        kind, slot, token = event[0], event[1], event[2]
        ref = slot.ref
        task = self._release(slot, token)
        if task is None:
            return  # settled already (a timeout or a forced cancel won the race)
        if kind == "done":
            ok, value = self._outcome(task, event[3])
        elif kind == "timeout":
            _kill(ref)
            ok, value = False, TaskTimeoutError(
                f"task {task.task_id} ran past its timeout of {task.timeout_ms} ms; "
                "its Ray worker was killed (ray.cancel(force=True))")
        elif kind == "terminate":
            _kill(ref)
            self._unreserve(task)
            self.host.finish(task, False, cancelled_error(task), TaskStatus.CANCELLED)
            return
        else:  # "failed": Ray refused the submission
            ok, value = False, event[3]
        slot.tasks_done += 1
        slot.tasks_failed += not ok
        self._settle(task, ok, value)

    def _outcome(self, task: TaskResult, value: Any) -> tuple[bool, Any]:
        try:
            if isinstance(value, BaseException):
                raise value  # Ray hands its errors over as the value
            flags, data, exec_ns, last, measured = value
        except CRASHES as exc:
            err = WorkerCrashedError(f"the Ray worker running task {task.task_id} died: "
                                     f"{type(exc).__name__}: {exc}")
            err.__cause__ = exc
            return False, err
        except ray_errors.TaskCancelledError as exc:  # cancelled outside catzilla_mp
            err = TaskError(f"task {task.task_id} was cancelled in Ray: {exc}")
            err.__cause__ = exc
            return False, err
        except BaseException as exc:  # noqa: BLE001 - any other Ray failure fails the attempt
            err = TaskError(f"Ray failed task {task.task_id}: {type(exc).__name__}: {exc}")
            err.__cause__ = exc
            return False, err
        task.exec_ms = exec_ns / 1e6
        task.result_bytes = len(data)
        if last is not None:
            task.progress_value = last
        if measured:
            compat.apply_extras(task, measured)
        return serialization.loads_outcome(flags, data)

    def _refill(self) -> None:
        with self._cond:
            starts = self._take_locked()
        self._start(starts)

    def _settle(self, task: TaskResult, ok: bool, value: Any) -> None:
        host = self.host
        if not ok and host.attempt_failed(task, value):
            self._room.park(task, host.backoff_s(task.attempt, task))
            return
        self._unreserve(task)
        host.finish(task, ok, value, TaskStatus.COMPLETED if ok else TaskStatus.FAILED)

    def _unreserve(self, task: TaskResult) -> None:
        task.payload = None  # let the arguments go
        with self._cond:
            self._in_use -= 1
            self._cond.notify_all()

    # -- observation ------------------------------------------------------------------

    def help_collect(self, task: TaskResult, timeout) -> None:
        pass  # the collector thread settles every attempt

    def observe(self, task: TaskResult) -> None:
        pass  # the status is written when the task is handed to Ray

    def live_progress(self, task: TaskResult):
        return task.progress_value  # the last report comes back with the outcome only

    def is_running(self, task: TaskResult) -> bool:
        return task.slot >= 0 and not task.done()

    def queue_depths(self) -> list[int]:
        with self._cond:
            return self._room.depths_locked()

    def worker_records(self):
        return [(s, s) for s in self._slots]

    def in_flight_memory(self) -> tuple[int, int]:
        return 0, 0

    # -- shutdown -----------------------------------------------------------------

    def close(self, abandon: Callable[[TaskResult], None]) -> None:
        with self._cond:
            if not self._running and not self._collector.is_alive():
                return
            self._running = False
            queued = [e[2] for e in self._heap]
            self._heap.clear()
            in_flight = [(s, s.token, s.ref) for s in self._slots if s.task is not None]
            self._cond.notify_all()
        self._events.put(_STOP)
        if self._collector is not threading.current_thread():
            self._collector.join(timeout=5.0)
        for task in queued:
            abandon(task)
        for slot, token, ref in in_flight:
            task = self._release(slot, token)
            _kill(ref)
            if task is not None:
                abandon(task)
        try:
            unfinished = self.host.unfinished()
        except ReferenceError:
            unfinished = []  # an engine dropped without shutdown(): nothing to abandon
        for task in unfinished:
            task.parked = False
            abandon(task)
        disconnect()


def _kill(ref: Any) -> None:
    """Stop the Ray task of ``ref`` by force (its worker process is killed), if it runs."""
    if ref is None:
        return
    try:
        ray.cancel(ref, force=True)
    except Exception:  # noqa: BLE001 - finished already, or Ray is gone
        log.debug("ray.cancel(force=True) failed", exc_info=True)
