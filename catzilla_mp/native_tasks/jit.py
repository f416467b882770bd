"""compile_to_c: a Python function compiled by numba in each worker, run without the GIL.

    app                                  worker process (each)
    ---                                  ---------------------
    add_task(f, compile_to_c=True)
      -> JitTask(f) (one per function,   executor thread i: JitTask.__call__(*args)
         keyed by a hash of its pickle)     _Compiled for key (once per process):
      -> pickled like any function            numba.njit(f, nogil=True)   <- import numba here
                                            per argument types (once per process):
                                              dispatcher.compile(types)   <- compile_ms
                                            dispatcher(*args)             <- GIL released
                                            cannot compile? f(*args) as Python, with the reason
                                         -> take_outcome(): {"compiled", "compile_error",
                                            "compile_ms"} rides back with the result (extras)

The app never imports numba: compilation happens where the code runs, once
per worker process and argument types, and every executor thread of that
worker then runs the machine code at once (numba's ``nogil=True``). A
function numba cannot compile (unsupported types or calls, numba not
installed, compilation disabled on the engine) runs as plain Python; the
outcome says so and why, so TaskStats never claims a compilation that did
not happen.
"""
from __future__ import annotations

import hashlib
import inspect
import re
import threading
import time
import types
from typing import Any, Callable, Optional

#: Longest compile_error kept (numba's messages quote whole source lines).
MAX_ERROR_CHARS = 2000
NUMBA_MISSING = ("numba is not installed in the worker (pip install numba, "
                 "or the catzilla_mp[numba] extra): the task ran as Python")
DISABLED = ("compilation is disabled on this engine (enable_c_compilation=False): "
            "the task ran as Python")

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # numba colours its messages for terminals
_tls = threading.local()
_lock = threading.Lock()
#: key -> _Compiled, per process (a worker compiles each function once)
_compiled: dict[str, "_Compiled"] = {}


def take_outcome() -> Optional[dict]:
    """What the last native call on this thread reported (and forget it), or None."""
    out = getattr(_tls, "outcome", None)
    _tls.outcome = None
    return out


def report_outcome(compiled: bool, error: Optional[str], compile_ms: float, kind: str) -> None:
    _tls.outcome = {"kind": kind, "compiled": compiled, "compile_error": error,
                    "compile_ms": compile_ms}


def _reason(exc: BaseException) -> str:
    text = _ANSI.sub("", f"{type(exc).__name__}: {exc}").strip()
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + " [...]"


class _Compiled:
    """One function's numba dispatcher in this process, and what failed to compile."""

    setup_ms = 0.0  # importing numba and wrapping f: counted by the first call only

    def __init__(self, fn: Callable) -> None:
        self.lock = threading.Lock()
        self.dispatcher: Any = None
        self.error: Optional[str] = None  # for every argument type: numba missing or rejected f
        self.signature: Optional[inspect.Signature] = None
        self.nparams = 0
        self.types: dict[tuple, Optional[str]] = {}  # argument types -> None (compiled) or why not
        self.typeof: Optional[Callable] = None
        try:
            import numba
        except ImportError:
            self.error = NUMBA_MISSING
            return
        try:
            self.dispatcher = numba.njit(nogil=True)(fn)
            self.typeof = numba.typeof
            self.signature = inspect.signature(fn)
            self.nparams = len(self.signature.parameters)
        except Exception as exc:  # noqa: BLE001 - any refusal is a reason to run as Python
            self.error = _reason(exc)


class JitTask:
    """A task function to compile with numba in the workers (what compile_to_c=True submits).

    Calling it runs the compiled function when numba compiles it for these
    argument types, else the Python function; either way the outcome on
    this thread (take_outcome) says which and why. Picklable (cloudpickle),
    like the function it wraps.
    """

    kind = "numba"

    def __init__(self, fn: Callable, *, enabled: bool = True) -> None:
        self.fn = fn
        self.enabled = enabled
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)
        self.__qualname__ = getattr(fn, "__qualname__", self.__name__)
        self.__module__ = getattr(fn, "__module__", None)
        self.__doc__ = getattr(fn, "__doc__", None)
        self._task_config = getattr(fn, "_task_config", None)
        #: its pickle never changes (a module-level function): the process
        #: backend then ships it to each worker once, not with every task
        self.czmp_stable_pickle = (isinstance(fn, types.FunctionType) and fn.__closure__ is None
                                   and "<" not in fn.__qualname__)
        # numba freezes globals and closure cells at compile time: two closures
        # with the same code but other cells must not share a compilation
        from ..serialization import dumps_function

        self.key = hashlib.sha256(dumps_function(fn)).hexdigest()

    def __repr__(self) -> str:
        return f"<JitTask {self.__qualname__}>"

    def __getstate__(self) -> dict:
        # the @task config stays in the app: it may hold callables (retry_if)
        return {k: v for k, v in self.__dict__.items() if k != "_task_config"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._task_config = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.enabled:
            report_outcome(False, DISABLED, 0.0, self.kind)
            return self.fn(*args, **kwargs)
        entry = _compiled.get(self.key)
        if entry is None:
            with _lock:
                entry = _compiled.get(self.key)
                if entry is None:
                    t0 = time.perf_counter()
                    entry = _compiled[self.key] = _Compiled(self.fn)
                    entry.setup_ms = (time.perf_counter() - t0) * 1e3
        error, compile_ms, call_args = self._compile_for(entry, args, kwargs)
        if error is not None:
            report_outcome(False, error, compile_ms, self.kind)
            return self.fn(*args, **kwargs)
        report_outcome(True, None, compile_ms, self.kind)
        return entry.dispatcher(*call_args)

    def _compile_for(self, entry: _Compiled, args: tuple,
                     kwargs: dict) -> tuple[Optional[str], float, tuple]:
        """(why it did not compile or None, ms spent compiling now, positional arguments)."""
        first, entry.setup_ms = entry.setup_ms, 0.0
        if entry.error is not None:
            return entry.error, first, args
        try:
            # numba types positional arguments only: bind keywords and defaults here
            if kwargs or len(args) < entry.nparams:
                bound = entry.signature.bind(*args, **kwargs)  # type: ignore[union-attr]
                bound.apply_defaults()
                args = bound.args
            argtypes = tuple(entry.typeof(a) for a in args)  # type: ignore[misc]
        except (TypeError, ValueError) as exc:  # a wrong call, or a type numba has not
            return _reason(exc), first, args
        known = entry.types.get(argtypes, False)
        if known is not False:
            return known, first, args
        with entry.lock:  # two threads with the same new types: one compiles
            known = entry.types.get(argtypes, False)
            if known is not False:
                return known, first, args
            t0 = time.perf_counter()
            try:
                entry.dispatcher.compile(argtypes)
                why: Optional[str] = None
            except Exception as exc:  # noqa: BLE001 - numba's refusal: run as Python, say why
                why = _reason(exc)
            entry.types[argtypes] = why
            return why, first + (time.perf_counter() - t0) * 1e3, args
