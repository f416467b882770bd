"""Process mode: tasks go through the shared-memory segment to worker processes.

This module is the app-side half of the hot path (submit and collect); the
worker side is workers.py and the process management is supervisor.py.

Slot ownership on the app side (besides the state word in shared memory):
  * a slot index is in ``_free`` xor owned by exactly one TaskResult
    (``_slot_task[i]``) from dispatch until _release();
  * a task waiting for a timer (delay or retry back-off) is "parked": its
    slot is HELD, and ``task.parked`` is True. Cancel and the timer both
    test-and-clear ``parked`` under ``_park_lock``, so exactly one wins.
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

from . import _core, serialization
from ._core import holder_slot
from ._native import ffi, lib
from .errors import (QueueFullError, SerializationError, TaskCancelledError, TaskTimeoutError,
                     WorkerCrashedError)
from .payloads import Payloads, plan_arena, remove_externals
from .records import TaskStatus
from .results import TaskResult
from .segment_janitor import new_segment_name, sweep_dead_segments

if TYPE_CHECKING:
    from .engine import BackgroundTasks

log = logging.getLogger("catzilla_mp")

#: Function table entries. Functions beyond it (or not shareable) travel
#: with each task instead: slower, never wrong.
FUNCTION_TABLE_SIZE = 4096
#: Results taken per collector wake-up; bounds the latency of the first
#: result of a burst against the per-call cost of the C collect.
COLLECT_BATCH = 256
COLLECT_WAIT_NS = 1_000_000_000
#: Bytes of small results copied out per collect call.
OUTCOME_DATA_BYTES = COLLECT_BATCH * _core.INLINE_RESULT
#: czmp_outcome_t, as struct sees it (static_assert'ed at 56 bytes in internal.h).
_OUTCOME = struct.Struct("<QQQQIIIIII")
_NO_DATA = 0xFFFFFFFF
_OUTCOME_PROGRESS = serialization.OUTCOME_PROGRESS
#: How long a thread in TaskResult.wait() polls for outcomes itself before it
#: blocks (help_collect), and how many it takes per call.
HELP_COLLECT_S = 0.002
HELP_COLLECT_BATCH = 64
#: Tasks pushed per C call by add_tasks()/map().
SUBMIT_BATCH = 256
#: The timeout every worker applies when a task carries none of its own.
DEFAULT_TIMEOUT_MS = 30000

_HANDLE_EXTERNAL = _core.HANDLE_EXTERNAL
_INLINE_ARGS = _core.INLINE_ARGS
_INLINE_HANDLE = _core.HANDLE_INLINE << 56
_COMPLETED = TaskStatus.COMPLETED
_SLOT_HELD = _core.SLOT_HELD


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
    return (isinstance(fn, types.FunctionType) and fn.__closure__ is None
            and "<" not in fn.__qualname__)


class ProcessBackend:
    def __init__(self, engine: "BackgroundTasks") -> None:
        self.engine = engine
        o = engine.options
        sweep_dead_segments()
        self.seg = _core.Segment.create(
            new_segment_name(), nslots=o.queue_size, nworkers=o.max_workers,
            nfuncs=FUNCTION_TABLE_SIZE, classes=plan_arena(o.memory_pool_mb << 20),
            populate=False)
        self.raw = self.seg.raw
        # Page tables for the pool are built in the background: with
        # MAP_POPULATE a 500 MiB pool held the constructor up for ~0.3 s.
        self._prefault = threading.Thread(target=lib.czmp_segment_prefault, args=(self.raw,),
                                          name="czmp-prefault", daemon=True)
        if o.populate:
            self._prefault.start()
        try:
            self._init_state(o)
        except BaseException:
            self._destroy_segment()
            raise

    def _init_state(self, o) -> None:
        self.payloads = Payloads(self.seg, o.max_payload_bytes)
        self.functions = FunctionTable(self.seg, self.payloads)
        n = o.queue_size
        self.slots = [lib.czmp_slot(self.raw, i) for i in range(n)]
        self._slot_task: list[Optional[TaskResult]] = [None] * n
        self._free = collections.deque(range(n - 1, -1, -1))
        self._free_cond = threading.Condition()
        self._free_waiters = 0
        self._park_lock = threading.Lock()
        self._tls = threading.local()
        # CLOCK_MONOTONIC (the C side's clock) -> wall clock, for TaskStats
        self._wall_offset = time.time() - time.monotonic()
        self._running = True
        self._collector = threading.Thread(target=self._collect_loop, name="czmp-collector",
                                           daemon=True)
        self._collector.start()
        from .supervisor import Supervisor
        self.supervisor = Supervisor(self)

    # -- submit -----------------------------------------------------------

    def dispatch(self, task: TaskResult, fn: Callable, args: tuple, kwargs: dict) -> None:
        func_id, fn_bytes = self.functions.lookup(fn)
        timeout = None if task.timeout_ms == DEFAULT_TIMEOUT_MS else task.timeout_ms
        data = serialization.dumps_call(args, kwargs, timeout, fn_bytes)
        if len(data) <= _INLINE_ARGS and not task.delay_ms:
            # the common case, in one C call: write the slot, queue it, wake a worker
            idx = self._take_slot()
            task.slot = idx
            self._slot_task[idx] = task
            lib.czmp_tasks_submit_inline(self.raw, task.priority._value_, idx, func_id, task.seq,
                                         data, len(data))
            return
        idx = self._store(task, func_id, data)
        if task.delay_ms:
            self._park(task, idx, task.delay_ms / 1000.0)
        else:
            self._submit_one(task.priority.value, idx)

    def dispatch_many(self, tasks: list[TaskResult], fn: Callable, calls: list[tuple],
                      done: list[int]) -> None:
        """Prepare and queue tasks in order, counting them in done[0] (so an error tells how many).

        The tasks share their function and options (add_tasks, map). Calls
        whose pickles fit a slot go SUBMIT_BATCH at a time through one C call
        (czmp_tasks_submit_inline_many); anything else one by one.
        """
        func_id, fn_bytes = self.functions.lookup(fn)
        first = tasks[0]
        if first.delay_ms or fn_bytes is not None or first.timeout_ms != DEFAULT_TIMEOUT_MS:
            return self._dispatch_each(tasks, fn, calls, done)
        dumps = serialization.dumps_call
        start, n = 0, len(tasks)
        while start < n:
            # no more than the free slots: taking slots we cannot queue yet
            # while waiting for more would wait for ever on a small queue
            k = min(SUBMIT_BATCH, n - start, max(1, len(self._free)))
            datas = [dumps(args, {}) for args in calls[start:start + k]]
            if max(map(len, datas)) > _INLINE_ARGS or any(type(d) is not bytes for d in datas):
                return self._dispatch_each(tasks[start:], fn, calls[start:], done)
            done[0] += self._submit_inline_batch(tasks[start:start + k], func_id, datas)
            start += k

    def _submit_inline_batch(self, tasks: list[TaskResult], func_id: int, datas: list[bytes]) -> int:
        idxs: list[int] = []
        slot_task = self._slot_task
        try:
            for task in tasks:
                idx = self._take_slot()
                task.slot = idx
                slot_task[idx] = task
                idxs.append(idx)
        except BaseException:
            for task, idx in zip(tasks, idxs):  # a full queue: give back what this batch took
                task.slot = -1
                self._return_slot(idx)
            raise
        offs = list(itertools.accumulate(map(len, datas), initial=0))[:-1]
        n = len(tasks)
        lib.czmp_tasks_submit_inline_many(
            self.raw, tasks[0].priority._value_, ffi.new("uint32_t[]", idxs), n, func_id,
            ffi.new("uint64_t[]", [t.seq for t in tasks]), b"".join(datas),
            ffi.new("uint32_t[]", offs), ffi.new("uint32_t[]", list(map(len, datas))))
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
        for prio, idxs in pending.items():
            if idxs:
                lib.czmp_tasks_submit(self.raw, prio, ffi.new("uint32_t[]", idxs), len(idxs))
                idxs.clear()

    def _prepare(self, task: TaskResult, fn: Callable, args: tuple, kwargs: dict) -> int:
        """Pickle the call into a free slot; the slot is the task's from here on."""
        func_id, fn_bytes = self.functions.lookup(fn)
        timeout = None if task.timeout_ms == DEFAULT_TIMEOUT_MS else task.timeout_ms
        return self._store(task, func_id, serialization.dumps_call(args, kwargs, timeout, fn_bytes))

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

    def _submit_one(self, prio: int, idx: int) -> None:
        buf = getattr(self._tls, "buf", None)
        if buf is None:
            buf = self._tls.buf = ffi.new("uint32_t[1]")
        buf[0] = idx
        lib.czmp_tasks_submit(self.raw, prio, buf, 1)

    def _take_slot(self) -> int:
        try:
            return self._free.pop()
        except IndexError:
            pass
        timeout = self.engine.options.queue_full_timeout
        deadline = time.monotonic() + timeout
        with self._free_cond:
            self._free_waiters += 1
            try:
                while True:
                    try:
                        return self._free.pop()
                    except IndexError:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise QueueFullError(
                                f"all {len(self.slots)} task slots stayed in use for "
                                f"{timeout:g} s (queue_size); the task was not queued") from None
                        self._free_cond.wait(left)
            finally:
                self._free_waiters -= 1

    def _return_slot(self, idx: int) -> None:
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
        task.parked = True
        self.engine._schedule(delay_s, lambda: self._unpark(task))

    def _unpark(self, task: TaskResult) -> None:
        with self._park_lock:
            if not task.parked:
                return  # cancelled meanwhile
            task.parked = False
        task.status = TaskStatus.PENDING
        self._submit_one(task.priority.value, task.slot)

    def cancel(self, task: TaskResult) -> bool:
        """Take back a task that has not started; True if it will never run."""
        idx = task.slot
        if idx < 0 or task.done():
            return False
        with self._park_lock:
            parked = task.parked
            task.parked = False
        if parked:
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

    # -- collect ---------------------------------------------------------

    def _collect_loop(self) -> None:
        batch = _OutcomeBatch(COLLECT_BATCH)
        while self._running:
            self._collect(batch, COLLECT_WAIT_NS)

    def _collect(self, batch: "_OutcomeBatch", timeout_ns: int) -> int:
        """Take finished slots (one C call) and settle each; returns how many."""
        n = lib.czmp_results_collect_outcomes(self.raw, batch.out, batch.size, batch.data,
                                              OUTCOME_DATA_BYTES, timeout_ns)
        if n > 0:
            view = batch.view
            for o in _OUTCOME.iter_unpack(batch.records[:n * _OUTCOME.size]):
                try:
                    self._on_outcome(o, view)
                except Exception:  # noqa: BLE001 - the collector must survive anything
                    log.exception("collecting slot %d failed", o[4])
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
        if budget <= 0 or not self._running:
            return
        tls = self._tls
        batch = getattr(tls, "batch", None)
        if batch is None:
            batch = tls.batch = _OutcomeBatch(HELP_COLLECT_BATCH)
        elif batch.busy:
            return  # a callback run by this very collection waits: let the Event serve it
        end = time.monotonic() + budget
        batch.busy = True
        try:
            while task._ok is None:
                left = end - time.monotonic()
                if left <= 0:
                    return
                self._collect(batch, min(int(left * 1e9), 200_000))
        finally:
            batch.busy = False

    def _on_outcome(self, o: tuple, view: memoryview) -> None:
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
            ok, value = serialization.loads_outcome(flags, data)
        except Exception as exc:  # noqa: BLE001
            ok, value = False, SerializationError(f"cannot read the task's outcome: {exc}")
        if handle >> 56 == _HANDLE_EXTERNAL:
            self.payloads.free_external(handle)
        task.started_at = started / 1e9 + self._wall_offset
        task.exec_ms = (finished - started) / 1e6
        task.worker_id = worker
        if ok:
            lib.czmp_slot_release(self.raw, idx, state)
            self._unslot(task, idx)
            self.engine._finish(task, True, value, _COMPLETED)
        else:
            self._settle(task, idx, False, value)

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
            self.engine._finish(task, False, TaskCancelledError(
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
        else:
            err = WorkerCrashedError(
                f"worker process {pid} died running task {task.task_id}: {describe_exit(exitcode)}",
                exitcode)
        self._settle(task, idx, False, err)

    def on_stopped_running(self, idx: int) -> None:
        """A RUNNING slot whose worker was stopped by shutdown: record that the task started."""
        task = self._slot_task[idx]
        if task is not None:
            task.started_at = self._wall(self.slots[idx].started_ns)
            task.worker_id = self.slots[idx].worker
            task.status = TaskStatus.RUNNING

    def terminate(self, task: TaskResult) -> bool:
        """Kill the worker running ``task``; True if a kill was sent (the reap cancels it)."""
        idx = task.slot
        if idx < 0 or task.done():
            return False
        st = lib.czmp_slot_state(self.raw, idx)
        if _core.state_kind(st) != _core.SLOT_RUNNING or self._slot_task[idx] is not task:
            return False
        return self.supervisor.kill_for_cancel(_core.state_owner(st) - 1, idx, task)

    def _settle(self, task: TaskResult, idx: int, ok: bool, value: Any) -> None:
        engine = self.engine
        if not ok and engine._attempt_failed(task, value):
            self._drop_result(idx)
            self.slots[idx].attempt = task.attempt
            self._park(task, idx, engine._backoff_s(task.attempt))
            return
        self._release(task, idx)
        engine._finish(task, ok, value, TaskStatus.COMPLETED if ok else TaskStatus.FAILED)

    def _drop_result(self, idx: int) -> None:
        slot = self.slots[idx]
        if slot.result_handle >> 56 == _core.HANDLE_CHUNK:
            lib.czmp_arena_free(self.raw, slot.result_handle, holder_slot(idx))
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
        return mono_ns / 1e9 + self._wall_offset if mono_ns else None

    # -- observation -------------------------------------------------------

    def observe(self, task: TaskResult) -> None:
        """Update a pending task's status from its slot (RUNNING is only visible there)."""
        idx = task.slot
        if idx < 0 or task.done():
            return
        st = lib.czmp_slot_state(self.raw, idx)
        if _core.state_kind(st) == _core.SLOT_RUNNING and self._slot_task[idx] is task:
            task.status = TaskStatus.RUNNING
            task.started_at = self._wall(self.slots[idx].started_ns)
            task.worker_id = self.slots[idx].worker

    def live_progress(self, task: TaskResult) -> Optional[tuple[float, str]]:
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

    def queue_depths(self) -> list[int]:
        return self.seg.queue_depths()

    def worker_records(self):
        return self.supervisor.snapshot()

    def in_flight_memory(self) -> tuple[int, int]:
        """(payload bytes, chunk bytes holding them) over slots in use."""
        payload = chunks = 0
        for idx, task in enumerate(self._slot_task):
            if task is None:
                continue
            slot = self.slots[idx]
            for handle, n in ((slot.args_handle, slot.args_len), (slot.result_handle, slot.result_len)):
                if handle >> 56 == _core.HANDLE_CHUNK:
                    payload += n
                    chunks += lib.czmp_arena_chunk_size(self.raw, handle)
        return payload, chunks

    # -- shutdown ----------------------------------------------------------

    def close(self, abandon: Callable[[TaskResult], None]) -> None:
        """Stop workers, settle what they finished, abandon the rest, remove the segment.

        The segment is removed whatever goes wrong before: a shutdown that
        raises (at interpreter exit, say) must not leave it in /dev/shm.
        """
        try:
            self.seg.shutdown()
            self.supervisor.stop()
            self._running = False
            self._collector.join(timeout=5)
            # outcomes published after the collector's last look
            batch = _OutcomeBatch(COLLECT_BATCH)
            while self._collect(batch, 0) > 0:
                pass
            for task in self.engine._unfinished():
                with self._park_lock:
                    task.parked = False
                abandon(task)
        finally:
            self._running = False
            self._destroy_segment()

    def _destroy_segment(self) -> None:
        if self._prefault.is_alive():
            self._prefault.join()  # it must not touch the mapping as it goes
        name = self.seg.name
        self.seg.unlink()
        remove_externals(name)
        self.seg.detach()


def describe_exit(code: int) -> str:
    if code is None:
        return "unknown exit"
    if code < 0:
        import signal

        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exited with code {code}"
