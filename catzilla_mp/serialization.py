"""How calls, functions, results and exceptions cross the process boundary.

Arguments and results go through the standard pickle (protocol 5) first and
fall back to cloudpickle only when that fails (lambdas, closures, objects
from ``__main__``): the standard pickler is several times faster for the
plain data most tasks carry. Functions are pickled once per function (see
engine._FunctionTable): by reference with the standard pickler when cloudpickle
would do the same (module-level functions, _by_reference), by value through
cloudpickle otherwise.

Call payloads (the tuple's length says which):
  pickle of (args, kwargs)                            the common case
  pickle of (args, kwargs, timeout_ms, fn_bytes)      a timeout of its own, or a
                                                      function that travels with the call
  pickle of (args, kwargs, timeout_ms, fn_bytes, extras)  per-task options the worker
                                                      applies (compat_worker.py)
Outcome flags (czmp_slot_t.result_flags):
  OUTCOME_OK, OUTCOME_ERROR  pickle of the value / of (exception, traceback text)
  | OUTCOME_PROGRESS         wrapped with the task's last progress report
  | OUTCOME_EXTRAS           wrapped with what the worker measured (memory, profile)
"""
from __future__ import annotations

import linecache
import pickle
import re
import struct as _struct
import sys
import traceback
import types
from typing import Any, Callable

from .errors import RemoteTraceback, SerializationError, TaskError


class _LazyCloudpickle:
    """Stands for the cloudpickle module until first used, then replaces itself with it.

    Importing cloudpickle (typing_extensions, inspect, uuid, platform) took
    ~5 ms of an engine's ~60 ms start-up, and a module-level function, the
    common task, is pickled without it (dumps_function). An ImportError
    surfaces at the first call that needs it.
    """

    def __getattr__(self, name: str) -> Any:
        import cloudpickle as module
        globals()["cloudpickle"] = module
        return getattr(module, name)


cloudpickle: Any = _LazyCloudpickle()

PROTOCOL = 5
OUTCOME_OK = 0
OUTCOME_ERROR = 1  # == CZMP_RESULT_FAILED: the C core counts failures by it
#: Flag bit: the payload is pickle of (outcome bytes, fraction, message), the
#: task's last report_progress(), so it survives the worker's next task.
OUTCOME_PROGRESS = 2
#: Flag bit: the payload is pickle of (outcome bytes, extras dict) (compat_worker.py).
OUTCOME_EXTRAS = 4

_dumps = pickle.dumps
_MAIN = b"__main__"
_loads = pickle.loads


def dumps(obj: Any) -> bytes:
    """Pickle ``obj``, falling back to cloudpickle; SerializationError if neither can."""
    try:
        return _dumps(obj, PROTOCOL)
    except Exception:
        pass
    try:
        return cloudpickle.dumps(obj, PROTOCOL)
    except Exception as exc:
        raise SerializationError(f"cannot pickle {_describe(obj)}: {exc}") from exc


def dumps_call(args: tuple, kwargs: dict, timeout_ms: int | None = None,
               fn_bytes: bytes | None = None, extras: dict | None = None) -> "bytes | Frame":
    """Bytes of one call: (args, kwargs), or (args, kwargs, timeout_ms, fn_bytes[, extras]) when needed.

    A call with a big buffer among its arguments becomes a Frame instead.
    """
    if extras:
        call: tuple = (args, kwargs, timeout_ms, fn_bytes, extras)
    elif timeout_ms is None and fn_bytes is None:
        call = (args, kwargs)
    else:
        call = (args, kwargs, timeout_ms, fn_bytes)
    # the submit hot path: arguments that are all small scalars (the common
    # case) cannot hold a big buffer nor refer to __main__: one set lookup each
    for a in args:
        if a.__class__ not in _SCALARS:
            plain = False
            break
    else:
        plain = not kwargs and len(call) == 2
    if not plain and (_has_big_buffer(args) or (kwargs and _has_big_buffer(kwargs.values()))):
        return _dumps_frame(_wrapped(args, kwargs) + call[2:], "arguments")
    try:
        data = _dumps(call, PROTOCOL)
    except Exception:
        return _dumps_fallback(call, "arguments")
    # The standard pickler refers to functions and classes of __main__ by
    # name, and a worker's __main__ is not the app's: such calls go by value.
    # (find: half the cost of ``in`` on short bytes here)
    if not plain and data.find(_MAIN) >= 0:
        return _dumps_fallback(call, "arguments")
    return data


def dumps_plain_call(args: tuple, kwargs: dict) -> "bytes | Frame":
    """dumps_call(args, kwargs) for a call with no timeout, function bytes or extras.

    The one-by-one submit hot path: small scalar arguments and no keyword
    arguments are pickled at once (nothing to scan for), anything else as
    dumps_call does. One Python call instead of dumps_call's longer one.
    """
    if not kwargs:
        for a in args:
            if a.__class__ not in _SCALARS:
                break
        else:
            return _dumps((args, kwargs), PROTOCOL)
    return dumps_call(args, kwargs)


def dumps_calls(calls: list, limit: int) -> "list[bytes] | None":
    """Bytes of many plain calls ``(args, {})`` (add_tasks, map), or None for dumps_call's way.

    The batch fast path: when every argument of every call is a small
    scalar (nothing can be a big buffer or refer to ``__main__``) and every
    pickle is at most ``limit`` bytes, one tight loop; otherwise None, and
    the caller pickles each call with dumps_call.
    """
    scalars, dumps, empty = _SCALARS, _dumps, {}
    out = []
    for args in calls:
        for a in args:
            if a.__class__ not in scalars:
                return None
        data = dumps((args, empty), PROTOCOL)
        if len(data) > limit:
            return None
        out.append(data)
    return out


#: Types whose values are never a big buffer (dumps_call skips the scan for them).
_SCALARS = frozenset({int, float, str, bool, type(None), complex})


def _wrapped(args: tuple, kwargs: dict) -> tuple:
    return tuple(_wrap(a) for a in args), {k: _wrap(v) for k, v in kwargs.items()}


def loads_call(data) -> tuple[tuple, dict, int | None, bytes | None, dict | None]:
    """Inverse of dumps_call: (args, kwargs, timeout_ms or None, fn_bytes or None, extras or None)."""
    call = _loads_frame(data) if data[:4] == FRAME_MAGIC else _loads(data)
    if len(call) == 2:
        return call[0], call[1], None, None, None
    if len(call) == 4:
        return call + (None,)
    return call


# -- frames: big buffers out of band --------------------------------------------
#
# Pickling a 16 MiB bytes object or array makes a 16 MiB pickle, which is
# then copied again into shared memory (and fresh memory costs a page fault
# per 4 KiB here). A frame keeps big buffers out of the pickle (protocol 5's
# buffer_callback) and Payloads.write copies each part straight into the
# chunk: one copy on the way in. Layout:
#   "CZMF" | u32 n | u64 main length | n x u64 buffer length | n x u8 kind
#   | main pickle | buffer 0 | buffer 1 ...
# kind 1: a buffer that is copied as it is read (our bytes wrapper), so the
# reader may hand out a view of shared memory; kind 0: anything else, which
# may keep a reference to its buffer (a NumPy array), so it gets a private copy.

FRAME_MAGIC = b"CZMF"
#: Buffers at least this big travel out of band.
BIG_BUFFER = 1 << 20


class Frame:
    """A payload in parts, written into shared memory without being joined first."""

    __slots__ = ("parts", "size")

    def __init__(self, main: bytes, buffers: list, kinds: list[int]) -> None:
        n = len(buffers)
        header = _struct.pack(f"<4sIQ{n}Q{n}B", FRAME_MAGIC, n, len(main),
                              *(b.nbytes for b in buffers), *kinds)
        self.parts = [header, main, *buffers]
        self.size = len(header) + len(main) + sum(b.nbytes for b in buffers)

    def __len__(self) -> int:
        return self.size


class _BigBytes:
    """Stand-in for a big bytes argument: pickles it out of band."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce_ex__(self, protocol):
        return bytes, (pickle.PickleBuffer(self.data),)


def _wrap(value: Any) -> Any:
    if type(value) is bytes and len(value) >= BIG_BUFFER:
        return _BigBytes(value)
    return value


def _has_big_buffer(values) -> bool:
    for v in values:
        if type(v) is bytes or type(v) is bytearray:
            if len(v) >= BIG_BUFFER:
                return True
        elif getattr(v, "nbytes", 0) >= BIG_BUFFER:  # NumPy arrays, memoryviews
            return True
    return False


def _dumps_frame(obj: Any, what: str) -> Frame:
    buffers, kinds = [], []

    def keep(pb: pickle.PickleBuffer) -> None:
        raw = pb.raw()
        buffers.append(raw)
        kinds.append(1 if type(raw.obj) is bytes else 0)

    try:
        main = cloudpickle.dumps(obj, protocol=PROTOCOL, buffer_callback=keep)
    except Exception as exc:
        raise SerializationError(f"cannot pickle the task's {what}: {exc}") from exc
    return Frame(main, buffers, kinds)


def _loads_frame(data) -> Any:
    view = memoryview(data)
    n, main_len = _struct.unpack_from("<IQ", view, 4)
    lengths = _struct.unpack_from(f"<{n}Q", view, 16)
    kinds = _struct.unpack_from(f"<{n}B", view, 16 + 8 * n)
    off = 16 + 9 * n
    main = view[off:off + main_len]
    off += main_len
    buffers = []
    for length, kind in zip(lengths, kinds):
        part = view[off:off + length]
        buffers.append(part if kind == 1 else bytearray(part))
        off += length
    return _loads(main, buffers=buffers)


def _dumps_fallback(obj: Any, what: str) -> bytes:
    try:
        return cloudpickle.dumps(obj, PROTOCOL)
    except Exception as exc:
        raise SerializationError(f"cannot pickle the task's {what}: {exc}") from exc


def dumps_function(fn: Callable) -> bytes:
    if _by_reference(fn):
        # what cloudpickle makes of it too (a reference by module and name),
        # without importing cloudpickle; pickle checks the name leads back to fn
        try:
            return _dumps(fn, PROTOCOL)
        except Exception:
            pass
    try:
        return cloudpickle.dumps(fn, PROTOCOL)
    except Exception as exc:
        raise SerializationError(f"cannot pickle function {_describe(fn)}: {exc}") from exc


def _by_reference(fn: Callable) -> bool:
    """True when cloudpickle would pickle ``fn`` by reference, as the standard pickler does.

    A plain or built-in function of an importable module other than
    ``__main__`` that was not registered to go by value
    (cloudpickle.register_pickle_by_value). Everything else goes through
    cloudpickle as before.
    """
    if type(fn) is not types.FunctionType and type(fn) is not types.BuiltinFunctionType:
        return False
    name = getattr(fn, "__module__", None)
    if not name or name == "__main__":
        return False
    module = sys.modules.get(name)
    if module is None or (getattr(module, "__spec__", None) is None
                          and not hasattr(module, "__file__")):
        return False  # a dynamic module: a worker could not import it
    loaded = sys.modules.get("cloudpickle")  # the app may have registered modules by value
    if loaded is not None:
        by_value = loaded.list_registry_pickle_by_value()
        if any(name == m or name.startswith(m + ".") for m in by_value):
            return False
    return True


def loads_function(data) -> Callable:
    return _loads(data)


def dumps_result(value: Any) -> tuple[int, "bytes | Frame"]:
    """Worker side: (flags, bytes) for a return value, or for the error if it cannot pickle."""
    if _has_big_buffer((value,)):
        try:
            return OUTCOME_OK, _dumps_frame(_wrap(value), "result")
        except SerializationError as exc:
            return dumps_exception(exc)
    try:
        return OUTCOME_OK, _dumps(value, PROTOCOL)
    except Exception:
        pass
    try:
        return OUTCOME_OK, cloudpickle.dumps(value, PROTOCOL)
    except Exception as exc:
        err = SerializationError(f"the task's result {_describe(value)} cannot be pickled: {exc}")
        return dumps_exception(err)


def dumps_exception(exc: BaseException) -> tuple[int, bytes]:
    """Worker side: (OUTCOME_ERROR, bytes of (exception, traceback text)).

    The exception is round-tripped before it is sent: some pickle but cannot
    be re-created (an __init__ with required arguments it does not pass to
    super()), and the app must get a clear error, not an unpickling crash.
    """
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    exc.__traceback__ = None
    try:
        data = dumps((exc, tb))
        _loads(data)
        return OUTCOME_ERROR, data
    except Exception as why:
        stand_in = SerializationError(
            f"the task raised {type(exc).__qualname__}: {_safe_str(exc)}, "
            f"which cannot be sent back to the app ({type(why).__name__}: {why})")
        return OUTCOME_ERROR, _dumps((stand_in, tb), PROTOCOL)


def with_progress(flags: int, data: bytes, fraction: float, message: str) -> tuple[int, bytes]:
    """Worker side: attach the task's last progress report to its outcome."""
    return flags | OUTCOME_PROGRESS, _dumps((data, fraction, message), PROTOCOL)


def with_extras(flags: int, data: bytes, extras: dict) -> tuple[int, bytes]:
    """Worker side: attach what the worker measured about the task (compat_worker.py)."""
    return flags | OUTCOME_EXTRAS, _dumps((data, extras), PROTOCOL)


def split_extras(flags: int, data) -> tuple[int, Any, Any]:
    """App side: (flags, outcome bytes, extras dict or None)."""
    if not flags & OUTCOME_EXTRAS:
        return flags, data, None
    inner, extras = _loads(data)
    return flags & ~OUTCOME_EXTRAS, inner, extras


def split_progress(flags: int, data) -> tuple[int, Any, Any]:
    """App side: (flags, outcome bytes, (fraction, message) or None)."""
    if not flags & OUTCOME_PROGRESS:
        return flags, data, None
    inner, fraction, message = _loads(data)
    return flags & ~OUTCOME_PROGRESS, inner, (fraction, message)


def loads_outcome(flags: int, data) -> tuple[bool, Any]:
    """App side: (True, value) or (False, exception ready to raise)."""
    try:
        # a pickle starts with its PROTO opcode (0x80), a frame with "CZMF":
        # one byte read, not a slice compared (the collector's hot path)
        body = (_loads(data) if data[0] == 0x80 else
                _loads_frame(data) if data[:4] == FRAME_MAGIC else _loads(data))
    except Exception as exc:
        return False, SerializationError(f"cannot unpickle the task's outcome: {exc}")
    if flags == OUTCOME_OK:
        return True, body
    exc, tb = body
    tb = fill_source_lines(tb)
    if not isinstance(exc, Exception):
        # SystemExit, KeyboardInterrupt, GeneratorExit...: raising those in
        # the app's thread would stop the app, not report the task.
        wrapped = TaskError(f"the task raised {type(exc).__name__}{_args_repr(exc)}")
        wrapped.__cause__ = RemoteTraceback(tb)
        return False, wrapped
    exc.__cause__ = RemoteTraceback(tb)
    return False, exc


_FRAME_LINE = re.compile(r'^  File "(?P<file>.+)", line (?P<line>\d+), in ')


def fill_source_lines(tb: str) -> str:
    """The worker's traceback text, with the source lines the worker could not find filled in.

    A worker reads source lines from files. Code whose source only the app
    knows (compiled from a string and registered in the app's linecache, as
    notebooks and some frameworks do, or a file the worker cannot read)
    would show ``File "<...>", line N`` alone, for every function kind
    shipped by value (issue 11.15): the app's linecache supplies the line.
    """
    if "File " not in tb:
        return tb
    lines = tb.split("\n")
    out: list[str] = []
    for i, text in enumerate(lines):
        out.append(text)
        m = _FRAME_LINE.match(text)
        if m is None:
            continue
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if nxt.startswith("    "):
            continue  # the worker found it
        try:
            source = linecache.getline(m.group("file"), int(m.group("line"))).strip()
        except Exception:  # noqa: BLE001 - a loader that raises: leave the frame as it is
            source = ""
        if source:
            out.append("    " + source)
    return "\n".join(out)


def _args_repr(exc: BaseException) -> str:
    return "(" + ", ".join(repr(a) for a in exc.args) + ")"


def _safe_str(obj: Any) -> str:
    try:
        return str(obj)
    except Exception:
        return f"<unprintable {type(obj).__name__}>"


def _describe(obj: Any) -> str:
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{name} ({type(obj).__name__})"
