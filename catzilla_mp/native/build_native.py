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


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
_cflags, _ldflags = _compile_args()
ffibuilder.set_source(
    "catzilla_mp._native",
    '#include "czmp.h"',
    # setuptools insists on paths relative to setup.py's directory
    sources=[os.path.relpath(HERE / s) for s in SOURCES],
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=_cflags,
    extra_link_args=_ldflags,
    libraries=["rt", "pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
