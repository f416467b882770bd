"""Thin typed wrapper over the C core (``catzilla_mp._native``).

No policy lives here: it turns C return codes into exceptions in one place
(:func:`check`), owns the process-local mapping handle, and offers the C
operations with Python types. The engine calls ``lib`` directly on its
hottest paths, with buffers it keeps, and this module everywhere else.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Sequence

from ._native import ffi, lib
from .errors import (
    CatzillaMPError,
    SegmentCorruptError,
    SegmentError,
    SegmentExistsError,
    SegmentOwnerError,
    SegmentVersionError,
)

NPRIO = lib.CZMP_NPRIO
INLINE_ARGS = lib.CZMP_INLINE_ARGS
INLINE_RESULT = lib.CZMP_INLINE_RESULT

# Slot states and state-word layout, mirrored from czmp.h.
SLOT_FREE = lib.CZMP_SLOT_FREE
SLOT_QUEUED = lib.CZMP_SLOT_QUEUED
SLOT_RUNNING = lib.CZMP_SLOT_RUNNING
SLOT_DONE = lib.CZMP_SLOT_DONE
SLOT_HELD = lib.CZMP_SLOT_HELD
SLOT_WAITING = lib.CZMP_SLOT_WAITING
SLOT_FEEDING = lib.CZMP_SLOT_FEEDING

HOLDER_FREE = lib.CZMP_HOLDER_FREE
HOLDER_APP = lib.CZMP_HOLDER_APP

HANDLE_NONE = lib.CZMP_HANDLE_NONE
HANDLE_INLINE = lib.CZMP_HANDLE_INLINE
HANDLE_CHUNK = lib.CZMP_HANDLE_CHUNK
HANDLE_EXTERNAL = lib.CZMP_HANDLE_EXTERNAL


def holder_worker(index: int) -> int:
    """Holder tag of chunks allocated by worker ``index``."""
    return lib.CZMP_HOLDER_WORKER_BASE + index


def holder_slot(index: int) -> int:
    """Holder tag of chunks owned by slot ``index``."""
    return lib.CZMP_HOLDER_SLOT_BASE + index


def state_kind(state: int) -> int:
    return state & 0xFF


def state_owner(state: int) -> int:
    """Worker index + 1 that owns the slot, 0 for none."""
    return (state >> 8) & 0xFFFF


def state_gen(state: int) -> int:
    return state >> 32


def state_make(gen: int, owner: int, kind: int) -> int:
    return (gen << 32) | ((owner & 0xFFFF) << 8) | (kind & 0xFF)


def external_handle(ident: int) -> int:
    return (HANDLE_EXTERNAL << 56) | (ident & 0xFFFFFFFF)


_SEGMENT_ERRORS = {
    lib.CZMP_EMAGIC: (SegmentCorruptError, "not a catzilla_mp segment (bad magic)"),
    lib.CZMP_EVERSION: (SegmentVersionError, f"made by another layout version (this one is {lib.CZMP_LAYOUT_VERSION})"),
    lib.CZMP_ETRUNC: (SegmentCorruptError, "truncated: the file is shorter than its header says"),
    lib.CZMP_EOWNER: (SegmentOwnerError, "owned by another user"),
    lib.CZMP_ELAYOUT: (SegmentCorruptError, "inconsistent layout (corrupt header)"),
    lib.CZMP_ECONFIG: (SegmentError, "invalid segment configuration"),
}


def check(rc: int, what: str) -> int:
    """Return ``rc`` if it is not negative, else raise the matching exception."""
    if rc >= 0:
        return rc
    code = -rc
    if code in _SEGMENT_ERRORS:
        cls, msg = _SEGMENT_ERRORS[code]
        raise cls(f"{what}: {msg}")
    if code == errno.EEXIST:
        raise SegmentExistsError(f"{what}: already exists")
    if code == errno.ENOENT:
        raise FileNotFoundError(code, f"{what}: no such segment")
    if code == errno.ENOMEM:
        raise MemoryError(f"{what}: no free chunk")
    if code in (errno.ENOSPC,):
        raise SegmentError(f"{what}: /dev/shm is full")
    raise CatzillaMPError(f"{what}: {os.strerror(code)} (errno {code})")


@dataclass(frozen=True)
class SizeClass:
    chunk_size: int
    count: int


@dataclass(frozen=True)
class Layout:
    """A segment's geometry as validated by the C core (czmp_layout_t)."""
    total_size: int
    nslots: int
    nworkers: int
    nfuncs: int
    nclasses: int
    ring_cap: int


@dataclass(frozen=True)
class ClassStats:
    chunk_size: int
    nchunks: int
    used: int


class Ring:
    """One MPMC ring of uint32 values inside a segment (tests and benchmarks)."""

    def __init__(self, ptr) -> None:
        self._ptr = ptr
        self._buf = ffi.new("uint32_t[]", 4096)

    def words(self):
        """The ring's 64-bit words in shared memory (tail [0], head [8], cells from [24])."""
        return ffi.cast("uint64_t *", lib.czmp_ring_shared(self._ptr))

    def push(self, value: int) -> bool:
        return lib.czmp_ring_push(self._ptr, value) == 0

    def pop(self) -> int | None:
        out = self._buf
        return out[0] if lib.czmp_ring_pop(self._ptr, out) == 0 else None

    def push_many(self, values: Sequence[int]) -> int:
        return lib.czmp_ring_push_many(self._ptr, ffi.new("uint32_t[]", list(values)), len(values))

    def pop_many(self, n: int) -> list[int]:
        buf = self._buf if n <= 4096 else ffi.new("uint32_t[]", n)
        got = lib.czmp_ring_pop_many(self._ptr, buf, n)
        return list(ffi.unpack(buf, got))

    def __len__(self) -> int:
        return lib.czmp_ring_size(self._ptr)

    @property
    def capacity(self) -> int:
        return lib.czmp_ring_capacity(self._ptr)

    def repair(self, cookie) -> list[int]:
        """Repair stuck cells; ``cookie`` is ``ffi.new("uint64_t[2]")`` kept between calls."""
        buf = ffi.new("uint32_t[]", 1024)
        n = lib.czmp_ring_repair(self._ptr, cookie, buf, 1024)
        return list(ffi.unpack(buf, n))


class Segment:
    """A mapped catzilla_mp segment. Create one per engine; workers attach."""

    def __init__(self, name: str, handle, created: bool) -> None:
        self.name = name
        self._seg = handle
        self.created = created
        self.header = lib.czmp_segment_header(handle)
        layout = ffi.new("czmp_layout_t *")
        lib.czmp_segment_layout(handle, layout)
        #: The geometry the C core took at create/attach (czmp_layout_t): size
        #: arrays from it, never from ``header``, which any process of the
        #: user can overwrite.
        self.layout = Layout(layout.total_size, layout.nslots, layout.nworkers,
                             layout.nfuncs, layout.nclasses, layout.ring_cap)

    # -- life cycle ------------------------------------------------------

    @classmethod
    def create(cls, name: str, *, nslots: int, nworkers: int, nfuncs: int,
               classes: Sequence[SizeClass], populate: bool = True) -> "Segment":
        """Create and map a new segment; raises SegmentExistsError if the name is taken."""
        if len(classes) > lib.CZMP_MAX_CLASSES:
            raise ValueError(f"at most {lib.CZMP_MAX_CLASSES} size classes")
        cfg = ffi.new("czmp_config_t *")
        cfg.nslots, cfg.nworkers, cfg.nfuncs = nslots, nworkers, nfuncs
        cfg.nclasses = len(classes)
        for i, c in enumerate(classes):
            cfg.class_size[i] = c.chunk_size
            cfg.class_count[i] = c.count
        cfg.populate = 1 if populate else 0
        out = ffi.new("czmp_segment_t **")
        check(lib.czmp_segment_create(_shm_name(name), cfg, out), f"create segment {name!r}")
        return cls(name, out[0], True)

    @classmethod
    def attach(cls, name: str) -> "Segment":
        """Map an existing segment after validating its header."""
        out = ffi.new("czmp_segment_t **")
        check(lib.czmp_segment_attach(_shm_name(name), out), f"attach segment {name!r}")
        return cls(name, out[0], False)

    def detach(self) -> None:
        """Unmap. Any buffer still pointing into the segment becomes invalid."""
        if self._seg is not None:
            lib.czmp_segment_detach(self._seg)
            self._seg = None
            self.header = None

    def unlink(self) -> None:
        """Remove the name from /dev/shm; a no-op if it is gone already."""
        lib.czmp_segment_unlink(_shm_name(self.name))

    @property
    def raw(self):
        """The ``czmp_segment_t *`` for direct ``lib`` calls."""
        return self._seg

    def shutdown(self) -> None:
        lib.czmp_segment_shutdown(self._seg)

    # -- rings ------------------------------------------------------------

    def task_ring(self, prio: int) -> Ring:
        ptr = lib.czmp_segment_task_ring(self._seg, prio)
        if ptr == ffi.NULL:
            raise ValueError(f"no priority {prio}")
        return Ring(ptr)

    def result_ring(self) -> Ring:
        return Ring(lib.czmp_segment_result_ring(self._seg))

    def queue_depths(self) -> list[int]:
        return [lib.czmp_ring_size(lib.czmp_segment_task_ring(self._seg, p)) for p in range(NPRIO)]

    # -- arena ------------------------------------------------------------

    def alloc(self, size: int, holder: int) -> int:
        """Allocate a chunk of at least ``size`` bytes; MemoryError when full."""
        out = ffi.new("uint64_t *")
        rc = lib.czmp_arena_alloc(self._seg, size, holder, out)
        if rc == -errno.EFBIG:
            raise ValueError(f"{size} bytes exceed the largest size class")
        check(rc, "arena alloc")
        return out[0]

    def chunk(self, handle: int, length: int | None = None):
        """A writable buffer over a chunk (``length`` bytes, default the whole chunk)."""
        ptr = lib.czmp_arena_ptr(self._seg, handle)
        if ptr == ffi.NULL:
            raise ValueError(f"invalid chunk handle {handle:#x}")
        size = lib.czmp_arena_chunk_size(self._seg, handle)
        return ffi.buffer(ptr, size if length is None else min(length, size))

    def free(self, handle: int, holder: int) -> bool:
        """Free a chunk held by ``holder``; False if it was not theirs (refused)."""
        return lib.czmp_arena_free(self._seg, handle, holder) == 0

    def retag(self, handle: int, src: int, dst: int) -> bool:
        return lib.czmp_arena_retag(self._seg, handle, src, dst) == 0

    def holder(self, handle: int) -> int:
        return lib.czmp_arena_holder(self._seg, handle)

    def reclaim(self, holder: int) -> int:
        return lib.czmp_arena_reclaim(self._seg, holder)

    def class_stats(self) -> list[ClassStats]:
        out = ffi.new("czmp_class_stats_t *")
        stats = []
        for c in range(self.layout.nclasses):
            check(lib.czmp_arena_stats(self._seg, c, out), "arena stats")
            stats.append(ClassStats(out.chunk_size, out.nchunks, out.used))
        return stats

    @property
    def max_chunk(self) -> int:
        return lib.czmp_arena_max_size(self._seg)

    # -- slots and workers -----------------------------------------------

    def slot(self, idx: int):
        ptr = lib.czmp_slot(self._seg, idx)
        if ptr == ffi.NULL:
            raise IndexError(idx)
        return ptr

    def slot_state(self, idx: int) -> int:
        return lib.czmp_slot_state(self._seg, idx)

    def worker(self, idx: int):
        ptr = lib.czmp_worker(self._seg, idx)
        if ptr == ffi.NULL:
            raise IndexError(idx)
        return ptr

    def func(self, idx: int):
        ptr = lib.czmp_func(self._seg, idx)
        if ptr == ffi.NULL:
            raise IndexError(idx)
        return ptr

    def submit(self, prio: int, slots: Sequence[int]) -> int:
        return check(lib.czmp_tasks_submit(self._seg, prio, ffi.new("uint32_t[]", list(slots)), len(slots)),
                     "submit")

    def take(self, worker: int, max_n: int, timeout_s: float) -> list[int]:
        buf = ffi.new("uint32_t[]", max_n)
        n = check(lib.czmp_tasks_take(self._seg, worker, buf, max_n, _ns(timeout_s)), "take")
        return list(ffi.unpack(buf, n))

    def finish(self, worker: int, idx: int) -> bool:
        return lib.czmp_tasks_finish(self._seg, worker, idx) == 0

    def collect(self, max_n: int, timeout_s: float) -> list[int]:
        buf = ffi.new("uint32_t[]", max_n)
        n = check(lib.czmp_results_collect(self._seg, buf, max_n, _ns(timeout_s)), "collect")
        return list(ffi.unpack(buf, n))

    def release(self, idx: int, expect_state: int) -> bool:
        return lib.czmp_slot_release(self._seg, idx, expect_state) == 0

    def reap(self, worker: int, cookies) -> tuple[list[int], list[int]]:
        """After worker ``worker`` died: (its RUNNING slots, its DONE slots), both now HELD."""
        n = self.layout.nslots
        running, done = ffi.new("uint32_t[]", n), ffi.new("uint32_t[]", n)
        nr, nd = ffi.new("uint32_t *"), ffi.new("uint32_t *")
        check(lib.czmp_worker_reap(self._seg, worker, running, nr, done, nd, cookies), "reap")
        return list(ffi.unpack(running, nr[0])), list(ffi.unpack(done, nd[0]))


def new_repair_cookies():
    """Cookie array for :meth:`Segment.reap` and ``lib.czmp_rings_repair``."""
    return ffi.new("uint64_t[]", 2 * (NPRIO + 1))


def _ns(seconds: float | None) -> int:
    if seconds is None:
        return -1
    return max(0, int(seconds * 1e9))


def _shm_name(name: str) -> bytes:
    return ("/" + name.lstrip("/")).encode()
