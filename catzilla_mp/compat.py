"""The parts of the task API that make options apply, on the app side.

What lives here (the worker side is compat_worker.py):

  * TaskOptions: a task's per-task options beyond Catzilla's four
    (retry_backoff, retry_on / retry_if, memory_limit_mb, enable_profiling),
    validated once, and what of them the worker must know (``extras``).
  * Context propagation: ContextVars registered with ``propagate_context``
    travel with each task and are set in the worker around the call.
  * imap / imap_unordered: streaming map with a bounded number of tasks in
    flight.
  * LogReceiver: the app-side end of worker logging (records from workers
    re-emitted through the app's own ``logging`` handlers).
  * TaskCompiler and HAS_C_EXTENSION: Catzilla's names.

The rules, as documented in the README:

  * memory_limit_mb: enforced only on a task that sets it (``@task`` or
    ``add_task``). Catzilla's TaskConfig default of 100 MB is kept as the
    dataclass default for code that reads it but is never imposed silently:
    a NumPy task routinely peaks above it. Measured as the worker process's
    resident set size (RSS) over its value when the task started: sampled
    every MEMORY_SAMPLE_S while the task runs, and checked once more against
    the kernel's peak (VmHWM, reset at the task's start) when it returns.
  * retry_backoff: "exponential" (base x 2^(n-1), jittered in [0.5, 1],
    capped), "linear" (base x n, capped), "fixed" (base), or a callable
    ``f(attempt) -> seconds`` (attempt counts from 1); base and cap are the
    engine's retry_backoff_base / retry_backoff_cap.
  * retry_on / retry_if: with either set, only a failed attempt whose
    exception is an instance of retry_on (and for which retry_if returns
    true) is retried; both set: both must agree. A retry_if that raises
    counts as "do not retry" (and is logged).
  * Context: only ContextVars registered with ``propagate_context(var)``
    travel (explicit: a request's secrets in other ContextVars stay in the
    app), and only while they hold a value that pickles. The variable must
    live in an importable module (the worker imports it to find the same
    variable); each task runs in a fresh context in the worker, so values
    never leak from one task to the next.
"""
from __future__ import annotations

import collections
import contextvars
import json
import logging
import os
import queue
import random
import socket
import sys
import threading
import weakref
import time
from typing import (TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, Sequence, TypeVar,
                    Union)

from . import compat_worker, serialization
from .compat_worker import PROPAGATED, find_context_var  # noqa: F401 - compat's API
from .errors import SerializationError

if TYPE_CHECKING:  # typing.ParamSpec is 3.10+; type checkers only
    from typing import ParamSpec, Protocol

    from .results import TaskResult

    class BackgroundTasks(Protocol):
        """The engine as these helpers use it (engine.BackgroundTasks, a layer above)."""

        max_workers: int

        def add_task(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> TaskResult: ...

        def task_id_for_log(self, seq: int, slot: Optional[int]) -> Optional[str]: ...

    P = ParamSpec("P")
    R = TypeVar("R")

    class TaskFunction(Protocol[P, R]):
        """What ``@task`` returns, for type checkers: the function, plus ``submit``."""

        def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...

        def submit(self, *args: P.args, **kwargs: P.kwargs) -> TaskResult[R]: ...

T = TypeVar("T")
log = logging.getLogger("catzilla_mp")

BACKOFF_POLICIES = ("exponential", "linear", "fixed")
#: Seconds between RSS samples while a task with a memory limit runs.
MEMORY_SAMPLE_S = 0.005
#: Catzilla's name: the engine's core is C (catzilla_mp._native); tasks
#: themselves are never compiled (see TaskCompiler).
HAS_C_EXTENSION = True


# -- per-task options -------------------------------------------------------------

def check_backoff(value: Any) -> Union[str, Callable[[int], float]]:
    """Validate a retry_backoff value.

    Raises:
        ValueError: an unknown policy name. TypeError: neither a str nor callable.
    """
    if callable(value):
        return value
    if not isinstance(value, str):
        raise TypeError(f"retry_backoff must be one of {BACKOFF_POLICIES} or a callable, "
                        f"not {type(value).__name__}")
    policy = value.strip().lower()
    if policy not in BACKOFF_POLICIES:
        raise ValueError(f"retry_backoff must be one of {BACKOFF_POLICIES} or a callable, "
                         f"not {value!r}")
    return policy


def check_retry_on(value: Any) -> Optional[tuple]:
    """Validate retry_on: an exception class or a tuple of them (None: any).

    Raises:
        TypeError: anything else.
    """
    if value is None:
        return None
    types = value if isinstance(value, tuple) else (value,)
    for t in types:
        if not (isinstance(t, type) and issubclass(t, BaseException)):
            raise TypeError(f"retry_on must be an exception class or a tuple of them, not {t!r}")
    return types


def check_memory_limit(value: Any) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"memory_limit_mb must be a number of MiB, not {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"memory_limit_mb must be > 0, not {value}")
    return value


class TaskOptions:
    """A task's options beyond Catzilla's four; immutable once built."""

    __slots__ = ("backoff", "retry_on", "retry_if", "memory_limit_mb", "profile", "extras")

    def __init__(self, *, backoff: Union[str, Callable[[int], float]] = "exponential",
                 retry_on: Optional[tuple] = None,
                 retry_if: Optional[Callable[[BaseException], bool]] = None,
                 memory_limit_mb: Optional[float] = None, profile: bool = False) -> None:
        self.backoff = check_backoff(backoff)
        self.retry_on = check_retry_on(retry_on)
        if retry_if is not None and not callable(retry_if):
            raise TypeError(f"retry_if must be callable, not {type(retry_if).__name__}")
        self.retry_if = retry_if
        self.memory_limit_mb = check_memory_limit(memory_limit_mb)
        self.profile = bool(profile)
        extras: dict[str, Any] = {}
        if self.memory_limit_mb is not None:
            extras["mem"] = int(self.memory_limit_mb * (1 << 20))
        if self.profile:
            extras["prof"] = True
        #: what the worker must know, or None (then nothing extra travels)
        self.extras = extras or None

    def merged(self, **changes: Any) -> "TaskOptions":
        """A copy with the options given (not None) replaced."""
        fields: dict[str, Any] = {"backoff": self.backoff, "retry_on": self.retry_on, "retry_if": self.retry_if,
                  "memory_limit_mb": self.memory_limit_mb, "profile": self.profile}
        fields.update({k: v for k, v in changes.items() if v is not None})
        return TaskOptions(**fields)

    def is_default(self) -> bool:
        return (self.backoff == "exponential" and self.retry_on is None
                and self.retry_if is None and self.extras is None)

    def should_retry(self, exc: BaseException) -> bool:
        """True if a failed attempt with ``exc`` may be retried under retry_on / retry_if."""
        if self.retry_on is not None and not isinstance(exc, self.retry_on):
            return False
        if self.retry_if is not None:
            try:
                return bool(self.retry_if(exc))
            except Exception:  # noqa: BLE001 - a broken predicate means "do not retry"
                log.exception("retry_if %r raised; the task is not retried", self.retry_if)
                return False
        return True

    def backoff_s(self, attempt: int, base: float, cap: float) -> float:
        """Seconds to wait before attempt ``attempt`` (1 for the first retry)."""
        policy = self.backoff
        if callable(policy):
            try:
                value = float(policy(attempt))
            except Exception:  # noqa: BLE001 - fall back rather than lose the retry
                log.exception("retry_backoff %r raised; using the exponential policy", policy)
                return exponential_backoff(attempt, base, cap)
            return max(0.0, value)
        if policy == "fixed":
            return min(cap, base)
        if policy == "linear":
            return min(cap, base * attempt)
        return exponential_backoff(attempt, base, cap)


def exponential_backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential back-off with "full jitter": uniform in [0.5, 1] x base x 2^(attempt-1), capped."""
    ceiling = min(cap, base * (2 ** (attempt - 1)))
    return ceiling * (0.5 + random.random() * 0.5)


def options_from_config(config: Any, explicit: Iterable[str]) -> Optional[TaskOptions]:
    """The TaskOptions of a ``@task(...)`` TaskConfig, or None when all are defaults.

    ``explicit`` names the options the decorator was given: memory_limit_mb
    applies only when given (TaskConfig's default of 100 is Catzilla's).
    """
    opts = TaskOptions(
        backoff=config.retry_backoff, retry_on=config.retry_on, retry_if=config.retry_if,
        memory_limit_mb=config.memory_limit_mb if "memory_limit_mb" in explicit else None,
        profile=config.enable_profiling)
    return None if opts.is_default() else opts


def apply_extras(task: "TaskResult", extras: dict) -> None:
    """App side: record what the worker measured about the task's attempt."""
    mem = extras.get("mem_mb")
    if mem is not None:
        task.memory_mb = mem
    prof = extras.get("profile")
    if prof is not None:
        task.profile = prof
    native = extras.get("native")
    if native is not None:
        task.native = native


# -- context propagation -------------------------------------------------------------

# PROPAGATED (name -> (ContextVar, module that registered it)) and
# find_context_var live in compat_worker: the worker side reads them, and it
# sits below this module.


def propagate_context(var: contextvars.ContextVar, module: Optional[str] = None) -> contextvars.ContextVar:
    """Register ``var``: its value at add_task time is set around the task in the worker.

    Call it at import time of the module that defines ``var`` (the worker
    imports that module to find the same variable). Names must be unique.

    Args:
        var: the ContextVar.
        module: the importable module defining it (default: the caller's).
    Returns:
        ``var``, so it can wrap the definition.
    Raises:
        TypeError: ``var`` is not a ContextVar. ValueError: another variable
            of that name is registered.
    """
    if not isinstance(var, contextvars.ContextVar):
        raise TypeError(f"propagate_context needs a contextvars.ContextVar, not {type(var).__name__}")
    if module is None:
        module = sys._getframe(1).f_globals.get("__name__", "__main__")
    known = PROPAGATED.get(var.name)
    if known is not None and known[0] is not var:
        raise ValueError(f"another ContextVar named {var.name!r} is already propagated")
    PROPAGATED[var.name] = (var, module)
    return var


def capture_context() -> Optional[dict[str, tuple[str, Any]]]:
    """The registered variables set in the current context: {name: (module, value)}, or None.

    A value that does not pickle is left out (and logged once per variable).
    """
    if not PROPAGATED:
        return None
    out = {}
    for name, (var, module) in PROPAGATED.items():
        try:
            value = var.get()
        except LookupError:
            continue
        try:
            serialization.dumps(value)
        except SerializationError:
            log.warning("ContextVar %r holds an unpicklable value; not propagated", name)
            continue
        out[name] = (module, value)
    return out or None


def add_context(task: "TaskResult") -> None:
    """Attach the registered context variables' values to ``task``'s worker extras."""
    ctx = capture_context()
    if ctx is not None:
        task.wextras = dict(task.wextras or {}, ctx=ctx)


# -- streaming map -------------------------------------------------------------------

def default_in_flight(engine: "BackgroundTasks") -> int:
    return 2 * max(1, engine.max_workers)


def imap(engine: "BackgroundTasks", fn: Callable[..., T], iterables: tuple,
         max_in_flight: Optional[int], timeout: Optional[float]) -> Iterator[T]:
    """Results of ``fn(*args)`` in input order, at most ``max_in_flight`` tasks submitted ahead."""
    bound = _bound(engine, max_in_flight)
    deadline = None if timeout is None else time.monotonic() + timeout
    pending: collections.deque = collections.deque()
    calls = zip(*iterables)
    try:
        for args in calls:
            if len(pending) >= bound:
                yield pending.popleft().wait(_left(deadline))
            pending.append(engine.add_task(fn, *args, max_retries=0))
        while pending:
            yield pending.popleft().wait(_left(deadline))
    finally:
        for t in pending:  # the consumer stopped early: do not run what it will never read
            t.cancel()


def imap_unordered(engine: "BackgroundTasks", fn: Callable[..., T], iterables: tuple,
                   max_in_flight: Optional[int], timeout: Optional[float]) -> Iterator[T]:
    """Results of ``fn(*args)`` as they finish, at most ``max_in_flight`` tasks in flight."""
    bound = _bound(engine, max_in_flight)
    deadline = None if timeout is None else time.monotonic() + timeout
    done: "queue.SimpleQueue[TaskResult]" = queue.SimpleQueue()
    in_flight: set = set()
    calls = iter(zip(*iterables))
    exhausted = False
    try:
        while True:
            while not exhausted and len(in_flight) < bound:
                try:
                    args = next(calls)
                except StopIteration:
                    exhausted = True
                    break
                t = engine.add_task(fn, *args, max_retries=0)
                in_flight.add(t)
                t.add_callback(_put_when_done(done, t))
            if not in_flight:
                return
            try:
                t = done.get(timeout=_left(deadline))
            except queue.Empty:
                raise TimeoutError(f"imap_unordered: no result within {timeout} s") from None
            in_flight.discard(t)
            yield t.wait(0)
    finally:
        for t in in_flight:
            t.cancel()


def _put_when_done(done: "queue.SimpleQueue[TaskResult]", t: "TaskResult") -> Callable[[Any], None]:
    return lambda _value: done.put(t)


def _bound(engine: "BackgroundTasks", max_in_flight: Optional[int]) -> int:
    if max_in_flight is None:
        return default_in_flight(engine)
    if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int):
        raise TypeError(f"max_in_flight must be an int, not {type(max_in_flight).__name__}")
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, not {max_in_flight}")
    return max_in_flight


def _left(deadline: Optional[float]) -> Optional[float]:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


# -- worker logs ----------------------------------------------------------------------

#: Largest log datagram a worker sends; longer messages are cut.
LOG_DATAGRAM_BYTES = 60_000


class LogReceiver:
    """Receives log records from the engine's workers and hands them to the app's handlers.

    One datagram socket in the abstract namespace (nothing on disk), one
    thread. Records arrive as JSON (never pickle: whoever can reach the
    socket can at most write log lines) and are re-emitted through
    ``logging.getLogger(record.name)`` with ``task_id`` and ``worker_pid``
    set, so the app's handlers and filters apply as to its own records.
    """

    def __init__(self, engine: "BackgroundTasks") -> None:
        # Task ids are random (issue 12.1): a worker names its task by slot and
        # sequence number, and the engine maps those to the id. Weakly: the
        # receiver must not keep a dropped engine alive (issue 11.14).
        self._resolve = weakref.WeakMethod(engine.task_id_for_log)
        self._on_init_failure: Optional[Callable[[dict], None]] = None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.address = f"\0czmp-log-{os.getpid()}-{os.urandom(6).hex()}"
        self.sock.bind(self.address)
        self._running = True
        self._thread = threading.Thread(target=self._run, name="czmp-logs", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                data = self.sock.recv(LOG_DATAGRAM_BYTES + 4096)
            except OSError:
                return
            if not self._running:
                return  # close() woke us with an empty datagram: an idle engine never polls
            try:
                self._emit(json.loads(data))
            except Exception:  # noqa: BLE001 - one bad datagram must not stop the thread
                pass

    def _emit(self, d: dict) -> None:
        seq = d.pop("task_seq", None)
        slot = d.pop("task_slot", None)
        resolve = self._resolve()
        d["task_id"] = resolve(seq, slot) if resolve is not None and seq else None
        logger = logging.getLogger(d.get("name") or "root")
        level = int(d.get("levelno", logging.INFO))
        if not logger.isEnabledFor(level):
            return
        record = logging.makeLogRecord(d)
        logger.handle(record)

    def close(self) -> None:
        self._running = False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as waker:
                waker.sendto(b"", self.address)
        except OSError:
            pass
        self._thread.join(timeout=2)
        self.sock.close()


def worker_log_level() -> int:
    """The level workers log at: the app's root logger's, as configured now."""
    return logging.getLogger().getEffectiveLevel()


# -- worker initializer -----------------------------------------------------------------

#: The pickled initializer and initargs travel in the worker's command line.
INITIALIZER_MAX_BYTES = 64 << 10


def pack_initializer(initializer: Callable[..., Any], initargs: tuple) -> str:
    """(initializer, initargs) pickled (cloudpickle) and base64-encoded for the worker config.

    Raises:
        SerializationError: they do not pickle.
        ValueError: the pickle exceeds INITIALIZER_MAX_BYTES (pass a path, not the data).
    """
    import base64

    pair: Any = (initializer, tuple(initargs))
    data = serialization.dumps_function(pair)
    if len(data) > INITIALIZER_MAX_BYTES:
        raise ValueError(f"initializer and initargs pickle to {len(data)} bytes, over "
                         f"{INITIALIZER_MAX_BYTES}: pass a path or a name, not the data itself")
    return base64.b64encode(data).decode("ascii")


# -- thread mode ------------------------------------------------------------------------

def run_thread_initializer(options: Any) -> Optional[BaseException]:
    """Thread mode: run the engine's initializer in this executor thread (as
    ThreadPoolExecutor does); the WorkerInitializerError its tasks get if it raised."""
    if options.initializer is None:
        return None
    from .errors import WorkerInitializerError

    try:
        options.initializer(*options.initargs)
        return None
    except BaseException as exc:  # noqa: BLE001 - reported to every task of this thread
        log.error("the engine's initializer raised in thread %s", threading.current_thread().name,
                  exc_info=True)
        err = WorkerInitializerError(f"the engine's initializer raised in executor thread "
                                     f"{threading.current_thread().name}: "
                                     f"{type(exc).__name__}: {exc}")
        err.__cause__ = exc
        return err


_NATIVE_TYPES: tuple = ()


def _native_types() -> tuple:
    """The native task types, imported on first use (most apps never submit one)."""
    global _NATIVE_TYPES
    if not _NATIVE_TYPES:
        from .native_tasks import NATIVE_TYPES

        _NATIVE_TYPES = NATIVE_TYPES
    return _NATIVE_TYPES


def _run_native(task: "TaskResult", args: tuple, kwargs: dict) -> Any:
    """Thread mode: a native task's call, and its outcome (compiled or why not) on the task."""
    from .native_tasks import take_outcome

    try:
        return task.fn(*args, **kwargs)
    finally:
        task.native = take_outcome()


def run_in_thread(task: "TaskResult", args: tuple, kwargs: dict,
                  init_error: Optional[BaseException]) -> Any:
    """Thread mode: call the task's function with its options (profiling, context)."""
    if init_error is not None:
        raise init_error
    extras = task.wextras
    if extras is None:
        if type(task.fn) in _native_types():
            return _run_native(task, args, kwargs)
        return task.fn(*args, **kwargs)
    measured: dict[str, Any] = {}
    fn = task.fn
    call: Callable[[], Any] = lambda: fn(*args, **kwargs)  # noqa: E731
    if extras.get("prof"):
        call = compat_worker.profiled(call, measured)
    if extras.get("ctx"):
        call = compat_worker.in_context(call, extras["ctx"])
    try:
        return call()
    finally:
        if "profile" in measured:
            task.profile = measured["profile"]


# -- Catzilla's TaskCompiler -----------------------------------------------------------------

class TaskCompiler:
    """Catzilla's task compiler: numba for Python functions, cffi for C source.

    ``compile_task(func)`` returns what ``add_task(func, compile_to_c=True)``
    submits: a JitTask that numba compiles in each worker (once per worker
    and argument types) and runs without the GIL, or runs as Python when it
    cannot, saying why in TaskStats. ``compile_c(source, declaration)``
    builds a C function here and now (a compile error is raised here) into
    a module each worker loads once. See docs/native-tasks.md.
    """

    def __init__(self, *, cache_dir: Optional[str] = None) -> None:
        #: where compile_c keeps built modules (None: native_tasks.default_cache_dir())
        self.cache_dir = cache_dir
        self._compilation_cache: dict[str, Any] = {}

    def can_compile_to_c(self, func: Callable) -> bool:
        """True if ``func`` is a Python function and numba is installed here.

        Whether numba accepts the function's code and argument types is
        known only when it compiles, in the worker: a function it rejects
        still runs, as Python, with TaskStats.compile_error saying why.
        """
        import importlib.util
        import types

        return (isinstance(func, types.FunctionType)
                and importlib.util.find_spec("numba") is not None)

    def compile_task(self, func: Callable) -> Optional[Any]:
        """The JitTask for ``func`` (submit it like ``func``), or None if it cannot be compiled."""
        if not self.can_compile_to_c(func):
            return None
        from .native_tasks import JitTask

        key = f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', id(func))}"
        task = self._compilation_cache.get(key)
        if task is None or task.fn is not func:
            task = self._compilation_cache[key] = JitTask(func)
        return task

    def compile_c(self, source: str, declaration: str, *,
                  extra_compile_args: Sequence[str] = ()) -> Any:
        """Build a C function with cffi (once per source: cached); return its CTask.

        Args:
            source: C source defining the function.
            declaration: its prototype, e.g.
                ``"double dot(const double *a, const double *b, size_t n)"``.
            extra_compile_args: compiler flags added to -O2.

        Returns:
            A CTask: ``engine.add_task(ctask, *c_arguments)``.

        Raises:
            NativeCompileError: the compiler's message, if the source does not compile.
        """
        from .native_tasks import compile_c

        return compile_c(source, declaration, extra_compile_args=extra_compile_args,
                         cache_dir=self.cache_dir)
