"""The worker process: take tasks from shared memory, run them, publish outcomes.

Forked by the zygote (zygote.py, start_method="forkserver": a preloaded
process that is never a fork of a threaded app), or started by the
supervisor as ``python -m catzilla_mp.workers '<json>'`` (start_method=
"spawn", and the fallback); main() is the same either way. Its threads:

  executor thread(s)  the main thread, plus threads_per_worker - 1 more; each
                      loops: take a slot (C, GIL released while it sleeps),
                      unpickle, run, pickle, publish (czmp_tasks_finish)
  heartbeat thread    native (C): stamps the worker record, and exits the
                      process if the app is gone (re-parented)

Signals from the supervisor:
  SIGUSR1  a running task passed its timeout: raise TaskTimeoutError in it
  SIGTERM  stop after the task(s) in hand (scale-down, recycling, shutdown)
SIGINT is ignored: a Ctrl-C in the app's terminal is the app's to handle.

A crash anywhere in here is survivable by design: the slot we hold stays
RUNNING with our index as owner, and the supervisor's reap re-runs it.
"""
from __future__ import annotations

import json
import os
import signal
import struct
import sys
import threading
from typing import Callable

from ... import _core, compat_worker, progress, serialization
from ..._native import ffi, lib
from ...errors import (PayloadTooLargeError, SerializationError, SharedMemoryFullError,
                     TaskTimeoutError)
from ...thread_raise import raise_in_thread, withdraw_pending_raise
from .payloads import Payloads

#: How long one take() sleeps before looking at the stop flag again. Longer
#: costs nothing while idle (the futex wakes us for work); it bounds how late
#: a SIGTERM-requested stop is noticed.
TAKE_TIMEOUT_NS = 1_000_000_000
HEARTBEAT_NS = 100_000_000
#: Arguments up to this size are copied out of shared memory by the take
#: call itself; larger ones are read in place.
ARGS_COPY_BYTES = 64 << 10
_INLINE_ARGS = _core.INLINE_ARGS
_INLINE_RESULT = _core.INLINE_RESULT
_OUTCOME_ERROR = serialization.OUTCOME_ERROR
_OUTCOME_OK = serialization.OUTCOME_OK
#: czmp_tasks_feed's chunk: [u32 len][u32 flags][len bytes of the parent's outcome]
_FED_HEADER = struct.Struct("<II")


#: Test-only fault injection: CZMP_WORKER_FAULT="<point>:<countdown>:<claim file>".
#: The first worker that creates <claim file> (O_EXCL) arms <point>, and
#: SIGKILLs itself the <countdown>-th time it gets there; replacements do not
#: re-arm, so a test sees exactly one crash. Points in this file:
#:   taken      the slot is RUNNING (ours), nothing of the task has run yet
#:   running    inside the task, before the function is called
#:   ran        the function returned, its result not yet written
#:   publishing the result is in the slot, the slot not yet DONE
#: and the C core's own points by number (CZMP_FAULT_*), e.g. "c5" for
#: CZMP_FAULT_FINISH_DONE (DONE, hint not yet in the result ring), "c13"
#: (a chain's next step FEEDING) and "c14" (it is QUEUED, ours not DONE).
FAULT_ENV = "CZMP_WORKER_FAULT"
_fault_point = ""
_fault_countdown = 0


def _arm_fault_from_env() -> None:
    global _fault_point, _fault_countdown
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    point, countdown, claim = spec.split(":", 2)
    try:
        os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return  # another worker fired already
    if point.startswith("c"):
        lib.czmp_fault_arm(int(point[1:]), int(countdown))
        return
    _fault_point, _fault_countdown = point, int(countdown)
    if point == "publishing":  # small outcomes are published by one C call
        lib.czmp_fault_arm(lib.CZMP_FAULT_RESULT_WRITTEN, int(countdown))


def _fault(point: str) -> None:
    global _fault_countdown
    if _fault_point == point:
        _fault_countdown -= 1
        if _fault_countdown <= 0:
            os.kill(os.getpid(), signal.SIGKILL)


class _Running:
    """What one executor thread is running now.

    ``lock`` makes "is it in its task?" and "raise the timeout into it" one
    step: a timeout is raised only while ``in_task`` (set and cleared under
    the lock), and leaving the task clears a raise not yet delivered, so it
    can land neither in the next task nor in the loop around them (issue
    20.3, 10.11). At most one raise per task (``fired``).
    """

    __slots__ = ("slot", "deadline_ns", "thread_id", "fired", "in_task", "lock", "measured")

    def __init__(self, thread_id: int) -> None:
        self.slot = -1
        self.deadline_ns = 0
        self.thread_id = thread_id
        self.fired = False
        self.in_task = False
        self.measured: dict | None = None  # what compat_worker measured about the task
        self.lock = threading.Lock()


class Worker:
    def __init__(self, cfg: dict) -> None:
        # native_threads_per_worker: more executor threads, of which at most
        # "threads" run Python tasks at once (native ones run without the GIL)
        self.python_gate: threading.BoundedSemaphore | None = None
        if cfg.get("native_threads", 0) > cfg.get("threads", 1):
            self.python_gate = threading.BoundedSemaphore(cfg.get("threads", 1))
            cfg = dict(cfg, threads=cfg["native_threads"])
        self.cfg = cfg
        self.index: int = cfg["index"]
        self.seg = _core.Segment.attach(cfg["segment"])
        self.raw = self.seg.raw
        self.rec = self.seg.worker(self.index)
        self.payloads = Payloads(self.seg, cfg["max_payload_bytes"],
                                 max_external_bytes=cfg.get("max_external_bytes"))
        self.default_timeout_ms: int = cfg["default_timeout_ms"]
        self.max_tasks: int = cfg.get("max_tasks", 0)
        self.holder = _core.holder_worker(self.index)
        self.functions: dict[int, Callable] = {}
        self.stop = False
        self.done = 0
        self.running: list[_Running] = []
        self._progress_dirty = True
        self.lock = threading.Lock()
        self.runner = compat_worker.Runner()
        self.init_error: BaseException | None = None
        # threads_per_worker > 1: SIGUSR1 wakes this, and the timeouts thread
        # raises into the executor threads under their locks
        self._timeouts_due = threading.Event()

    # -- life cycle -----------------------------------------------------

    def serve(self) -> int:
        rec = self.rec
        rec.pid = os.getpid()
        rec.started_ns = lib.czmp_now_ns()
        rec.state = lib.CZMP_WORKER_IDLE
        _core.check(lib.czmp_heartbeat_start(self.raw, self.index, HEARTBEAT_NS), "heartbeat")
        progress.set_process_sink(self._report_progress)
        # once per process, before its first task (as ProcessPoolExecutor's initializer)
        self.init_error = compat_worker.run_initializer(self.cfg)
        threads = [threading.Thread(target=self._loop, name=f"czmp-exec-{i}", daemon=True)
                   for i in range(1, self.cfg.get("threads", 1))]
        if threads:
            threading.Thread(target=self._timeouts_loop, name="czmp-timeouts",
                             daemon=True).start()
        for t in threads:
            t.start()
        self._loop()
        for t in threads:
            t.join()
        rec.state = lib.CZMP_WORKER_STOPPING
        lib.czmp_heartbeat_stop()
        return 0

    def request_stop(self, *_: object) -> None:
        self.stop = True

    # -- executor loop --------------------------------------------------

    def _loop(self) -> None:
        me = _Running(threading.get_ident())
        with self.lock:
            self.running.append(me)
        single = self.cfg.get("threads", 1) == 1
        idx_out, len_out = ffi.new("uint32_t *"), ffi.new("uint32_t *")
        buf = ffi.new("char[]", ARGS_COPY_BYTES)
        raw, header, index = self.raw, self.seg.header, self.index
        take = lib.czmp_tasks_take_copy
        while not self.stop:
            # one C call: claim a slot and copy its arguments into buf
            if take(raw, index, idx_out, buf, ARGS_COPY_BYTES, len_out, TAKE_TIMEOUT_NS) <= 0:
                if header.shutdown:
                    break
                continue
            idx, alen = idx_out[0], len_out[0]
            slot = lib.czmp_slot(raw, idx)
            if alen <= _INLINE_ARGS or (alen <= ARGS_COPY_BYTES and
                                        slot.args_handle >> 56 != _core.HANDLE_EXTERNAL):
                data = ffi.buffer(buf, alen)
            else:
                data = self.payloads.read(slot.args_handle, alen, slot.args_inline)
            self._run(idx, slot, data, me, single)
            self.done += 1
            if self.max_tasks and self.done >= self.max_tasks:
                self.stop = True  # recycled: the supervisor starts a fresh worker

    def _run(self, idx: int, slot, data, me: _Running, single: bool) -> None:
        rec = self.rec
        if _fault_point:
            _fault("taken")
        t0 = lib.czmp_now_ns()
        rec.current_slot = idx + 1
        if self._progress_dirty:
            self._clear_progress()
        flags, out = self._execute(slot, idx, data, me, t0, single)
        if slot.next and flags == _OUTCOME_OK and type(out) is bytes:
            # a chain's next step waits for this result: hand it over here,
            # before we publish ours (slots.c, czmp_tasks_feed); 0 or an
            # error leaves it WAITING for the app to feed
            lib.czmp_tasks_feed(self.raw, self.index, idx, flags, out, len(out))
        if me.measured and not isinstance(out, serialization.Frame):
            flags, out = serialization.with_extras(flags, out, me.measured)
        me.measured = None
        if self.runner.recycle or self.init_error is not None:
            self.stop = True  # a fresh worker replaces us (heap over a limit; initializer retried)
        try:
            if self._progress_dirty and not isinstance(out, serialization.Frame):
                flags, out = serialization.with_progress(
                    flags, out, rec.progress,
                    ffi.string(rec.progress_msg).decode("utf-8", "replace"))
            self._publish(idx, slot, flags, out, t0)
        except Exception as exc:  # noqa: BLE001 - report it; never lose the worker
            flags, out = serialization.dumps_exception(
                SerializationError(f"the worker could not publish the task's outcome: {exc!r}"))
            self._publish(idx, slot, flags, out, t0)

    def _publish(self, idx: int, slot, flags: int, out, t0: int) -> None:
        if len(out) <= _INLINE_RESULT and not isinstance(out, serialization.Frame):
            # the common case, in one C call: write the outcome, count it, publish
            lib.czmp_tasks_finish_inline(self.raw, self.index, idx, flags, out, len(out))
            return
        try:
            slot.result_handle, n = self.payloads.write(out, slot.result_inline,
                                                        _INLINE_RESULT, self.holder)
        except (PayloadTooLargeError, SharedMemoryFullError) as exc:
            flags, out = serialization.dumps_exception(exc)
            slot.result_handle, n = self.payloads.write(out, slot.result_inline,
                                                        _INLINE_RESULT, self.holder)
        slot.result_len = n
        slot.result_flags = flags
        if _fault_point:
            _fault("publishing")
        rec = self.rec
        rec.current_slot = 0
        rec.busy_ns += lib.czmp_now_ns() - t0
        if not flags & _OUTCOME_ERROR:
            rec.tasks_done += 1
        else:
            rec.tasks_failed += 1
        lib.czmp_tasks_finish(self.raw, self.index, idx)

    def _execute(self, slot, idx: int, data, me: _Running, t0: int,
                 single: bool) -> tuple[int, bytes]:
        try:
            if self.init_error is not None:
                raise self.init_error
            args, kwargs, timeout_ms, fn_bytes, extras = serialization.loads_call(data)
            if slot.fed_handle:
                args = (self._fed_value(slot.fed_handle),) + args
            if fn_bytes is None:
                fn = self.functions.get(slot.func_id) or self._function(slot.func_id)
            else:
                fn = serialization.loads_function(fn_bytes)
            gate = self.python_gate
            if gate is not None and not _is_native(fn):
                gate.acquire()  # released in the finally below: no raise can come between
                t0 = lib.czmp_now_ns()  # its timeout counts from here
            else:
                gate = None
            timeout = self.default_timeout_ms if timeout_ms is None else timeout_ms
            deadline = t0 + timeout * 1_000_000 if timeout > 0 else 0
            if _fault_point:
                _fault("running")
            try:
                self._enter_task(me, idx, deadline, single)
                value, me.measured = self.runner.call(fn, args, kwargs, extras, slot.task_id,
                                                      me.thread_id, t0, idx)
                if _NATIVE_MODULE in sys.modules:  # a native task was unpickled here
                    me.measured = _native_outcome(fn, me.measured)
                if _fault_point:
                    _fault("ran")
            finally:
                self._leave_task(me, single)
                if gate is not None:
                    gate.release()
        except BaseException as exc:  # the task's, or ours: both go back to the app
            # a timeout that landed in _leave_task itself left it undone
            self._leave_task(me, single)
            return serialization.dumps_exception(exc)
        return serialization.dumps_result(value)

    def _fed_value(self, handle: int):
        """The result a chain's previous step fed this slot with (czmp_tasks_feed's chunk).

        Raises:
            SerializationError: a chunk that is not one, a length beyond it,
                or bytes that do not unpickle (the task fails with it).
        """
        size = lib.czmp_arena_chunk_size(self.raw, handle)
        if size < 8:
            raise SerializationError(f"the value fed to this task is in no chunk ({handle:#x})")
        ptr = ffi.cast("char *", lib.czmp_arena_ptr(self.raw, handle))
        n, flags = _FED_HEADER.unpack(ffi.buffer(ptr, 8))
        if n > size - 8:  # written by another worker: bounded before use (issue 10.3)
            raise SerializationError(f"the value fed to this task claims {n} bytes, "
                                     f"beyond its chunk of {size}")
        ok, value = serialization.loads_outcome(flags, ffi.buffer(ptr + 8, n))
        if not ok:
            raise value
        return value

    def _enter_task(self, me: _Running, idx: int, deadline: int, single: bool) -> None:
        with me.lock:
            me.slot, me.deadline_ns, me.fired, me.in_task = idx, deadline, False, True
        if single:
            self.rec.deadline_ns = deadline
        else:
            with self.lock:
                self._publish_deadline()

    def _leave_task(self, me: _Running, single: bool) -> None:
        """Out of the task: no timeout may be raised into this thread from here on."""
        try:
            self._leave_task_once(me, single)
        except TaskTimeoutError:
            # the one raise of this task landed right here: do it again
            self._leave_task_once(me, single)

    def _leave_task_once(self, me: _Running, single: bool) -> None:
        with me.lock:
            if me.in_task and me.fired and not single:
                withdraw_pending_raise()  # drop it if not delivered yet
            me.in_task = False
            me.slot, me.deadline_ns = -1, 0
        if single:
            self.rec.deadline_ns = 0
        else:
            with self.lock:
                self._publish_deadline()

    def _function(self, func_id: int) -> Callable:
        fn = self.functions.get(func_id)
        if fn is None:
            entry = self.seg.func(func_id - 1)
            data = self.payloads.read(entry.handle, entry.len, None)
            fn = self.functions[func_id] = serialization.loads_function(data)
        return fn

    # -- timeouts ---------------------------------------------------------

    def _publish_deadline(self) -> None:
        """The earliest deadline of our threads, for the supervisor; caller holds self.lock
        (a read-then-write: two threads doing it at once could publish a stale one)."""
        deadlines = [r.deadline_ns for r in self.running if r.deadline_ns]
        self.rec.deadline_ns = min(deadlines) if deadlines else 0

    def on_timeout_signal(self, *_: object) -> None:
        """SIGUSR1: raise TaskTimeoutError in every task past its deadline."""
        if self.cfg.get("threads", 1) > 1:
            # the handler runs on the main thread, which may hold a lock we need
            self._timeouts_due.set()
            return
        # one executor thread, the main one: the handler runs between two of
        # its instructions, so the check and the raise cannot be separated
        now = lib.czmp_now_ns()
        for r in list(self.running):
            if not r.in_task or r.fired or not r.deadline_ns or now < r.deadline_ns:
                continue
            r.fired = True
            raise TaskTimeoutError("task exceeded its timeout")

    def _timeouts_loop(self) -> None:
        while True:
            self._timeouts_due.wait()
            self._timeouts_due.clear()
            self._fire_timeouts()

    def _fire_timeouts(self) -> None:
        now = lib.czmp_now_ns()
        with self.lock:
            running = list(self.running)
        for r in running:
            with r.lock:
                if not r.in_task or r.fired or not r.deadline_ns or now < r.deadline_ns:
                    continue
                r.fired = True
                raise_in_thread(r.thread_id, TaskTimeoutError)

    # -- progress -------------------------------------------------------

    def _clear_progress(self) -> None:
        self._progress_dirty = False
        self._write_progress(-1.0, "")

    def _report_progress(self, fraction: float, message: str) -> None:
        self._progress_dirty = True
        self._write_progress(fraction, message)

    def _write_progress(self, fraction: float, message: str) -> None:
        rec = self.rec
        rec.progress_seq += 1  # odd: readers retry
        rec.progress = fraction
        encoded = message.encode("utf-8", "replace")[:47]
        ffi.memmove(rec.progress_msg, encoded + b"\0", len(encoded) + 1)
        rec.progress_seq += 1


#: native_tasks (compiled tasks) is imported only by unpickling such a task
_NATIVE_MODULE = "catzilla_mp.native_tasks"


def _is_native(fn: Callable) -> bool:
    native = sys.modules.get(_NATIVE_MODULE)
    return native is not None and type(fn) in native.NATIVE_TYPES


def _native_outcome(fn: Callable, measured: dict | None) -> dict | None:
    """Add a native task's outcome (compiled or why not, compile time) to what goes back."""
    native = sys.modules[_NATIVE_MODULE]
    if type(fn) not in native.NATIVE_TYPES:
        return measured
    outcome = native.take_outcome()
    if outcome is None:
        return measured
    measured = measured or {}
    measured["native"] = outcome
    return measured


def lower_priority(niceness: int) -> None:
    """Run this process ``niceness`` steps below its parent, as a batch (CPU-bound) job.

    SCHED_BATCH keeps the nice value and tells the scheduler this process
    does not need to preempt others when it wakes: the app's request
    threads win a shared core at once. Where the policy is not there (not
    Linux), the nice value alone does most of it.
    """
    os.nice(niceness)
    if hasattr(os, "SCHED_BATCH"):
        try:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        except OSError:
            pass  # refused (a seccomp profile, a container): nice alone


def main(argv: list[str]) -> int:
    cfg = json.loads(argv[0])
    # Die with the app: the kernel kills us when the supervisor thread that
    # started us ends, and the heartbeat thread catches a re-parenting.
    if lib.czmp_process_die_with_parent(cfg["parent"]) != 0:
        return 3
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if cfg.get("niceness"):
        lower_priority(cfg["niceness"])
    _arm_fault_from_env()
    compat_worker.setup_logging(cfg)
    worker = Worker(cfg)
    signal.signal(signal.SIGTERM, worker.request_stop)
    signal.signal(signal.SIGUSR1, worker.on_timeout_signal)
    try:
        return worker.serve()
    finally:
        # Nothing may use the mapping once it is gone (issue 10.10): the
        # heartbeat thread stops first, and if executor threads are still
        # running (serve() ended by an error) the process exit unmaps it.
        lib.czmp_heartbeat_stop()
        if threading.active_count() == 1:
            worker.seg.detach()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
