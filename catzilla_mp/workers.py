"""The worker process: take tasks from shared memory, run them, publish outcomes.

Started by the supervisor as ``python -m catzilla_mp.workers '<json>'``
(a fresh interpreter: never a fork of a threaded app). Its threads:

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
import sys
import threading
from typing import Callable

from . import _core, progress, serialization
from ._native import ffi, lib
from .errors import PayloadTooLargeError, TaskTimeoutError
from .payloads import Payloads

#: How long one take() sleeps before looking at the stop flag again. Longer
#: costs nothing while idle (the futex wakes us for work); it bounds how late
#: a SIGTERM-requested stop is noticed.
TAKE_TIMEOUT_NS = 200_000_000
HEARTBEAT_NS = 100_000_000


#: Test-only fault injection: CZMP_WORKER_FAULT="<point>:<countdown>:<claim file>".
#: The first worker that creates <claim file> (O_EXCL) arms <point>, and
#: SIGKILLs itself the <countdown>-th time it gets there; replacements do not
#: re-arm, so a test sees exactly one crash. Points in this file:
#:   taken      the slot is RUNNING (ours), nothing of the task has run yet
#:   running    inside the task, before the function is called
#:   ran        the function returned, its result not yet written
#:   publishing the result is in the slot, the slot not yet DONE
#: and the C core's own points by number (CZMP_FAULT_*), e.g. "c5" for
#: CZMP_FAULT_FINISH_DONE (DONE, hint not yet in the result ring).
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
    else:
        _fault_point, _fault_countdown = point, int(countdown)


def _fault(point: str) -> None:
    global _fault_countdown
    if _fault_point == point:
        _fault_countdown -= 1
        if _fault_countdown <= 0:
            os.kill(os.getpid(), signal.SIGKILL)


class _Running:
    """What one executor thread is running now."""

    __slots__ = ("slot", "deadline_ns", "thread_id", "fired", "in_task")

    def __init__(self, thread_id: int) -> None:
        self.slot = -1
        self.deadline_ns = 0
        self.thread_id = thread_id
        self.fired = False
        self.in_task = False


class Worker:
    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.index: int = cfg["index"]
        self.seg = _core.Segment.attach(cfg["segment"])
        self.raw = self.seg.raw
        self.rec = self.seg.worker(self.index)
        self.payloads = Payloads(self.seg, cfg["max_payload_bytes"], ident_base=self.index + 1)
        self.default_timeout_ms: int = cfg["default_timeout_ms"]
        self.max_tasks: int = cfg.get("max_tasks", 0)
        self.holder = _core.holder_worker(self.index)
        self.functions: dict[int, Callable] = {}
        self.stop = False
        self.done = 0
        self.running: list[_Running] = []
        self.lock = threading.Lock()

    # -- life cycle -----------------------------------------------------

    def serve(self) -> int:
        rec = self.rec
        rec.pid = os.getpid()
        rec.started_ns = lib.czmp_now_ns()
        rec.state = lib.CZMP_WORKER_IDLE
        _core.check(lib.czmp_heartbeat_start(self.raw, self.index, HEARTBEAT_NS), "heartbeat")
        progress.set_process_sink(self._report_progress)
        threads = [threading.Thread(target=self._loop, name=f"czmp-exec-{i}", daemon=True)
                   for i in range(1, self.cfg.get("threads", 1))]
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
        buf = ffi.new("uint32_t[1]")
        raw, header = self.raw, self.seg.header
        while not self.stop:
            n = lib.czmp_tasks_take(raw, self.index, buf, 1, TAKE_TIMEOUT_NS)
            if n <= 0:
                if header.shutdown:
                    break
                continue
            self._run(buf[0], me)
            self.done += 1
            if self.max_tasks and self.done >= self.max_tasks:
                self.stop = True  # recycled: the supervisor starts a fresh worker

    def _run(self, idx: int, me: _Running) -> None:
        slot = lib.czmp_slot(self.raw, idx)
        rec = self.rec
        if _fault_point:
            _fault("taken")
        t0 = lib.czmp_now_ns()
        rec.current_slot = idx + 1
        rec.state = lib.CZMP_WORKER_BUSY
        flags, out = self._execute(slot, idx, me, t0)
        try:
            handle, n = self.payloads.write(out, slot.result_inline, _core.INLINE_RESULT, self.holder)
        except PayloadTooLargeError as exc:
            flags, out = serialization.dumps_exception(exc)
            handle, n = self.payloads.write(out, slot.result_inline, _core.INLINE_RESULT, self.holder)
        slot.result_handle = handle
        slot.result_len = n
        slot.result_flags = flags
        if _fault_point:
            _fault("publishing")
        rec.current_slot = 0
        rec.state = lib.CZMP_WORKER_IDLE
        rec.busy_ns += lib.czmp_now_ns() - t0
        if flags == serialization.OUTCOME_OK:
            rec.tasks_done += 1
        else:
            rec.tasks_failed += 1
        lib.czmp_tasks_finish(self.raw, self.index, idx)

    def _execute(self, slot, idx: int, me: _Running, t0: int) -> tuple[int, bytes]:
        try:
            data = self.payloads.read(slot.args_handle, slot.args_len, slot.args_inline)
            args, kwargs, timeout_ms, fn_bytes = serialization.loads_call(data)
            fn = (serialization.loads_function(fn_bytes) if fn_bytes is not None
                  else self._function(slot.func_id))
            timeout = self.default_timeout_ms if timeout_ms is None else timeout_ms
            self._arm(me, idx, t0 + timeout * 1_000_000 if timeout > 0 else 0)
            if _fault_point:
                _fault("running")
            try:
                me.in_task = True
                value = fn(*args, **kwargs)
                me.in_task = False
                if _fault_point:
                    _fault("ran")
            finally:
                me.in_task = False
                self._disarm(me)
        except BaseException as exc:  # the task's, or ours: both go back to the app
            return serialization.dumps_exception(exc)
        return serialization.dumps_result(value)

    def _function(self, func_id: int) -> Callable:
        fn = self.functions.get(func_id)
        if fn is None:
            entry = self.seg.func(func_id - 1)
            data = self.payloads.read(entry.handle, entry.len, None)
            fn = self.functions[func_id] = serialization.loads_function(data)
        return fn

    # -- timeouts ---------------------------------------------------------

    def _arm(self, me: _Running, idx: int, deadline_ns: int) -> None:
        me.slot, me.deadline_ns, me.fired = idx, deadline_ns, False
        self._publish_deadline()

    def _disarm(self, me: _Running) -> None:
        me.slot, me.deadline_ns = -1, 0
        self._publish_deadline()

    def _publish_deadline(self) -> None:
        deadlines = [r.deadline_ns for r in self.running if r.deadline_ns]
        self.rec.deadline_ns = min(deadlines) if deadlines else 0

    def on_timeout_signal(self, *_: object) -> None:
        """SIGUSR1: raise TaskTimeoutError in every task past its deadline."""
        now = lib.czmp_now_ns()
        for r in list(self.running):
            if not r.in_task or r.fired or not r.deadline_ns or now < r.deadline_ns:
                continue
            r.fired = True
            if r.thread_id == threading.main_thread().ident:
                raise TaskTimeoutError("task exceeded its timeout")
            _async_raise(r.thread_id, TaskTimeoutError)

    # -- progress -------------------------------------------------------

    def _report_progress(self, fraction: float, message: str) -> None:
        rec = self.rec
        rec.progress_seq += 1  # odd: readers retry
        rec.progress = fraction
        encoded = message.encode("utf-8", "replace")[:47]
        ffi.memmove(rec.progress_msg, encoded + b"\0", len(encoded) + 1)
        rec.progress_seq += 1


def _async_raise(thread_id: int, exc_type: type) -> None:
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))


def main(argv: list[str]) -> int:
    cfg = json.loads(argv[0])
    # Die with the app: the kernel kills us when the supervisor thread that
    # started us ends, and the heartbeat thread catches a re-parenting.
    if lib.czmp_process_die_with_parent(cfg["parent"]) != 0:
        return 3
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if cfg.get("niceness"):
        os.nice(cfg["niceness"])
    _arm_fault_from_env()
    worker = Worker(cfg)
    signal.signal(signal.SIGTERM, worker.request_stop)
    signal.signal(signal.SIGUSR1, worker.on_timeout_signal)
    try:
        return worker.serve()
    finally:
        worker.seg.detach()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
