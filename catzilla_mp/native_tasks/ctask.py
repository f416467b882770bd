"""C source tasks: compiled once in the app with cffi, loaded once per worker, run without the GIL.

    app                                        worker process (each)
    ---                                        ---------------------
    TaskCompiler().compile_c(source, decl)     CTask.__call__(*args)
      key = sha256(source, decl, flags,          module loaded once per process
            cffi, Python, platform)              (dlopen of <cache>/_czmp_c_<key>.so)
      <cache>/_czmp_c_<key>.so exists? reuse     bytes / memoryview / NumPy array for a
      else: build in a subprocess (gcc via       pointer parameter -> ffi.from_buffer:
            cffi), errors -> NativeCompileError  the C code reads the object's own memory
            with the compiler's message          lib.<name>(*args)  <- cffi releases the GIL
      -> CTask(path, name): pickled by value   -> the C function's return value

Compiling happens at submission time in the app (compile_c), so a C error
is a typed exception there, never a worker crash. The cache directory is
private (0700, owned by this user): workers load code from it, so nobody
else may write there; both sides check before using it. A C function that
crashes its process (a segfault) is a worker crash like any other: the
supervisor replaces the worker and the task is retried or fails with
WorkerCrashedError.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from typing import Any, Optional, Sequence

from ..errors import NativeCompileError
from . import jit

#: Environment variable naming the cache directory of built C tasks.
CACHE_ENV = "CATZILLA_MP_NATIVE_CACHE"
#: Default compiler flags; extra_compile_args adds to them.
DEFAULT_CFLAGS = ("-O2",)
#: A build that takes longer is stopped (a runaway preprocessor include, say).
BUILD_TIMEOUT_S = 300
_SUFFIX = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
_NAME = re.compile(r"([A-Za-z_]\w*)\s*\(")

# Runs in a fresh interpreter: the compiler's messages are captured whole,
# and a build never touches the app's distutils/setuptools state.
_BUILD = r"""
import json, sys, cffi
spec = json.loads(sys.argv[1])
ffi = cffi.FFI()
ffi.cdef(spec["cdef"])
ffi.set_source(spec["module"], spec["source"], extra_compile_args=spec["cflags"])
print(ffi.compile(tmpdir=spec["tmpdir"], verbose=False))
"""

_load_lock = threading.Lock()
#: path -> (module, its functions by name, their argument types), per process
_loaded: dict[str, Any] = {}


def default_cache_dir() -> str:
    """Where built C tasks are kept: $CATZILLA_MP_NATIVE_CACHE, else ~/.cache/catzilla_mp/native."""
    path = os.environ.get(CACHE_ENV)
    if not path:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(base, "catzilla_mp", "native")
    return path


def private_dir(path: str) -> str:
    """Create ``path`` (0700) if needed and check that only this user may write there.

    Raises:
        NativeCompileError: it is not a directory, or is owned by another user
            or open to others (workers load code from it).
    """
    os.makedirs(path, mode=0o700, exist_ok=True)
    _check_private(path, directory=True)
    return path


def _check_private(path: str, *, directory: bool) -> None:
    st = os.stat(path)
    if directory and not stat.S_ISDIR(st.st_mode):
        raise NativeCompileError(f"the native task cache {path!r} is not a directory")
    if st.st_uid != os.getuid() or st.st_mode & (0o077 if directory else 0o022):
        raise NativeCompileError(
            f"refusing to use {path!r} for compiled tasks: it must be owned by this user and "
            f"closed to others (mode {'0700' if directory else 'not group/world-writable'}); "
            f"it is owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}")


def _function_name(declaration: str) -> str:
    match = _NAME.search(declaration)
    if match is None:
        raise NativeCompileError(f"cannot find a function name in the declaration "
                                 f"{declaration!r}; give one like "
                                 "'int64_t f(const uint8_t *p, size_t n)'")
    return match.group(1)


def compile_c(source: str, declaration: str, *, extra_compile_args: Sequence[str] = (),
              cache_dir: Optional[str] = None) -> "CTask":
    """Build ``source`` (unless built already) and return the task calling its function.

    Args:
        source: C source defining the function (and anything it needs).
        declaration: the function's prototype, e.g.
            ``"uint64_t checksum(const uint8_t *buf, size_t n)"``.
        extra_compile_args: compiler flags added to DEFAULT_CFLAGS.
        cache_dir: where the built module is kept (default_cache_dir()).

    Returns:
        A CTask: submit it like a function, with the C function's arguments.

    Raises:
        NativeCompileError: the source does not compile (the compiler's
            message is in the error), the declaration is malformed, or the
            cache directory is not private.
        TypeError: source or declaration is not a string.
    """
    if not isinstance(source, str) or not isinstance(declaration, str):
        raise TypeError("source and declaration must be strings of C")
    if not all(isinstance(a, str) for a in extra_compile_args):
        raise TypeError("extra_compile_args must be strings")
    decl = declaration.strip().rstrip(";").strip()
    name = _function_name(decl)
    cflags = list(DEFAULT_CFLAGS) + list(extra_compile_args)
    import cffi

    key = hashlib.sha256(json.dumps(
        [source, decl, cflags, cffi.__version__, sys.version, sys.platform, _SUFFIX]
    ).encode()).hexdigest()[:32]
    module = f"_czmp_c_{key}"
    root = private_dir(cache_dir or default_cache_dir())
    path = os.path.join(root, module + _SUFFIX)
    t0 = time.perf_counter()
    built = False
    if not os.path.exists(path):
        _build(root, module, source, decl, cflags, path)
        built = True
    _check_private(path, directory=False)
    return CTask(path, module, name, decl, compile_ms=(time.perf_counter() - t0) * 1e3,
                 built=built)


def _build(root: str, module: str, source: str, decl: str, cflags: list, path: str) -> None:
    tmpdir = tempfile.mkdtemp(prefix=".build-", dir=root)
    try:
        spec = {"cdef": decl + ";", "module": module, "source": source, "cflags": cflags,
                "tmpdir": tmpdir}
        try:
            proc = subprocess.run([sys.executable, "-c", _BUILD, json.dumps(spec)],
                                  capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
                                  cwd=tmpdir)
        except subprocess.TimeoutExpired as exc:
            raise NativeCompileError(f"compiling {module} took over {BUILD_TIMEOUT_S} s") from exc
        output = (proc.stderr + proc.stdout).strip()
        if proc.returncode != 0:
            raise NativeCompileError(_summary(output), compiler_output=output)
        built = proc.stdout.strip().splitlines()[-1]
        # rename is atomic: a concurrent build of the same source just wins or loses
        os.replace(built, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _summary(output: str) -> str:
    """The compiler's error lines (or the traceback's last line, for a bad declaration)."""
    lines = output.splitlines()
    errors = [ln for ln in lines if re.search(r": (fatal )?error: ", ln)]
    body = "\n".join(errors[:20]) if errors else "\n".join(lines[-5:])
    return "the C task did not compile:\n" + body


def _load(path: str, module: str, name: str) -> tuple[Any, Any, list]:
    """(ffi, the function, per-argument buffer item type or None), loaded once per process."""
    entry = _loaded.get(path)
    if entry is None:
        with _load_lock:
            entry = _loaded.get(path)
            if entry is None:
                _check_private(os.path.dirname(path), directory=True)
                _check_private(path, directory=False)
                spec = importlib.util.spec_from_file_location(module, path)
                if spec is None or spec.loader is None:
                    raise ImportError(f"cannot load the C task module {path!r}")
                mod = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(mod)
                entry = _loaded[path] = {"module": mod, "functions": {}}
    fns = entry["functions"]
    got = fns.get(name)
    if got is None:
        ffi, lib = entry["module"].ffi, entry["module"].lib
        fn = getattr(lib, name)
        ctype = ffi.typeof(fn)
        # a pointer parameter takes a buffer: its item type, for ffi.from_buffer
        items = [f"{a.item.cname}[]" if a.kind == "pointer" and a.item.kind != "void"
                 else ("char[]" if a.kind == "pointer" else None) for a in ctype.args]
        got = fns[name] = (ffi, fn, items)
    return got


class CTask:
    """A C function built by TaskCompiler.compile_c; submit it like a Python function.

    Its pointer parameters take bytes, bytearray, memoryview or NumPy
    arrays (C-contiguous): the C code reads their memory in place (in the
    worker, that is the copy the arguments arrived in). Writes to a
    buffer argument stay in the worker: return the result instead.
    """

    kind = "c"
    #: its pickle never changes: the process backend ships it to each worker once
    czmp_stable_pickle = True

    def __init__(self, path: str, module: str, name: str, declaration: str, *,
                 compile_ms: float = 0.0, built: bool = False) -> None:
        self.path = path
        self.module = module
        self.name = self.__name__ = self.__qualname__ = name
        self.declaration = declaration
        #: time compile_c spent in the app (building, or finding the cached build)
        self.compile_ms = compile_ms
        #: True when compile_c built it, False when it came from the cache
        self.built = built

    def __repr__(self) -> str:
        return f"<CTask {self.declaration}>"

    def __getstate__(self) -> dict:
        return {"path": self.path, "module": self.module, "name": self.name,
                "declaration": self.declaration}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["module"], state["name"], state["declaration"])

    def __call__(self, *args: Any) -> Any:
        first = self.path not in _loaded
        t0 = time.perf_counter()
        ffi, fn, items = _load(self.path, self.module, self.name)
        load_ms = (time.perf_counter() - t0) * 1e3 if first else 0.0
        if len(args) != len(items):
            raise TypeError(f"{self.declaration} takes {len(items)} arguments, "
                            f"{len(args)} given")
        call = [ffi.from_buffer(item, a) if item is not None and not isinstance(a, ffi.CData)
                and a is not None else (ffi.NULL if item is not None and a is None else a)
                for item, a in zip(items, args)]
        jit.report_outcome(True, None, load_ms, self.kind)
        return fn(*call)
