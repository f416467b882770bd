"""Process mode: tasks go through the shared-memory segment to worker processes.

This module is the app-side half of the hot path (submit and collect); the
worker side is worker.py (started as catzilla_mp.workers) and the process
management is supervisor.py; the lifecycle above is reached through the
TaskHost given to the constructor (lifecycle/host.py).

Slot ownership on the app side (besides the state word in shared memory):
  * a slot index is in ``_free`` xor owned by exactly one TaskResult
    (``_slot_task[i]``) from dispatch until _release();
  * a task waiting for a timer (delay or retry back-off) is "parked": its
    slot is HELD, and ``task.parked`` is truthy (its Timer, so that a cancel
    can drop the timer at once). Cancel and the timer both test-and-clear
    ``parked`` under ``_park_lock``, so exactly one wins.
  * every thread that uses the mapping is inside ``gate`` (MappingGate)
    while it does; close() unmaps only when none is.
"""
from __future__ import annotations

import collections
import itertools
import logging
import struct
import threading
import time
import types
from typing import TYPE_CHECKING, Any, Callable, Optional

from ... import _core, compat, serialization
from ..._core import holder_slot
from ..._native import ffi, lib
from ...compat_worker import MEMORY_EXIT_CODE
from ...errors import (EngineClosedError, MemoryLimitError, QueueFullError, SerializationError,
                     TaskCancelledError, TaskTimeoutError, WorkerCrashedError)
from .payloads import Payloads, external_bytes, plan_arena, remove_externals
from .supervisor import Supervisor, describe_exit
from ...records import TaskStatus
from ...results import TaskResult
from ...segment_janitor import new_segment_name, sweep_dead_segments

if TYPE_CHECKING:
    from ...lifecycle.host import TaskHost

log = logging.getLogger("catzilla_mp")

#: Function table entries. Functions beyond it (or not shareable) travel
#: with each task instead: slower, never wrong.
FUNCTION_TABLE_SIZE = 4096
#: Results taken per collector wake-up; bounds the latency of the first
#: result of a burst against the per-call cost of the C collect.
COLLECT_BATCH = 256
COLLECT_WAIT_NS = 1_000_000_000
#: Seconds the collector pauses between looks while close() stops the
#: workers: the segment's shutdown flag makes the C wait return at once, and
#: without a pause the collector spun a core (and the GIL) for the whole stop,
#: which the exiting workers needed (issue 18: shutdown after big payloads).
STOPPING_COLLECT_PAUSE_S = 0.001
#: Bytes of small results copied out per collect call.
OUTCOME_DATA_BYTES = COLLECT_BATCH * _core.INLINE_RESULT
#: czmp_outcome_t, as struct sees it (static_assert'ed at 56 bytes in internal.h).
_OUTCOME = struct.Struct("<QQQQIIIIII")
_NO_DATA = 0xFFFFFFFF
_OUTCOME_PROGRESS = serialization.OUTCOME_PROGRESS
_OUTCOME_EXTRAS = serialization.OUTCOME_EXTRAS
#: How long a thread in TaskResult.wait() polls for outcomes itself before it
#: blocks (help_collect), and how many it takes per call.
HELP_COLLECT_S = 0.002
HELP_COLLECT_BATCH = 64
#: Tasks pushed per C call by add_tasks()/map().
SUBMIT_BATCH = 256
#: The timeout every worker applies when a task carries none of its own.
DEFAULT_TIMEOUT_MS = 30000
#: A push whose ring stays full (each C call already waits ~2 ms for a
#: stalled consumer) is retried this long; then the task is given back and
#: fails with QueueFullError: it is never reported as queued when it is not
#: (issue 10.1, 20.12).
PUSH_RETRY_S = 1.0

_dumps_plain_call = serialization.dumps_plain_call
_HANDLE_EXTERNAL = _core.HANDLE_EXTERNAL
#: External payload segments are whole pages (for memory_usage_mb).
EXTERNAL_PAGE = 4096
_INLINE_ARGS = _core.INLINE_ARGS
_INLINE_HANDLE = _core.HANDLE_INLINE << 56
_COMPLETED = TaskStatus.COMPLETED
_RUNNABLE = (TaskStatus.PENDING, TaskStatus.RUNNING)
_SLOT_HELD = _core.SLOT_HELD
_SLOT_FREE = _core.SLOT_FREE
#: czmp_results_collect_outcomes_ex: release succeeded slots whose result it copied
_RELEASE_OK = lib.CZMP_COLLECT_RELEASE_OK
#: czmp_tasks_feed's chunk: [u32 len][u32 flags][len bytes of the parent's outcome]
_FED_HEADER = struct.Struct("<II")
#: A parent's slot states in which its worker may still feed a dependant:
#: queued, running, held for a retry (its next run feeds), or itself a
#: chain step waiting for its own parent (chain(a, b, c): c on b).
_FEEDABLE = (_core.SLOT_QUEUED, _core.SLOT_RUNNING, _core.SLOT_HELD, _core.SLOT_WAITING,
             _core.SLOT_FEEDING)


#: Bytes of the pool the pre-fault thread backs per C call: small enough that
#: close() waits for at most one step (~2 ms), large enough that the calls
#: cost nothing next to the page allocations.
PREFAULT_STEP = 4 << 20
#: Seconds the pre-fault thread waits before it backs the pool: the workers'
#: start-up (and the first tasks) come first. At normal priority, not niced:
#: on a busy host a nice-19 thread was still backing the pool 15 s later, and
#: every large payload until then paid for its pages itself.
PREFAULT_DELAY_S = 0.5
#: While tasks are queued or running, the pre-fault thread waits this long and
#: looks again. Backing a 500 MiB pool costs ~0.35 s of a core; taken from the
#: running tasks and the collector it delayed CRITICAL results by up to ~50 ms
#: (perf sched: the collector runnable but off-CPU for 5 ms slices; bench
#: mixed load, issue 18). A busy pool backs its chunks on first use anyway.
PREFAULT_BUSY_PAUSE_S = 0.02
#: How long close() waits for the collector thread to end.
COLLECTOR_JOIN_S = 5.0
#: How long close() waits for threads still inside the mapping (a listener
#: that blocks the collector, a waiter in help_collect) before it unlinks the
#: segment and leaves the unmapping to the last of them.
CLOSE_DRAIN_S = 2.0


class MappingGate:
    """Counts the threads using the mapping, so that it is unmapped only when none is.

    Every way into the segment from an app thread (submit, cancel, collect,
    observe, the supervisor's tick) enters the gate; close() shuts it and
    unmaps once the last thread is out: a thread still inside (say the
    collector, held up by a slow listener) unmaps on its way out instead of
    touching freed memory (issue 20.1, 10.10). Entering never blocks.
    """

    # No lock on the way in and out: submitting passes the gate for every task,
    # and a lock the collector also takes would be contended, handing the GIL
    # (and a cross-CPU wake-up) to the other thread each time -- measured at a
    # third of the submission rate. Instead each thread inside holds one item
    # of ``inside``, a list: append and pop are single operations under the
    # GIL, and enter() appends BEFORE it reads ``closed`` while close() sets
    # ``closed`` BEFORE it reads the list, so one of the two always sees the
    # other (the Dekker pattern; the GIL orders them). Only closing, and the
    # last exit after it, take the lock.

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        #: one item per thread inside (read by ProcessBackend.dispatch, which
        #: writes enter/exit out for speed)
        self.inside: list[None] = []
        #: set once by close(); never cleared
        self.closed = False
        self._on_empty: Optional[Callable[[], None]] = None

    def enter(self) -> bool:
        """True if the mapping may be used until the matching exit(); False once closed."""
        self.inside.append(None)
        if self.closed:
            self.exit()
            return False
        return True

    def exit(self) -> None:
        self.inside.pop()
        if self.closed:
            self.after_exit()

    def after_exit(self) -> None:
        """exit()'s slow half, once the gate is closed: the last one out runs close()'s work."""
        if self.inside:
            return
        with self._cond:
            self._cond.notify_all()
            fn, self._on_empty = self._on_empty, None
        if fn is not None:
            fn()

    def close(self, timeout: float) -> bool:
        """Refuse new entries; wait up to ``timeout`` s for those inside. True if none is."""
        with self._cond:
            self.closed = True
            return self._cond.wait_for(lambda: not self.inside, timeout)

    def when_empty(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` now if nobody is inside, else when the last one leaves (after close())."""
        with self._cond:
            if self.inside:
                self._on_empty = fn
                fn = None
        if fn is not None:
            fn()
        elif not self.inside:
            # the last one left between our check and setting _on_empty, and
            # did not see it: run it here unless that exit took it already
            with self._cond:
                fn, self._on_empty = self._on_empty, None
            if fn is not None:
                fn()


class _OutcomeBatch:
    """Buffers one thread reuses for czmp_results_collect_outcomes."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.out = ffi.new("czmp_outcome_t[]", size)
        self.records = ffi.buffer(self.out)
        self.data = ffi.new("char[]", OUTCOME_DATA_BYTES)
        self.view = memoryview(ffi.buffer(self.data))
        self.busy = False


class FunctionTable:
    """Pickled functions in shared memory, so each crosses once per worker, not once per task."""

    def __init__(self, seg: _core.Segment, payloads: Payloads) -> None:
        self._seg = seg
        self._payloads = payloads
        self._ids: dict[Any, int] = {}
        #: function -> func_id of the functions in the table (read-only for others)
        self.registered = self._ids
        self._lock = threading.Lock()
        self._size = seg.header.nfuncs
        self._next = 0

    def lookup(self, fn: Callable) -> tuple[int, Optional[bytes]]:
        """(func_id, None) for a registered function, else (0, its pickled bytes)."""
        try:
            fid = self._ids.get(fn)
        except TypeError:  # an unhashable callable object
            return 0, serialization.dumps_function(fn)
        if fid is not None:
            return fid, None
        if not _shareable(fn):
            return 0, serialization.dumps_function(fn)
        return self._register(fn)

    def _register(self, fn: Callable) -> tuple[int, Optional[bytes]]:
        data = serialization.dumps_function(fn)
        with self._lock:
            fid = self._ids.get(fn)
            if fid is not None:
                return fid, None
            if self._next >= self._size:
                return 0, data
            entry = self._seg.func(self._next)
            handle, n = self._payloads.write(data, ffi.NULL, 0, _core.HOLDER_APP)
            # published to workers by the QUEUED CAS of the first task naming it
            entry.handle, entry.len = handle, n
            self._next += 1
            self._ids[fn] = self._next
            return self._next, None


def _shareable(fn: Callable) -> bool:
    """A function whose pickle never changes: module-level, no closure, not a lambda."""
    if isinstance(fn, types.BuiltinFunctionType):
        return True
    if getattr(fn, "czmp_stable_pickle", False) is True:  # a native task (native_tasks)
        return True
    return (isinstance(fn, types.FunctionType) and fn.__closure__ is None
            and "<" not in fn.__qualname__)


class _WaitingStep:
    """dispatch_waiting's hold on a chain step stored WAITING (see there).

    A class, not closures: its repr names the task in logs.
    """

    __slots__ = ("backend", "task", "idx", "waiting")

    def __init__(self, backend: "ProcessBackend", task: TaskResult, idx: int, waiting: int) -> None:
        self.backend, self.task, self.idx, self.waiting = backend, task, idx, waiting

    def feed(self, value: Any) -> str:
        """The parent completed with ``value``: "worker" (its worker fed the step
        already), "app" (nobody had: fed here, in place, and queued) or "back"
        (it could not be fed in place: the slot is released, the caller queues
        the step with ``value`` the ordinary way)."""
        return self.backend._feed_waiting(self.task, self.idx, self.waiting, value)

    def take_back(self) -> bool:
        """The parent failed or the step is cancelled: True if the step is the
        caller's again (its slot released; never fed), False if a worker fed
        and queued it already."""
        return self.backend._take_back(self.task, self.idx, self.waiting)

    def __repr__(self) -> str:
        return f"<chain step {self.task.task_id} waiting in slot {self.idx}>"


class ProcessBackend:
    def __init__(self, host: "TaskHost") -> None:
        self.host = host
        o = host.options
        sweep_dead_segments()
        self.seg = _core.Segment.create(
            new_segment_name(), nslots=o.queue_size, nworkers=o.max_workers,
            nfuncs=FUNCTION_TABLE_SIZE, classes=plan_arena(o.memory_pool_mb << 20),
            populate=False)
        self.raw = self.seg.raw
        self.gate = MappingGate()
        # The pool's chunks are backed on first use (native/arena.c); with
        # populate=True this thread backs them ahead of need, a few MiB at a
        # time from PREFAULT_DELAY_S on, so it neither delays start-up (a
        # 500 MiB pool takes ~0.3 s of CPU) nor shutdown (_unmap stops it).
        self._prefault_stop = threading.Event()
        self._keep_mapped = False  # keep_mapped(): close() leaves the unmap to the engine
        self._prefault = threading.Thread(target=self._prefault_pool, name="czmp-prefault",
                                          daemon=True)
        try:
            self._init_state(o)
        except BaseException:
            self._destroy_segment()
            raise
        # Started after the collector and supervisor threads, not before: its
        # first madvise (the bookkeeping, ~20 MiB with 32k slots) holds the mm
        # lock that creating a thread waits for (start-up to the first result
        # took ~9 ms longer, issue 18).
        if o.populate:
            self._prefault.start()

    def _prefault_pool(self) -> None:
        """Back the pool's chunks ahead of need, PREFAULT_STEP bytes per C call."""
        cursor = ffi.new("uint64_t *")
        # the slot table and tags now (a crash's reap scans them all), the pool later
        lib.czmp_arena_prefault(self.raw, cursor, 0)
        if self._prefault_stop.wait(PREFAULT_DELAY_S):
            return
        while not self._prefault_stop.is_set():
            if self._tasks_in_flight():
                self._prefault_stop.wait(PREFAULT_BUSY_PAUSE_S)
                continue
            if lib.czmp_arena_prefault(self.raw, cursor, PREFAULT_STEP) != 1:
                return  # every chunk backed, or /dev/shm full (allocs then fail cleanly)

    def _tasks_in_flight(self) -> bool:
        """A task is queued or running now (read from the segment: rings and worker records)."""
        seg = self.seg
        if any(seg.queue_depths()):
            return True
        return any(seg.worker(i).current_slot for i in range(seg.layout.nworkers))

    def _init_state(self, o) -> None:
        self.payloads = Payloads(self.seg, o.max_payload_bytes,
                                 max_external_bytes=o.max_external_bytes, spares=True)
        self.functions = FunctionTable(self.seg, self.payloads)
        n = o.queue_size
        # the slot table is one array (czmp_slot: seg->slots + idx): pointer
        # arithmetic, ~3x faster than a C call per slot (~2 ms of start-up at 32k)
        first = lib.czmp_slot(self.raw, 0)
        self.slots = [first + i for i in range(n)]
        self._slot_task: list[Optional[TaskResult]] = [None] * n
        # (seq, task id) of each slot's previous task, for task_id_of_log
        self._slot_last: list[Optional[tuple[int, str]]] = [None] * n
        self._free = collections.deque(range(n - 1, -1, -1))
        self._free_cond = threading.Condition()
        self._free_waiters = 0
        self._park_lock = threading.Lock()
        # slot -> its WAITING state word, for the chain steps stored by
        # dispatch_waiting and not yet fed or taken back
        self._waiting: dict[int, int] = {}
        self._tls = threading.local()
        # CLOCK_MONOTONIC (the C side's clock) -> wall clock, for TaskStats
        self._wall_offset = time.time() - time.monotonic()
        self._running = True
        self._stopping = False  # close() began: the collector pauses between looks
        self._collector = threading.Thread(target=self._guarded_collect_loop,
                                           name="czmp-collector", daemon=True)
        self._collector.start()
        self.supervisor = Supervisor(self)

    # -- submit -----------------------------------------------------------

    def _enter_or_raise(self) -> None:
        if not self.gate.enter():
            raise EngineClosedError("the engine is shut down; it takes no new tasks")

    def dispatch(self, task: TaskResult, fn: Callable, args: tuple, kwargs: dict) -> None:
        # MappingGate.enter()/exit() written out: this is the submit hot path
        gate = self.gate
        inside = gate.inside
        inside.append(None)
        try:
            if gate.closed:
                raise EngineClosedError("the engine is shut down; it takes no new tasks")
            # a registered function with the default timeout and no extras (the
            # common case) is pickled by one short call: each Python call is
            # ~3% of this path
            try:
                func_id = self.functions.registered.get(fn)
            except TypeError:  # an unhashable callable object
                func_id = None
            if func_id is not None and task.timeout_ms == DEFAULT_TIMEOUT_MS and not task.wextras:
                data = _dumps_plain_call(args, kwargs)
            else:
                func_id, fn_bytes = self.functions.lookup(fn)
                timeout = None if task.timeout_ms == DEFAULT_TIMEOUT_MS else task.timeout_ms
                data = serialization.dumps_call(args, kwargs, timeout, fn_bytes, task.wextras)
            if len(data) > _INLINE_ARGS or task.delay_ms:
                return self._dispatch_stored(task, func_id, data)
            # the common case, in one C call: write the slot, queue it, wake a worker
            try:
                idx = self._free.pop()
            except IndexError:
                idx = self._take_slot()
            task.slot = idx
            self._slot_task[idx] = task
            rc = lib.czmp_tasks_submit_inline(self.raw, task.priority._value_, idx, func_id,
                                              task.seq, data, len(data))
            if rc != 1:  # args are written when the push is what failed: retry the push
                if rc < 0 or self._queue(task.priority._value_, [idx]) != 1:
                    self._not_queued(task, idx)
                    _core.check(rc, "submit task")
                    raise self._push_failed(1)
        finally:
            inside.pop()
            if gate.closed:
                gate.after_exit()

    def _dispatch_stored(self, task: TaskResult, func_id: int, data: Any) -> None:
        """A call that does not fit a slot, or waits for its delay first: stored, then queued or parked."""
        idx = self._store(task, func_id, data)
        if task.delay_ms:
            self._park(task, idx, task.delay_ms / 1000.0)
        elif not self._submit_one(task.priority.value, idx):
            self._not_queued(task, idx)
            raise self._push_failed(1)

    def dispatch_many(self, tasks: list[TaskResult], fn: Callable, calls: list[tuple],
                      done: list[int]) -> None:
        """Prepare and queue tasks in order, counting them in done[0] (so an error tells how many).

        The tasks share their function and options (add_tasks, map). Calls
        whose pickles fit a slot go SUBMIT_BATCH at a time through one C call
        (czmp_tasks_submit_inline_many); anything else one by one.
        """
        self._enter_or_raise()
        try:
            self._dispatch_many(tasks, fn, calls, done)
        finally:
            self.gate.exit()

    def _dispatch_many(self, tasks: list[TaskResult], fn: Callable, calls: list[tuple],
                       done: list[int]) -> None:
        func_id, fn_bytes = self.functions.lookup(fn)
        first = tasks[0]
        if (first.delay_ms or fn_bytes is not None or first.timeout_ms != DEFAULT_TIMEOUT_MS
                or first.wextras):
            return self._dispatch_each(tasks, fn, calls, done)
        dumps, dumps_many = serialization.dumps_call, serialization.dumps_calls
        start, n = 0, len(tasks)
        while start < n:
            # no more than the free slots: taking slots we cannot queue yet
            # while waiting for more would wait for ever on a small queue
            k = min(SUBMIT_BATCH, n - start, max(1, len(self._free)))
            some = calls[start:start + k]
            datas = dumps_many(some, _INLINE_ARGS)  # plain scalars: one tight loop
            if datas is None:
                datas = [dumps(args, {}) for args in some]
                if max(map(len, datas)) > _INLINE_ARGS or any(type(d) is not bytes for d in datas):
                    return self._dispatch_each(tasks[start:], fn, calls[start:], done)
            start += self._submit_inline_batch(tasks[start:start + k], func_id, datas, done)

    def _submit_inline_batch(self, tasks: list[TaskResult], func_id: int, datas: list[bytes],
                             done: list[int]) -> int:
        """Queue a prefix of a batch in one C call; returns its length (counted in done[0] too).

        Only the first slot is waited for: the others are the ones free now.
        A caller that held slots while it waited for more, as concurrent
        map()/add_tasks() callers on a small queue did, could hold all of
        them with nothing queued, each waiting for the others (issue 20.7).
        """
        idxs: list[int] = [self._take_slot()]
        free = self._free
        while len(idxs) < len(tasks):
            try:
                idxs.append(free.pop())
            except IndexError:
                break
        tasks, datas = tasks[:len(idxs)], datas[:len(idxs)]
        slot_task = self._slot_task
        for task, idx in zip(tasks, idxs):
            task.slot = idx
            slot_task[idx] = task
        offs = list(itertools.accumulate(map(len, datas), initial=0))[:-1]
        n = len(tasks)
        prio = tasks[0].priority._value_
        rc = lib.czmp_tasks_submit_inline_many(
            self.raw, prio, ffi.new("uint32_t[]", idxs), n, func_id,
            ffi.new("uint64_t[]", [t.seq for t in tasks]), b"".join(datas),
            ffi.new("uint32_t[]", offs), ffi.new("uint32_t[]", list(map(len, datas))))
        queued = max(rc, 0)
        if 0 <= queued < n and rc >= 0:
            # a prefix was queued and the rest written: push the rest again
            queued += self._queue(prio, idxs[queued:])
        done[0] += queued
        if queued < n:
            for task, idx in zip(tasks[queued:], idxs[queued:]):
                self._not_queued(task, idx)
            _core.check(rc, "submit tasks")
            raise self._push_failed(n - queued)
        return n

    def _dispatch_each(self, tasks: list[TaskResult], fn: Callable, calls: list[tuple],
                       done: list[int]) -> None:
        pending: dict[int, list[int]] = {}
        try:
            for task, args in zip(tasks, calls):
                if not self._free or len(pending.get(task.priority.value, ())) >= SUBMIT_BATCH:
                    self._submit_pending(pending)  # let workers start while we wait for slots
                idx = self._prepare(task, fn, args, {})
                done[0] += 1
                if task.delay_ms:
                    self._park(task, idx, task.delay_ms / 1000.0)
                else:
                    pending.setdefault(task.priority.value, []).append(idx)
        finally:
            self._submit_pending(pending)

    def _submit_pending(self, pending: dict[int, list[int]]) -> None:
        """Queue prepared slots; ones whose push cannot complete fail with QueueFullError."""
        lost = 0
        for prio, idxs in pending.items():
            if idxs:
                n = self._queue(prio, idxs)
                for idx in idxs[n:]:
                    task = self._slot_task[idx]
                    self._not_queued(task, idx)
                    self.host.finish(task, False, self._push_failed(1), TaskStatus.FAILED)
                lost += len(idxs) - n
                idxs.clear()
        if lost:
            raise self._push_failed(lost)

    def _prepare(self, task: TaskResult, fn: Callable, args: tuple, kwargs: dict) -> int:
        """Pickle the call into a free slot; the slot is the task's from here on."""
        func_id, fn_bytes = self.functions.lookup(fn)
        timeout = None if task.timeout_ms == DEFAULT_TIMEOUT_MS else task.timeout_ms
        return self._store(task, func_id, serialization.dumps_call(args, kwargs, timeout, fn_bytes,
                                                                   task.wextras))

    def _store(self, task: TaskResult, func_id: int, data: bytes) -> int:
        idx = self._take_slot()
        slot = self.slots[idx]
        try:
            handle, n = self.payloads.write(data, slot.args_inline, _INLINE_ARGS,
                                            holder_slot(idx))
        except BaseException:
            self._return_slot(idx)
            raise
        slot.args_handle = handle
        slot.args_len = n
        slot.func_id = func_id
        slot.task_id = task.seq
        task.slot = idx
        if handle >> 56 == _HANDLE_EXTERNAL:
            task.ext_args = handle
        self._slot_task[idx] = task
        return idx

    def _submit_one(self, prio: int, idx: int) -> bool:
        """Queue one prepared slot; False if its push could not complete (see _queue)."""
        buf = getattr(self._tls, "buf", None)
        if buf is None:
            buf = self._tls.buf = ffi.new("uint32_t[1]")
        buf[0] = idx
        rc = lib.czmp_tasks_submit(self.raw, prio, buf, 1)
        if rc == 1:
            return True
        _core.check(rc, "submit task")
        return self._queue(prio, [idx]) == 1

    def _queue(self, prio: int, idxs: list[int]) -> int:
        """Push written FREE/HELD slots on ring[prio], retrying a full ring for
        up to PUSH_RETRY_S; returns how many were queued (a prefix)."""
        done, pause, deadline = 0, 0.0005, time.monotonic() + PUSH_RETRY_S
        while done < len(idxs):
            rest = idxs[done:]
            n = _core.check(lib.czmp_tasks_submit(self.raw, prio, ffi.new("uint32_t[]", rest),
                                                  len(rest)), "submit tasks")
            done += n
            if done == len(idxs) or time.monotonic() > deadline:
                break
            if not n:
                time.sleep(pause)  # a consumer stalled in its ring cell: give it time
                pause = min(pause * 2, 0.02)
        return done

    def _not_queued(self, task: TaskResult, idx: int) -> None:
        """Give back the slot of a task whose push failed (it is FREE or HELD, written)."""
        st = lib.czmp_slot_state(self.raw, idx)
        if _core.state_kind(st) == _core.SLOT_FREE:
            # held first, so that the release frees the argument chunk it owns
            lib.czmp_slot_cas(self.raw, idx, st, _core.state_make(_core.state_gen(st), 0,
                                                                  _SLOT_HELD))
        self._release(task, idx)

    def _push_failed(self, n: int) -> QueueFullError:
        return QueueFullError(f"{n} task(s) could not be queued: the ring stayed full for "
                              f"{PUSH_RETRY_S:g} s (a worker stalled?); they were not queued")

    def _take_slot(self) -> int:
        try:
            return self._free.pop()
        except IndexError:
            pass
        timeout = self.host.queue_wait_s()  # 0 inside add_task_async
        deadline = time.monotonic() + timeout
        with self._free_cond:
            self._free_waiters += 1
            try:
                while True:
                    try:
                        return self._free.pop()
                    except IndexError:
                        if not self._running:
                            raise EngineClosedError("the engine shut down while the task "
                                                    "waited for a free slot; it was not "
                                                    "queued") from None
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise QueueFullError(
                                f"all {len(self.slots)} task slots stayed in use for "
                                f"{timeout:g} s (queue_size); the task was not queued") from None
                        self._free_cond.wait(left)
            finally:
                self._free_waiters -= 1

    def _return_slot(self, idx: int) -> None:
        task = self._slot_task[idx]
        if task is not None:
            # a worker's log record may reach the app after its task finished
            self._slot_last[idx] = (task.seq, task.task_id)
        self._slot_task[idx] = None
        self._free.append(idx)
        if self._free_waiters:
            with self._free_cond:
                self._free_cond.notify()

    # -- parking: delays and retry back-offs -------------------------------

    def _park(self, task: TaskResult, idx: int, delay_s: float) -> None:
        st = lib.czmp_slot_state(self.raw, idx)
        if _core.state_kind(st) != _SLOT_HELD:
            lib.czmp_slot_cas(self.raw, idx, st, _core.state_make(_core.state_gen(st), 0, _SLOT_HELD))
        # task.parked holds the timer (truthy): a cancel drops it at once, so
        # the timer does not keep the task alive until it is due (issue 20.10)
        task.parked = True
        timer = self.host.schedule(delay_s, lambda: self._unpark(task))
        with self._park_lock:
            if task.parked is True:
                task.parked = timer

    def _unpark(self, task: TaskResult) -> None:
        if not self.gate.enter():
            return  # closed meanwhile: close() abandons the task
        try:
            with self._park_lock:
                if not task.parked:
                    return  # cancelled meanwhile
                task.parked = False
            task.status = TaskStatus.PENDING
            if not self._submit_one(task.priority.value, task.slot):
                # the ring stayed full: try again soon rather than strand the task
                self._park(task, task.slot, 0.05)
        finally:
            self.gate.exit()

    def cancel(self, task: TaskResult) -> bool:
        """Take back a task that has not started; True if it will never run."""
        if not self.gate.enter():
            return False
        try:
            return self._cancel(task)
        finally:
            self.gate.exit()

    def _cancel(self, task: TaskResult) -> bool:
        idx = task.slot
        if idx < 0 or task.done():
            return False
        with self._park_lock:
            parked = task.parked
            task.parked = False
        if parked:
            if parked is not True:
                self.host.unschedule(parked)
            self._release(task, idx)
            return True
        st = lib.czmp_slot_state(self.raw, idx)
        if _core.state_kind(st) != _core.SLOT_QUEUED or self._slot_task[idx] is not task:
            return False
        # CAS against the workers' take: exactly one of us gets it
        if lib.czmp_slot_release(self.raw, idx, st) != 0:
            return False
        self._unslot(task, idx)
        return True

    # -- chains: a dependant fed worker-to-worker (issue 15) ----------------

    def dispatch_waiting(self, task: TaskResult, fn: Callable, args: tuple, kwargs: dict,
                         parent: TaskResult) -> Optional["_WaitingStep"]:
        """Store ``task``'s call WAITING for ``parent``'s result, fed by the parent's worker.

        The call is pickled into a slot as any task's, but the slot is made
        WAITING instead of QUEUED and the parent's slot gets a continuation
        naming it (czmp_slot_set_next): the worker that finishes the parent
        successfully copies its outcome into a chunk of this slot and queues
        it (czmp_tasks_feed), and the worker that runs it passes that value
        as its first argument. No app thread takes part in the hand-off.

        Args:
            parent: the task whose result comes first in ``task``'s arguments.
        Returns:
            A _WaitingStep: ``feed(value)`` once the parent completed,
            ``take_back()`` if it failed or the task is cancelled. Once a
            worker fed the task it runs, retries, times out and is collected
            as any task. None if the direct path is not possible here (the
            task waits for a delay, or its parent ended already): the caller
            goes through the app, as before.
        Raises:
            As dispatch (SerializationError, PayloadTooLargeError, QueueFullError,
            EngineClosedError): nothing was stored.
        """
        if task.delay_ms or parent.done():
            return None
        self._enter_or_raise()
        try:
            idx = self._prepare(task, fn, args, kwargs)
            slot = self.slots[idx]
            slot.priority = task.priority.value
            st = lib.czmp_slot_state(self.raw, idx)
            waiting = _core.state_make(_core.state_gen(st), 0, _core.SLOT_WAITING)
            if lib.czmp_slot_cas(self.raw, idx, st, waiting) != 0:  # cannot happen: the slot is ours
                self._release(task, idx)
                return None
            self._waiting[idx] = waiting
            # the parent's slot, read then re-checked: a slot released and
            # reused meanwhile shows in parent.slot (-1 first, see _unslot),
            # and a generation read before its release makes the word inert
            pidx = parent.slot
            pst = lib.czmp_slot_state(self.raw, pidx) if pidx >= 0 else 0
            if (pidx >= 0 and self._slot_task[pidx] is parent and parent.slot == pidx
                    and _core.state_kind(pst) in _FEEDABLE):
                lib.czmp_slot_set_next(self.raw, pidx, pst, idx, waiting)
            # else: the parent is past the point where its worker feeds; the
            # caller's take_back() after it settles finds the task WAITING
        finally:
            self.gate.exit()
        return _WaitingStep(self, task, idx, waiting)

    def _feed_waiting(self, task: TaskResult, idx: int, waiting: int, value: Any) -> str:
        """_WaitingStep.feed: the app's fallback feed, in the step's own slot.

        In place rather than through a new slot: a continuation that names
        this slot (the chain's next step, wired while this one waited) stays
        good, so one hop through the app does not send the rest of the
        chain that way too.
        """
        if not self.gate.enter():
            return "back"  # closing: the caller's release fails it cleanly
        try:
            if self._waiting.get(idx) != waiting or self._slot_task[idx] is not task:
                return "worker"
            held = _core.state_make(_core.state_gen(waiting), 0, _SLOT_HELD)
            # CAS against czmp_tasks_feed's WAITING -> FEEDING: exactly one wins
            if lib.czmp_slot_cas(self.raw, idx, waiting, held) != 0:
                self._waiting.pop(idx, None)
                return "worker"
            self._waiting.pop(idx, None)
            try:
                flags, data = serialization.dumps_result(value)
            except BaseException:  # noqa: BLE001 - the ordinary path reports it
                flags, data = -1, None
            if flags == serialization.OUTCOME_OK and type(data) is bytes:
                out = ffi.new("uint64_t *")
                if lib.czmp_arena_alloc(self.raw, len(data) + 8, holder_slot(idx), out) == 0:
                    ptr = ffi.cast("char *", lib.czmp_arena_ptr(self.raw, out[0]))
                    ffi.memmove(ptr, _FED_HEADER.pack(len(data), flags) + data, len(data) + 8)
                    # plain write: the slot is HELD, ours; the QUEUED CAS releases it
                    self.slots[idx].fed_handle = out[0]
                    if self._submit_one(task.priority.value, idx):
                        return "app"
            # too big for the pool, a payload segment, or no ring room: the
            # ordinary path (its release frees a fed chunk written above)
            self._release(task, idx)
            return "back"
        finally:
            self.gate.exit()

    def _take_back(self, task: TaskResult, idx: int, waiting: int) -> bool:
        """WAITING -> HELD -> released, if no worker fed the task first (see dispatch_waiting)."""
        if not self.gate.enter():
            return True  # closed: close() abandoned it already
        try:
            if self._waiting.get(idx) != waiting or self._slot_task[idx] is not task:
                return False
            held = _core.state_make(_core.state_gen(waiting), 0, _SLOT_HELD)
            # CAS against czmp_tasks_feed's WAITING -> FEEDING: exactly one wins
            if lib.czmp_slot_cas(self.raw, idx, waiting, held) != 0:
                self._waiting.pop(idx, None)
                return False
            self._waiting.pop(idx, None)
            self._release(task, idx)
            return True
        finally:
            self.gate.exit()

    # -- collect ---------------------------------------------------------

    def _guarded_collect_loop(self) -> None:
        # The collector is inside the gate for its whole life: close() cannot
        # unmap under it, even if a listener holds it up past the join.
        if not self.gate.enter():
            return
        try:
            self._collect_loop()
        except BaseException as exc:  # noqa: BLE001 - the engine is broken: waiters must know
            self.host.thread_died(threading.current_thread().name, exc)
            raise
        finally:
            self.gate.exit()

    def _collect_loop(self) -> None:
        batch = _OutcomeBatch(COLLECT_BATCH)
        while self._running:
            if self._collect(batch, COLLECT_WAIT_NS) == 0 and self._stopping:
                time.sleep(STOPPING_COLLECT_PAUSE_S)

    def _collect(self, batch: "_OutcomeBatch", timeout_ns: int) -> int:
        """Take finished slots (one C call) and settle each; returns how many.

        The same C call releases the slots of successes whose result it
        copied out (CZMP_COLLECT_RELEASE_OK): no call per slot for those.
        """
        n = lib.czmp_results_collect_outcomes_ex(self.raw, batch.out, batch.size, batch.data,
                                                 OUTCOME_DATA_BYTES, timeout_ns, _RELEASE_OK)
        if n > 0:
            view = batch.view
            # CLOCK_MONOTONIC -> wall clock, once per batch (see _wall)
            wall = time.time() - time.monotonic()
            # successes, settled together once their slots are back (host.finish_many)
            settled: list = []
            try:
                for o in _OUTCOME.iter_unpack(batch.records[:n * _OUTCOME.size]):
                    try:
                        self._on_outcome(o, view, wall, settled)
                    except BaseException:  # noqa: BLE001 - the collector must survive anything
                        log.exception("collecting slot %d failed", o[4])
            finally:
                if settled:
                    self.host.finish_many(settled)
        return n

    def help_collect(self, task: TaskResult, timeout: Optional[float]) -> None:
        """A thread about to block in wait() first collects outcomes itself, briefly.

        Handing a result from the collector thread to a waiting thread costs a
        cross-CPU wake-up (~40 us here) on top of the worker's; polling the
        result ring from the waiting thread instead (GIL released, the C call
        spins then sleeps) saves it for short tasks. The ring is multi-consumer
        and outcomes are settled per slot, so this thread and the collector
        thread can collect side by side. HELP_COLLECT_S bounds what a wait on
        a long task spends here before it blocks on the Event.
        """
        budget = HELP_COLLECT_S if timeout is None else min(timeout, HELP_COLLECT_S)
        if budget <= 0 or not self._running or not self.gate.enter():
            return
        try:
            self._help_collect(task, budget)
        finally:
            self.gate.exit()

    def _help_collect(self, task: TaskResult, budget: float) -> None:
        tls = self._tls
        batch = getattr(tls, "batch", None)
        if batch is None:
            batch = tls.batch = _OutcomeBatch(HELP_COLLECT_BATCH)
        elif batch.busy:
            return  # a callback run by this very collection waits: let the Event serve it
        end = time.monotonic() + budget
        batch.busy = True
        try:
            while task._ok is None and self._running:
                left = end - time.monotonic()
                if left <= 0:
                    return
                self._collect(batch, min(int(left * 1e9), 200_000))
        finally:
            batch.busy = False

    def _on_outcome(self, o: tuple, view: memoryview, wall: Optional[float] = None,
                    settled: Optional[list] = None) -> None:
        """Settle the task of one outcome.

        Args:
            wall: the wall-clock offset of _wall, if known.
            settled: where a final outcome whose slot is released goes, as
                (task, ok, value, status), for the caller's host.finish_many;
                None: finished here.
        """
        state, handle, started, finished, idx, flags, n, worker, off, err = o
        task = self._slot_task[idx]
        if task is None:
            log.error("result for slot %d, which no task owns; dropped", idx)
            return
        try:
            if err:  # czmp_outcome_t.error: result_len beyond its area (issue 10.3)
                raise ValueError(f"its length ({n}) is beyond its area in slot {idx}")
            data = view[off:off + n] if off != _NO_DATA else \
                self.payloads.read(handle, n, self.slots[idx].result_inline)
            if flags & _OUTCOME_PROGRESS:
                flags, data, task.progress_value = serialization.split_progress(flags, data)
            if flags & _OUTCOME_EXTRAS:
                flags, data, extras = serialization.split_extras(flags, data)
                compat.apply_extras(task, extras)
            ok, value = serialization.loads_outcome(flags, data)
        except BaseException as exc:  # noqa: BLE001 - SystemExit from an unpickler fails this task only (issue 11.4)
            ok, value = False, SerializationError(f"cannot read the task's outcome: {exc!r}")
        if handle >> 56 == _HANDLE_EXTERNAL:
            self.payloads.free_external(handle)
        if wall is None:
            task.started_at = self._wall(started)
        else:
            task.started_at = started / 1e9 + wall if started else None
        task.exec_ms = (finished - started) / 1e6
        task.worker_id = worker
        task.result_bytes = n  # what keep_finished_bytes counts
        if ok and task.ext_args:  # the worker is done with them: kept for reuse (payloads.py)
            self.payloads.recycle_external(task.ext_args)
            task.ext_args = 0
        if state & 0xFF == _SLOT_FREE:
            # released by the collect call already (a success, its result
            # copied out): final even if its bytes would not unpickle, which
            # no retry could fix (SerializationError is NOT_RETRYABLE)
            self._unslot(task, idx)
            outcome = (task, ok, value, _COMPLETED if ok else TaskStatus.FAILED)
        elif ok:
            lib.czmp_slot_release(self.raw, idx, state)
            self._unslot(task, idx)
            outcome = (task, True, value, _COMPLETED)
        else:
            self._settle(task, idx, False, value)
            return
        if settled is None:
            self.host.finish(*outcome)
        else:
            settled.append(outcome)

    def on_done(self, idx: int) -> None:
        """A DONE slot handed over outside the result ring (its worker died): settle it."""
        slot = self.slots[idx]
        off = 0 if slot.result_handle >> 56 == _core.HANDLE_INLINE else _NO_DATA
        n = slot.result_len
        err = int(off == 0 and n > _core.INLINE_RESULT)  # a worker's length, bounded (issue 10.3)
        data = ffi.buffer(slot.result_inline, n)[:] if off == 0 and not err else b""
        o = (lib.czmp_slot_state(self.raw, idx), slot.result_handle, slot.started_ns,
             slot.finished_ns, idx, slot.result_flags, n, slot.worker, off, err)
        self._on_outcome(o, memoryview(data))

    def on_crash(self, idx: int, exitcode: int, pid: int, timed_out: bool, *,
                 cancelled: Optional[TaskResult] = None, killed_by_app: bool = False) -> None:
        """A RUNNING slot whose worker died (now HELD): retry or fail the task.

        ``timed_out``: the app killed the worker for a timeout; ``cancelled``:
        the task the app killed it to cancel (cancel(force=True)). A task that
        merely shared a worker the app killed (threads_per_worker > 1) is
        re-queued without using an attempt.
        """
        task = self._slot_task[idx]
        if task is None:
            return
        slot = self.slots[idx]
        task.started_at = self._wall(slot.started_ns)
        task.worker_id = slot.worker
        if cancelled is task:
            self._release(task, idx)
            self.host.finish(task, False, TaskCancelledError(
                f"task {task.task_id} was cancelled while running; its worker (pid {pid}) "
                "was killed"), TaskStatus.CANCELLED)
            return
        now = lib.czmp_now_ns()
        if timed_out and task.timeout_ms and now >= slot.started_ns + task.timeout_ms * 1_000_000:
            err: Exception = TaskTimeoutError(
                f"task {task.task_id} ran past its timeout of {task.timeout_ms} ms and "
                f"did not stop when asked; its worker (pid {pid}) was killed")
        elif timed_out or killed_by_app:
            self._park(task, idx, 0.0)  # collateral of a kill for another task: no attempt used
            return
        elif exitcode == MEMORY_EXIT_CODE:
            err = MemoryLimitError(
                f"task {task.task_id} went over its memory_limit_mb and did not stop when "
                f"asked; its worker (pid {pid}) ended itself", None, None)
        else:
            err = WorkerCrashedError(
                f"worker process {pid} died running task {task.task_id}: {describe_exit(exitcode)}",
                exitcode)
        self._settle(task, idx, False, err)

    def free_dead_worker_externals(self, worker: int) -> int:
        """Unlink result segments a dead worker wrote but never published; call before its reap.

        A worker killed between writing a big result and finishing its slot
        leaves the segment's handle in the RUNNING slot, and the reap forgets
        it (the slot is re-run or failed): without this the segment would
        hold /dev/shm, and count against max_external_bytes, until shutdown.
        Returns how many were unlinked (issue 20.8).
        """
        freed = 0
        owner = worker + 1
        for idx, task in enumerate(self._slot_task):
            if task is None:
                continue
            st = lib.czmp_slot_state(self.raw, idx)
            handle = self.slots[idx].result_handle
            if (_core.state_kind(st) == _core.SLOT_RUNNING and _core.state_owner(st) == owner
                    and handle >> 56 == _HANDLE_EXTERNAL):
                self.payloads.free_external(handle)
                freed += 1
        return freed

    def on_stopped_running(self, idx: int) -> None:
        """A RUNNING slot whose worker was stopped by shutdown: record that the task started."""
        task = self._slot_task[idx]
        if task is not None:
            task.started_at = self._wall(self.slots[idx].started_ns)
            task.worker_id = self.slots[idx].worker
            task.status = TaskStatus.RUNNING

    def terminate(self, task: TaskResult) -> bool:
        """Kill the worker running ``task``; True if a kill was sent (the reap cancels it)."""
        if not self.gate.enter():
            return False
        try:
            idx = task.slot
            if idx < 0 or task.done():
                return False
            st = lib.czmp_slot_state(self.raw, idx)
            if _core.state_kind(st) != _core.SLOT_RUNNING or self._slot_task[idx] is not task:
                return False
            return self.supervisor.kill_for_cancel(_core.state_owner(st) - 1, idx, task, st)
        finally:
            self.gate.exit()

    def _settle(self, task: TaskResult, idx: int, ok: bool, value: Any) -> None:
        host = self.host
        if not ok and host.attempt_failed(task, value):
            self._drop_result(idx)
            self.slots[idx].attempt = task.attempt
            self._park(task, idx, host.backoff_s(task.attempt, task))
            return
        self._release(task, idx)
        host.finish(task, ok, value, TaskStatus.COMPLETED if ok else TaskStatus.FAILED)

    def _drop_result(self, idx: int) -> None:
        slot = self.slots[idx]
        if slot.result_handle >> 56 == _core.HANDLE_CHUNK:
            lib.czmp_arena_free(self.raw, slot.result_handle, holder_slot(idx))
        elif slot.result_handle >> 56 == _HANDLE_EXTERNAL:
            self.payloads.free_external(slot.result_handle)
        slot.result_handle = 0
        slot.result_len = 0

    def _release(self, task: TaskResult, idx: int) -> None:
        raw = self.raw
        lib.czmp_slot_release(raw, idx, lib.czmp_slot_state(raw, idx))
        self._unslot(task, idx)

    def _unslot(self, task: TaskResult, idx: int) -> None:
        """The slot was released: drop the task's hold on it and give it back."""
        if task.ext_args:
            self.payloads.free_external(task.ext_args)
            task.ext_args = 0
        task.slot = -1
        self._return_slot(idx)

    def _wall(self, mono_ns: int) -> Optional[float]:
        """CLOCK_MONOTONIC ns (the C side's clock) as wall-clock seconds.

        The offset is taken now, not once at start: a wall-clock jump (NTP,
        suspend) would otherwise skew every reported time (issue 20.12).
        """
        return mono_ns / 1e9 + (time.time() - time.monotonic()) if mono_ns else None

    # -- observation -------------------------------------------------------

    def observe(self, task: TaskResult) -> None:
        """Update a pending task's status from its slot (RUNNING is only visible there)."""
        if not self.gate.enter():
            return
        try:
            idx = task.slot
            if idx < 0 or task.done():
                return
            st = lib.czmp_slot_state(self.raw, idx)
            if _core.state_kind(st) == _core.SLOT_RUNNING and self._slot_task[idx] is task:
                started = self._wall(self.slots[idx].started_ns)
                worker = self.slots[idx].worker
                # The task may have ended since the check: the status is
                # written under the lock host.finish takes, and only while the
                # task is not final (issue 20.11).
                with self.host.lock:
                    if not task._final and task.status in _RUNNABLE:
                        task.status = TaskStatus.RUNNING
                        task.started_at = started
                        task.worker_id = worker
        finally:
            self.gate.exit()

    def is_running(self, task: TaskResult) -> bool:
        """True if ``task``'s slot is RUNNING in a worker now (reads only; never writes the task)."""
        idx = task.slot
        if idx < 0 or self._slot_task[idx] is not task:
            return False
        return _core.state_kind(lib.czmp_slot_state(self.raw, idx)) == _core.SLOT_RUNNING

    def live_progress(self, task: TaskResult) -> Optional[tuple[float, str]]:
        if not self.gate.enter():
            return None
        try:
            return self._live_progress(task)
        finally:
            self.gate.exit()

    def _live_progress(self, task: TaskResult) -> Optional[tuple[float, str]]:
        idx = task.slot
        if idx < 0:
            return None
        st = lib.czmp_slot_state(self.raw, idx)
        owner = _core.state_owner(st)
        if _core.state_kind(st) != _core.SLOT_RUNNING or not owner:
            return None
        rec = self.seg.worker(owner - 1)
        for _ in range(100):
            seq = rec.progress_seq
            if seq & 1:
                continue
            value, msg = rec.progress, ffi.string(rec.progress_msg).decode("utf-8", "replace")
            if rec.progress_seq == seq:
                return None if value < 0 else (value, msg)
        return None

    def external_bytes(self) -> int:
        """Bytes of the payload segments of their own, every process's (EngineStats)."""
        return external_bytes(self.seg.name)

    def task_id_of_log(self, idx: int, seq: int) -> Optional[str]:
        """The id of task number ``seq`` that ran in slot ``idx``, if the slot still
        holds it or held it last; else None (a bad index included)."""
        if not 0 <= idx < len(self._slot_task):
            return None
        task = self._slot_task[idx]
        if task is not None and task.seq == seq:
            return task.task_id
        last = self._slot_last[idx]
        return last[1] if last is not None and last[0] == seq else None

    def queue_depths(self) -> list[int]:
        if not self.gate.enter():
            return [0] * _core.NPRIO
        try:
            return self.seg.queue_depths()
        finally:
            self.gate.exit()

    def worker_records(self):
        """(process, a copy of its record) per live worker: copies stay valid after close()."""
        if not self.gate.enter():
            return []
        try:
            out = []
            for w, rec in self.supervisor.snapshot():
                copy = ffi.new("czmp_worker_t *")
                ffi.memmove(copy, rec, ffi.sizeof("czmp_worker_t"))
                out.append((w, copy))
            return out
        finally:
            self.gate.exit()

    def in_flight_memory(self) -> tuple[int, int]:
        """(payload bytes, chunk bytes holding them) over slots in use."""
        if not self.gate.enter():
            return 0, 0
        try:
            return self._in_flight_memory()
        finally:
            self.gate.exit()

    def _in_flight_memory(self) -> tuple[int, int]:
        payload = chunks = 0
        for idx, task in enumerate(self._slot_task):
            if task is None:
                continue
            slot = self.slots[idx]
            for handle, n in ((slot.args_handle, slot.args_len), (slot.result_handle, slot.result_len)):
                kind = handle >> 56
                if kind == _core.HANDLE_CHUNK:
                    payload += n
                    chunks += lib.czmp_arena_chunk_size(self.raw, handle)
                elif kind == _HANDLE_EXTERNAL and n:  # a payload in a segment of its own
                    payload += n
                    chunks += -(-n // EXTERNAL_PAGE) * EXTERNAL_PAGE
        return payload, chunks

    # -- shutdown ----------------------------------------------------------

    def close(self, abandon: Callable[[TaskResult], None]) -> None:
        """Stop workers, settle what they finished, abandon the rest, remove the segment.

        The segment is removed whatever goes wrong before: a shutdown that
        raises (at interpreter exit, say) must not leave it in /dev/shm.
        After keep_mapped(), the unmapping is left to release_mapping().
        """
        try:
            self._stopping = True
            self.seg.shutdown()
            self.supervisor.stop()
            self._running = False
            with self._free_cond:
                self._free_cond.notify_all()  # submitters waiting for a slot give up
            self._collector.join(timeout=COLLECTOR_JOIN_S)
            # outcomes published after the collector's last look
            batch = _OutcomeBatch(COLLECT_BATCH)
            while self._collect(batch, 0) > 0:
                pass
            if not self.gate.close(CLOSE_DRAIN_S):
                log.warning("engine threads still inside the segment at shutdown; "
                            "it is unmapped when the last leaves")
            for task in self.host.unfinished():
                with self._park_lock:
                    parked, task.parked = task.parked, False
                if parked and parked is not True:
                    self.host.unschedule(parked)
                if not parked:
                    self._note_started(task)
                abandon(task)
        finally:
            self._running = False
            self.gate.close(0)
            self._unlink_segment()
            if not self._keep_mapped:
                self.release_mapping()

    def keep_mapped(self) -> None:
        """Have the next close() leave the unmapping to a release_mapping() call.

        For the engine, which joins its own threads after close() and then
        releases the mapping (see release_mapping).
        """
        self._keep_mapped = True

    def release_mapping(self) -> None:
        """After close(): unmap the segment, in a background thread, once no thread is inside.

        Unmapping a pool whose pages are backed takes ~0.1 s, and while it
        runs the kernel makes every thread start and thread exit of the app
        wait (python -m bench.engine: the engine's own joins after close()
        took 60-160 ms after big payloads instead of ~0). So the engine calls
        this last, once its threads are joined (issue 18).
        """
        # nothing may touch the mapping once it is gone: a thread still
        # inside the gate (held up in a listener, say) unmaps on its way out
        self.gate.when_empty(self._unmap)

    def _note_started(self, task: TaskResult) -> None:
        """Before close() abandons ``task``: if it ran, say so (it is then not "cancelled")."""
        idx = task.slot
        if idx < 0 or task.started_at is not None:
            return
        kind = _core.state_kind(lib.czmp_slot_state(self.raw, idx))
        # HELD and not parked: a collector took its outcome and had not settled it
        if kind in (_core.SLOT_RUNNING, _core.SLOT_DONE, _SLOT_HELD):
            task.started_at = self._wall(self.slots[idx].started_ns) or time.time()

    def _destroy_segment(self) -> None:
        self._unlink_segment()
        self._unmap()

    def _unlink_segment(self) -> None:
        name = self.seg.name
        self.seg.unlink()
        if getattr(self, "payloads", None) is not None:  # absent if __init__ failed early
            # named no more; unmapped by _unmap's thread, off the shutdown path
            self._spare_maps = self.payloads.unlink_spares()
        remove_externals(name)

    def _unmap(self) -> None:
        self._prefault_stop.set()
        if self._prefault.is_alive():
            self._prefault.join()  # it must not touch the mapping as it goes
        # Unmapping frees every backed page of the pool once the name is gone
        # (~0.1 s for 500 MiB): off the caller's path, in C without the GIL;
        # the spare payload segments first (unlinked already, _unlink_segment)
        threading.Thread(target=self._detach_all, name="czmp-unmap", daemon=True).start()

    def _detach_all(self) -> None:
        spares, self._spare_maps = getattr(self, "_spare_maps", ()), ()
        for spare in spares:
            spare.close()
        self.seg.detach()
