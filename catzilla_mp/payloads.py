"""Where a payload's bytes live: in the slot, in an arena chunk, or in a segment of its own.

    size <= inline capacity      copied into the slot itself (no allocation)
    size <= largest chunk class  an arena chunk, tagged to the slot (or worker)
    larger, or arena full        a POSIX shm segment of its own, named after
                                 the engine's segment so shutdown and the
                                 janitor find it

The app writes arguments and reads results; workers do the reverse. Chunks
and external segments are freed by the app when it releases the slot.
"""
from __future__ import annotations

import errno
import itertools
import mmap
import os

import posix_ipc

from . import _core
from ._core import SizeClass
from ._native import ffi, lib
from .errors import PayloadTooLargeError
from .serialization import Frame

#: Chunk sizes of the arena, smallest first. Powers of four keep the waste of
#: a size class under 75% while needing only a handful of pools; the last,
#: 32 MiB, holds a 16 MiB array with room to spare.
CHUNK_SIZES = (1 << 10, 1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 25)
#: Share of the pool each class gets, in the order of CHUNK_SIZES.
CHUNK_SHARES = (0.02, 0.03, 0.05, 0.10, 0.10, 0.15, 0.20, 0.35)
MIN_CHUNKS = (64, 32, 16, 8, 4, 2, 2, 2)


def plan_arena(pool_bytes: int) -> list[SizeClass]:
    """Size classes for a pool of about ``pool_bytes``.

    Each class gets its share of the pool, at least a few chunks; a class
    whose minimum no longer fits what is left of the pool is dropped (the
    payloads it would hold go to segments of their own instead).
    """
    classes, left = [], pool_bytes
    for size, share, least in zip(CHUNK_SIZES, CHUNK_SHARES, MIN_CHUNKS):
        count = max(least, int(pool_bytes * share) // size)
        if count * size > left:
            count = left // size
            if count < least:
                continue
        classes.append(SizeClass(size, count))
        left -= count * size
    return classes


def _copy_into(dest, data) -> None:
    """Copy bytes, or each part of a Frame in turn, to a C address."""
    if not isinstance(data, Frame):
        ffi.memmove(dest, data, len(data))
        return
    off = 0
    for part in data.parts:
        size = memoryview(part).nbytes
        ffi.memmove(dest + off, part, size)
        off += size


def external_name(segment_name: str, ident: int) -> str:
    return f"{segment_name}_x{ident:x}"


class Payloads:
    """Reads and writes the payloads of one segment's slots, in one process."""

    def __init__(self, seg: "_core.Segment", max_bytes: int, ident_base: int = 0) -> None:
        self.seg = seg
        self._raw = seg.raw
        self.max_bytes = max_bytes
        # external ids: high byte tells whose (0 = app, w+1 = worker w)
        self._idents = itertools.count((ident_base << 24) + 1)
        self._handle_out = ffi.new("uint64_t *")

    # -- writing --------------------------------------------------------

    def write(self, data: bytes, inline_area, inline_cap: int, holder: int) -> tuple[int, int]:
        """Store ``data``; returns (handle, length) for the slot's fields.

        Raises:
            PayloadTooLargeError: beyond max_bytes; nothing was stored.
        """
        n = len(data)
        if n <= inline_cap and not isinstance(data, Frame):
            ffi.memmove(inline_area, data, n)
            return _core.HANDLE_INLINE << 56, n
        if n > self.max_bytes:
            raise PayloadTooLargeError(
                f"payload of {n} bytes exceeds max_payload_bytes={self.max_bytes}")
        out = self._handle_out
        if lib.czmp_arena_alloc(self._raw, n, holder, out) == 0:
            _copy_into(lib.czmp_arena_ptr(self._raw, out[0]), data)
            return out[0], n
        return self._write_external(data), n

    def _write_external(self, data: bytes) -> int:
        ident = next(self._idents) & 0xFFFFFFFF
        shm = posix_ipc.SharedMemory("/" + external_name(self.seg.name, ident),
                                     posix_ipc.O_CREX, mode=0o600, size=len(data))
        try:
            with mmap.mmap(shm.fd, len(data)) as m:
                off = 0
                for part in (data.parts if isinstance(data, Frame) else (data,)):
                    size = memoryview(part).nbytes
                    m[off:off + size] = part if not isinstance(part, memoryview) else part.cast("B")
                    off += size
        finally:
            shm.close_fd()
        return _core.external_handle(ident)

    # -- reading --------------------------------------------------------

    def read(self, handle: int, length: int, inline_area):
        """A buffer with the payload; valid until the slot is released."""
        kind = handle >> 56
        # `length` comes from the other process: never read past its area (issue 10.3)
        if kind == _core.HANDLE_INLINE:
            if length > ffi.sizeof(inline_area):
                raise ValueError(f"inline payload of {length} bytes exceeds its area")
            return ffi.buffer(inline_area, length)[:]
        if kind == _core.HANDLE_CHUNK:
            ptr = lib.czmp_arena_ptr(self._raw, handle)
            if ptr == ffi.NULL:
                raise ValueError(f"invalid chunk handle {handle:#x}")
            if length > lib.czmp_arena_chunk_size(self._raw, handle):
                raise ValueError(f"payload of {length} bytes exceeds its chunk {handle:#x}")
            return ffi.buffer(ptr, length)
        if kind == _core.HANDLE_EXTERNAL:
            return self._read_external(handle & 0xFFFFFFFF, length)
        raise ValueError(f"no payload (handle {handle:#x})")

    def _read_external(self, ident: int, length: int) -> bytes:
        shm = posix_ipc.SharedMemory("/" + external_name(self.seg.name, ident))
        try:
            with mmap.mmap(shm.fd, length, access=mmap.ACCESS_READ) as m:
                return m[:length]
        finally:
            shm.close_fd()

    def free_external(self, handle: int) -> None:
        """Unlink an external payload; chunks are freed by the slot's release."""
        if handle >> 56 == _core.HANDLE_EXTERNAL:
            try:
                posix_ipc.unlink_shared_memory("/" + external_name(self.seg.name, handle & 0xFFFFFFFF))
            except posix_ipc.ExistentialError:
                pass


def remove_externals(segment_name: str) -> int:
    """Unlink every external payload of a segment (shutdown, janitor)."""
    prefix = f"{segment_name}_x"
    removed = 0
    try:
        names = os.listdir("/dev/shm")
    except OSError:
        return 0
    for name in names:
        if name.startswith(prefix):
            try:
                os.unlink(os.path.join("/dev/shm", name))
                removed += 1
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
    return removed
