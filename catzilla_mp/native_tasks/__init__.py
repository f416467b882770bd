"""Native tasks: Python compiled by numba (compile_to_c) and C source built with cffi.

Both kinds are callables submitted like any task function; in the worker
they run machine code with the GIL released, so every executor thread of a
worker (threads_per_worker) runs one at once. Each call leaves its outcome
(compiled or not, why not, time spent compiling) for take_outcome(), which
the worker sends back with the result: TaskStats.compiled/compile_error
and EngineStats' native/Python counts come from it.

    jit.py    JitTask: compile_to_c=True, numba njit(nogil=True) per worker
    ctask.py  CTask, compile_c: C source -> cffi module in a private cache
"""
from __future__ import annotations

from .ctask import CTask, compile_c, default_cache_dir
from .jit import JitTask, take_outcome

#: The callables whose calls report an outcome (the worker checks type(fn) in it).
NATIVE_TYPES = (JitTask, CTask)

__all__ = ["CTask", "JitTask", "NATIVE_TYPES", "compile_c", "default_cache_dir", "take_outcome"]
