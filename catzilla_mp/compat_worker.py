"""The worker side of the per-task options: memory, profiling, context, logs, initializer.

Imported by the worker loop (backends/process/worker.py; light: no engine,
no psutil) and by compat.py. What it does per task, and when:

  * memory: the kernel's peak-RSS mark (VmHWM) is reset when a task starts
    and the RSS noted, and the peak over that start read when it ends
    (``TaskStats.memory_usage_mb``), for every task except those of a
    function whose previous run in this worker took under MEASURE_MIN_NS:
    the /proc calls cost ~3 us + ~8 us, a quarter of a trivial task's cost,
    and nothing beside a task of a millisecond or more. A task with ``memory_limit_mb``
    also gets a sampler thread that reads the RSS every MEMORY_SAMPLE_S and
    raises MemoryLimitError inside the task when it is over; if the task
    does not stop within MEMORY_KILL_GRACE_S (stuck in C code), the worker
    exits with MEMORY_EXIT_CODE. A limited task whose peak was over the
    limit fails with MemoryLimitError even if it returned, and the worker is
    recycled after any MemoryLimitError (its heap may stay large).
  * profiling: the call runs under cProfile; the top PROFILE_TOP functions
    by cumulative time go back with the outcome.
  * context: registered ContextVars (compat.propagate_context) are set in a
    fresh Context around the call.
  * logs: a root handler sends every record as JSON to the app's
    LogReceiver, tagged with the running task's number.
"""
from __future__ import annotations

import base64
import contextvars
import importlib
import json
import logging
import os
import pickle
import socket
import threading
import time
import traceback
from typing import Any, Callable, Optional

from .errors import MemoryLimitError, WorkerInitializerError
from .thread_raise import raise_in_thread

#: A function whose last run here was shorter is not measured next time
#: (measuring costs ~11 us: nothing for a 1 ms task, a lot for a 15 us one).
MEASURE_MIN_NS = 1_000_000
#: Functions whose last duration is remembered (cleared when full: lambdas
#: travel by value and are new objects each time).
FAST_CACHE = 4096
#: Seconds between RSS samples while a task with a memory limit runs.
MEMORY_SAMPLE_S = 0.005
#: Seconds a task over its limit gets to stop once MemoryLimitError was raised in it.
MEMORY_KILL_GRACE_S = 2.0
#: Exit code of a worker that had to end itself over a task's memory limit.
MEMORY_EXIT_CODE = 77
#: Functions kept from a task's profile.
PROFILE_TOP = 20

_PAGE = os.sysconf("SC_PAGE_SIZE")
_MiB = float(1 << 20)
_local = threading.local()


# -- logs ------------------------------------------------------------------------------

class ForwardHandler(logging.Handler):
    """Sends each record to the app's LogReceiver (catzilla_mp.compat) as one datagram."""

    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # a stuck app must not stall tasks for long: a record it cannot take is dropped
        self.sock.settimeout(0.1)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            d = {
                "name": record.name, "levelno": record.levelno, "levelname": record.levelname,
                "msg": record.getMessage()[:60_000], "pathname": record.pathname,
                "filename": record.filename, "module": record.module, "lineno": record.lineno,
                "funcName": record.funcName, "created": record.created, "msecs": record.msecs,
                "process": record.process, "processName": "catzilla_mp-worker",
                "threadName": record.threadName, "worker_pid": os.getpid(),
                "task_seq": getattr(_local, "seq", None),
                "task_slot": getattr(_local, "slot", None),
            }
            if record.exc_info:
                d["exc_text"] = "".join(traceback.format_exception(*record.exc_info))[:60_000]
            elif record.exc_text:
                d["exc_text"] = record.exc_text
            if record.stack_info:
                d["stack_info"] = record.stack_info[:10_000]
            self.sock.sendto(json.dumps(d, default=str).encode(), self.address)
        except Exception:  # noqa: BLE001 - logging must never break a task
            pass


def setup_logging(cfg: dict) -> None:
    """Route the worker's logging to the app (when the engine forwards logs)."""
    address = cfg.get("log")
    if not address:
        return
    root = logging.getLogger()
    root.addHandler(ForwardHandler(address))
    root.setLevel(cfg.get("log_level", logging.WARNING))


# -- initializer ------------------------------------------------------------------------

def run_initializer(cfg: dict) -> Optional[WorkerInitializerError]:
    """Run the engine's initializer once; the error every task will get if it raised."""
    packed = cfg.get("init")
    if not packed:
        return None
    try:
        initializer, initargs = pickle.loads(base64.b64decode(packed))
        initializer(*initargs)
        return None
    except BaseException as exc:  # noqa: BLE001 - reported to every task this worker takes
        logging.getLogger("catzilla_mp").error(
            "worker %d: the engine's initializer raised %s", os.getpid(), type(exc).__name__,
            exc_info=True)
        try:
            raise WorkerInitializerError(
                f"the engine's initializer raised in worker process {os.getpid()}: "
                f"{type(exc).__name__}: {exc}") from exc
        except WorkerInitializerError as err:
            return err


# -- memory ------------------------------------------------------------------------------

class Memory:
    """The worker's RSS, its peak mark, and the sampler thread for memory limits."""

    def __init__(self) -> None:
        self.statm = _open("/proc/self/statm", os.O_RDONLY)
        self.status = _open("/proc/self/status", os.O_RDONLY)
        self.clear_refs = _open("/proc/self/clear_refs", os.O_WRONLY)
        #: the RSS can be read (limits are enforced by sampling it)
        self.ok = self.statm >= 0
        #: the kernel's peak mark can be reset and read (some containers forbid
        #: clear_refs: then the peak is what the sampler saw, or the RSS at the end)
        self.has_peak = self.status >= 0 and self.clear_refs >= 0
        self._cond = threading.Condition()
        self._watch: Optional[_Watch] = None
        self._thread: Optional[threading.Thread] = None

    def rss(self) -> int:
        return int(os.pread(self.statm, 64, 0).split()[1]) * _PAGE

    def start(self) -> int:
        """Reset the peak mark; returns the RSS now (the task's baseline), or -1."""
        if not self.ok:
            return -1
        try:
            if self.has_peak:
                try:
                    os.write(self.clear_refs, b"5")
                except OSError:
                    self.has_peak = False
            return self.rss()
        except OSError:
            self.ok = False
            return -1

    def peak(self) -> int:
        """The peak RSS since start(), in bytes (VmHWM); the RSS now without a peak mark."""
        if not self.has_peak:
            return self.rss()
        s = os.pread(self.status, 4096, 0)
        i = s.index(b"VmHWM:")
        return int(s[i + 6:s.index(b"kB", i)]) << 10

    # -- the sampler -----------------------------------------------------------

    def watch(self, thread_id: int, baseline: int, limit: int) -> "_Watch":
        w = _Watch(thread_id, baseline, limit)
        with self._cond:
            self._watch = w
            if self._thread is None:
                self._thread = threading.Thread(target=self._sample, name="czmp-memory",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()
        return w

    def unwatch(self, w: "_Watch") -> None:
        with self._cond:
            w.done = True
            if self._watch is w:
                self._watch = None

    def _sample(self) -> None:
        while True:
            with self._cond:
                while self._watch is None:
                    self._cond.wait()
                w = self._watch
            time.sleep(MEMORY_SAMPLE_S)
            if w.done:
                continue
            try:
                used = self.rss() - w.baseline
            except OSError:
                continue
            if w.fired_at:
                if time.monotonic() - w.fired_at > MEMORY_KILL_GRACE_S and not w.done:
                    logging.getLogger("catzilla_mp").error(
                        "a task over its memory limit did not stop; worker %d exits",
                        os.getpid())
                    os._exit(MEMORY_EXIT_CODE)
                continue
            if used > w.limit:
                w.peak = max(w.peak, used)
                w.fired_at = time.monotonic()
                raise_in_thread(w.thread_id, MemoryLimitError)


class _Watch:
    __slots__ = ("thread_id", "baseline", "limit", "peak", "fired_at", "done")

    def __init__(self, thread_id: int, baseline: int, limit: int) -> None:
        self.thread_id = thread_id
        self.baseline = baseline
        self.limit = limit
        self.peak = 0
        self.fired_at = 0.0
        self.done = False


def _open(path: str, flags: int) -> int:
    try:
        return os.open(path, flags)
    except OSError:
        return -1



# -- running one task ----------------------------------------------------------------------

class Runner:
    """Calls task functions with their options; one per worker process."""

    def __init__(self) -> None:
        self.memory = Memory()
        #: set when a task hit its memory limit: the worker stops after publishing
        self.recycle = False
        #: function -> True if its last run took under MEASURE_MIN_NS (not measured next)
        self._fast: dict[Any, bool] = {}

    def call(self, fn: Callable, args: tuple, kwargs: dict, extras: Optional[dict],
             seq: int, thread_id: int, t0: int, slot: int = -1) -> tuple[Any, Optional[dict]]:
        """Run ``fn(*args, **kwargs)`` with the task's options.

        Returns:
            (the value, what was measured or None). Raises the task's
            exception, or MemoryLimitError.
        """
        _local.seq = seq
        _local.slot = slot  # with seq, names the task to the app's LogReceiver
        try:
            if extras is None:
                try:
                    fast = self._fast.get(fn, False)
                except TypeError:  # an unhashable callable: measured every time
                    fast = False
                if fast:
                    value = fn(*args, **kwargs)
                    if time.monotonic_ns() - t0 >= MEASURE_MIN_NS:
                        self._fast[fn] = False
                    return value, None
            memory = self.memory
            baseline = memory.start() if memory.ok else -1
            if extras is None:
                value = fn(*args, **kwargs)
                measured = None
                self._remember(fn, time.monotonic_ns() - t0 < MEASURE_MIN_NS)
            else:
                value, measured = self._call_with(fn, args, kwargs, extras, baseline, thread_id)
        finally:
            _local.seq = None
        if baseline >= 0:
            measured = measured or {}
            measured.setdefault("mem_mb", max(0, memory.peak() - baseline) / _MiB)
        return value, measured

    def _remember(self, fn: Callable, fast: bool) -> None:
        try:
            if len(self._fast) >= FAST_CACHE:
                self._fast.clear()
            self._fast[fn] = fast
        except TypeError:
            pass

    def _call_with(self, fn: Callable, args: tuple, kwargs: dict, extras: dict,
                   baseline: int, thread_id: int) -> tuple[Any, dict]:
        measured: dict[str, Any] = {}
        ctx = extras.get("ctx")
        call: Callable[[], Any] = lambda: fn(*args, **kwargs)  # noqa: E731
        if extras.get("prof"):
            call = profiled(call, measured)
        if ctx:
            call = in_context(call, ctx)
        limit = extras.get("mem")
        if not limit:
            return call(), measured
        if baseline < 0:
            raise MemoryLimitError("memory_limit_mb cannot be enforced in this worker: its RSS "
                                   "cannot be read (/proc/self/statm)", limit / _MiB, None)
        watch = self.memory.watch(thread_id, baseline, limit)
        try:
            value = call()
        except MemoryLimitError:
            if not watch.fired_at:
                raise  # the task's own
            self._over(watch, measured)
        finally:
            self.memory.unwatch(watch)
        # a spike between two samples still shows in the kernel's peak mark
        watch.peak = max(watch.peak, self.memory.peak() - baseline)
        if watch.peak > limit:
            self._over(watch, measured)
        measured["mem_mb"] = watch.peak / _MiB
        return value, measured

    def _over(self, watch: _Watch, measured: dict) -> None:
        self.recycle = True
        peak = max(watch.peak, self.memory.peak() - watch.baseline)
        limit_mb, peak_mb = watch.limit / _MiB, peak / _MiB
        raise MemoryLimitError(
            f"the task used {peak_mb:.1f} MiB over its start (RSS), over its memory_limit_mb "
            f"of {limit_mb:g}; it was stopped and its worker recycled", limit_mb, peak_mb)


def profiled(call: Callable[[], Any], measured: dict) -> Callable[[], Any]:
    def run() -> Any:
        import cProfile

        prof = cProfile.Profile()
        try:
            return prof.runcall(call)
        finally:
            measured["profile"] = top_functions(prof)
    return run


def top_functions(prof: Any, n: int = PROFILE_TOP) -> list[dict[str, Any]]:
    """The ``n`` functions with the most cumulative time in a cProfile run."""
    import pstats

    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    rows = sorted(stats.items(), key=lambda kv: kv[1][3], reverse=True)
    out = []
    for (filename, line, name), (_cc, calls, tt, ct, _callers) in rows:
        if name == "<lambda>" and filename == __file__:
            continue  # our own wrapper
        where = name if filename == "~" else f"{filename}:{line}({name})"
        out.append({"function": where, "calls": calls, "total_ms": tt * 1e3,
                    "cumulative_ms": ct * 1e3})
        if len(out) >= n:
            break
    return out


#: name -> (ContextVar, module that registered it): compat.propagate_context
#: registers here (the app side), find_context_var reads (the worker side).
PROPAGATED: dict[str, tuple[contextvars.ContextVar, str]] = {}


def find_context_var(name: str, module: str) -> Optional[contextvars.ContextVar]:
    """Worker side: the registered variable ``name``, importing ``module`` if needed."""
    known = PROPAGATED.get(name)
    if known is None and module != "__main__":
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - reported below as "not found"
            pass
        known = PROPAGATED.get(name)
    return known[0] if known is not None else None


def in_context(call: Callable[[], Any], ctx: dict) -> Callable[[], Any]:
    def run() -> Any:
        for name, (module, value) in ctx.items():
            var = find_context_var(name, module)
            if var is None:
                var = contextvars.ContextVar(name)  # not importable: visible to nobody
            var.set(value)
        return call()
    return lambda: contextvars.Context().run(run)
