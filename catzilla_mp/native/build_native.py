"""cffi build script: compiles the C core into ``catzilla_mp._native``.

Used by setup.py (``cffi_modules``) so ``pip install .`` builds it with no
manual step. The cdef is the block of czmp.h between CDEF BEGIN and CDEF END,
so the header stays the one source of truth for the C API.

CZMP_SANITIZE=address,undefined builds an instrumented extension (the
sanitizer job in .ci/run); CZMP_DEBUG=1 builds with -O0 -g.
"""
from __future__ import annotations

import os
import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
SOURCES = ["segment.c", "ring.c", "wake.c", "slots.c", "arena.c"]


def _cdef_text() -> str:
    text = (HERE / "czmp.h").read_text()
    start = text.index("/* CDEF BEGIN */") + len("/* CDEF BEGIN */")
    end = text.index("/* CDEF END */")
    return text[start:end]


def _compile_args() -> tuple[list[str], list[str]]:
    cflags = ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    ldflags: list[str] = []
    sanitize = os.environ.get("CZMP_SANITIZE", "").strip()
    if sanitize:
        cflags += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-O1", "-g",
                   "-fno-sanitize-recover=undefined"]
        ldflags += [f"-fsanitize={sanitize}"]
    elif os.environ.get("CZMP_DEBUG"):
        cflags += ["-O0", "-g"]
    else:
        cflags += ["-O2"]
    return cflags, ldflags


# cffi releases the GIL around every C call. For the calls that take ~100 ns
# (push a slot, read a state word) that is the most expensive part: each
# release wakes whichever thread waits for the GIL (the collector, a submitter)
# and the handoff costs a cross-CPU wake-up (~40 us here), which capped the
# submit rate near 30k/s. So the glue keeps the GIL around every call, and the
# functions below, which may sleep or scan, release it themselves: each name
# becomes a macro that wraps the call, so cffi's generated wrapper calls
# through it. (An earlier version tested __func__ at run time: GCC did not
# fold the strcmp, and it cost ~1,600 instructions per call.)
GIL_RELEASING = (
    "czmp_tasks_take", "czmp_tasks_take_copy", "czmp_results_collect",
    # finish waits for room in the result ring if a collector died mid-pop
    "czmp_tasks_finish", "czmp_tasks_finish_inline", "czmp_tasks_finish_handle",
    "czmp_tasks_feed",  # waits up to 2 ms for room in a task ring, as a submit
    "czmp_results_collect_outcomes", "czmp_results_collect_outcomes_ex", "czmp_wake_wait",
    "czmp_segment_create", "czmp_segment_attach", "czmp_segment_unlink",
    "czmp_segment_prefault", "czmp_arena_prefault",
    "czmp_worker_reap", "czmp_rings_repair", "czmp_ring_repair", "czmp_arena_reclaim",
    "czmp_arena_stats", "czmp_heartbeat_start", "czmp_process_start_time",
)
GIL_RELEASING_VOID = ("czmp_segment_detach", "czmp_heartbeat_stop")
# The submits are split (issue 10.8): the common case -- room in the ring --
# costs ~100 ns and keeps the GIL; when a ring has no room, the purge and the
# wait for a stalled consumer (up to 2 ms, or longer while live hints are
# pushed back) run with the GIL released, so the app's other threads, the
# supervisor whose repair frees the cell among them, are never stalled.
# Each glue function first calls the `nowait` mode (internal.h), which stops
# where it would block, then the blocking call for the rest without the GIL.
GIL_SPLIT = """
#include "internal.h"
static int czmp_glue_tasks_submit(czmp_segment_t *seg, int prio, const uint32_t *idx, int n) {
    int blocked = 0;
    int done = czmp_tasks_submit_ex(seg, prio, idx, n, 1, &blocked);
    if (done < 0 || !blocked)
        return done;
    int more = CZMP_NOGIL(czmp_tasks_submit(seg, prio, idx + done, n - done));
    return more > 0 ? done + more : done;
}
static int czmp_glue_tasks_submit_inline(czmp_segment_t *seg, int prio, uint32_t idx,
                                         uint64_t func_id, uint64_t task_id,
                                         const void *args, uint32_t len) {
    int blocked = 0;
    int done = czmp_tasks_submit_inline_ex(seg, prio, idx, func_id, task_id, args, len, 1,
                                           &blocked);
    if (done != 0 || !blocked)
        return done;
    /* the arguments are in the slot already: queue it, waiting if need be */
    int more = CZMP_NOGIL(czmp_tasks_submit(seg, prio, &idx, 1));
    return more > 0 ? more : 0;
}
static int czmp_glue_tasks_submit_inline_many(czmp_segment_t *seg, int prio,
                                              const uint32_t *idx, int n, uint64_t func_id,
                                              const uint64_t *task_ids, const void *data,
                                              const uint32_t *off, const uint32_t *len) {
    int blocked = 0, written = 0;
    int done = czmp_tasks_submit_inline_many_ex(seg, prio, idx, n, func_id, task_ids, data, off,
                                                len, &written, 1, &blocked);
    if (done < 0 || !blocked)
        return done;
    int more = CZMP_NOGIL(czmp_tasks_submit(seg, prio, idx + done, written - done));
    return more > 0 ? done + more : done;
}
#define czmp_tasks_submit(...) czmp_glue_tasks_submit(__VA_ARGS__)
#define czmp_tasks_submit_inline(...) czmp_glue_tasks_submit_inline(__VA_ARGS__)
#define czmp_tasks_submit_inline_many(...) czmp_glue_tasks_submit_inline_many(__VA_ARGS__)
"""
_GLUE = "\n".join([
    '#include "czmp.h"',
    "#define CZMP_NOGIL(call) ({ PyThreadState *_czmp_ts = PyEval_SaveThread(); "
    "__typeof__(call) _czmp_r = (call); PyEval_RestoreThread(_czmp_ts); _czmp_r; })",
    "#define CZMP_NOGIL_VOID(call) do { PyThreadState *_czmp_ts = PyEval_SaveThread(); "
    "(call); PyEval_RestoreThread(_czmp_ts); } while (0)",
    GIL_SPLIT,
    *(f"#define {n}(...) CZMP_NOGIL({n}(__VA_ARGS__))" for n in GIL_RELEASING),
    *(f"#define {n}(...) CZMP_NOGIL_VOID({n}(__VA_ARGS__))" for n in GIL_RELEASING_VOID),
    "#undef Py_BEGIN_ALLOW_THREADS",
    "#undef Py_END_ALLOW_THREADS",
    "#define Py_BEGIN_ALLOW_THREADS {",
    "#define Py_END_ALLOW_THREADS }",
])

ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
_cflags, _ldflags = _compile_args()
ffibuilder.set_source(
    "catzilla_mp._native",
    _GLUE,
    # setuptools insists on paths relative to setup.py's directory
    sources=[os.path.relpath(HERE / s) for s in SOURCES],
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=_cflags,
    extra_link_args=_ldflags,
    libraries=["rt", "pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
