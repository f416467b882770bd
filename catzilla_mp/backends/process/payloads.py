"""Where a payload's bytes live: in the slot, in an arena chunk, or in a segment of its own.

    size <= inline capacity      copied into the slot itself (no allocation)
    size <= largest chunk class  an arena chunk, tagged to the slot (or worker)
    larger, or arena full        a POSIX shm segment of its own, named after
                                 the engine's segment so shutdown and the
                                 janitor find it

The app writes arguments and reads results; workers do the reverse. Chunks
and external segments are freed by the app when it releases the slot.

External segments (issue 11.2, 11.3):
  * named ``<segment>_x<32 random bits>`` and created with O_EXCL (another
    local user who pre-creates a name only costs a retry with another one;
    a replacement worker never collides with the segments its predecessor
    left);
  * allocated for real (posix_fallocate), so a full /dev/shm is an ENOSPC
    here, turned into SharedMemoryFullError, instead of a SIGBUS on the first
    write through the mapping;
  * together capped by ``max_external_bytes`` (counted from /dev/shm, which
    every process of the engine sees: two writers at the same instant may
    overshoot the cap by one payload each);
  * removed by the app when it releases the slot, and at shutdown by name
    prefix, only those owned by this user, without ever raising.

Recycling (issue 18): creating a segment costs a fallocate (zeroing every
page), a page fault per 4 KiB on the first write, and an munmap and unlink
afterwards: ~15 ms for 16 MiB, ten times the copy itself. So the app keeps
a few released segments mapped (``Spares``) and writes the next big argument
into one of them:

    app: write args  --> spare (or a new segment) --> handle in the slot
    worker: reads the args (its own short-lived read-only mapping, no copy
            beyond unpickling), runs, publishes a result
    app: task COMPLETED --> recycle(args segment)   (the worker is done with it)

Only that moment recycles; every other release (a retry, a timeout, a
cancel, a dead worker) unlinks as before, so a segment is never rewritten
while a process may still read it for another task. A reader reads exactly
the length in the slot, never what lies beyond it in a larger recycled
segment. Results a worker writes to a segment of its own are not recycled
(the worker cannot know when the app is done with one). In both directions
a new segment gets its page tables in one madvise call, and the reader
unpickles straight from its mapping (one copy, not two). Spares are files under the engine's prefix: they count against
``max_external_bytes`` (dropped first when the cap would be passed), and
shutdown and the janitor remove them with the rest.
"""
from __future__ import annotations

import errno
import mmap
import os
import secrets
import threading

from ... import _core
from ..._core import SizeClass
from ..._native import ffi, lib
from ...errors import PayloadTooLargeError, SegmentError, SharedMemoryFullError
from ...serialization import Frame

#: Chunk sizes of the arena, smallest first. Powers of four keep the waste of
#: a size class under 75% while needing only a handful of pools; the last,
#: 32 MiB, holds a 16 MiB array with room to spare.
CHUNK_SIZES = (1 << 10, 1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 25)
#: Share of the pool each class gets, in the order of CHUNK_SIZES.
CHUNK_SHARES = (0.02, 0.03, 0.05, 0.10, 0.10, 0.15, 0.20, 0.35)
MIN_CHUNKS = (64, 32, 16, 8, 4, 2, 2, 2)
#: Where POSIX shared memory lives on Linux (shm_open is open() under it).
SHM_DIR = "/dev/shm"
#: Names tried before giving up on creating an external segment: a taken
#: name means someone pre-created it (or a 1 in 2**32 coincidence).
EXTERNAL_NAME_TRIES = 16
#: Released external segments one process keeps mapped for reuse (recycling,
#: above): more spares serve deeper pipelines of big payloads, each holds its
#: size in /dev/shm while idle.
SPARE_SEGMENTS = 4
#: ... and at most this many bytes of them together,
SPARE_BYTES = 256 << 20
#: ... nor more than this fraction (1/n) of max_external_bytes.
SPARE_SHARE = 8
#: New external segments are sized up to a multiple of this, so a spare fits
#: the next payload of about the same size (2 MiB: also a huge page).
SEGMENT_GRANULE = 2 << 20
#: madvise(2) advice missing from Python 3.11's mmap module (Linux 5.14+).
_MADV_POPULATE_WRITE = 23


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
    return f"{segment_name}_x{ident:08x}"


class Payloads:
    """Reads and writes the payloads of one segment's slots, in one process.

    ``max_external_bytes``: the cap on all external segments of the engine
    together (None: no cap). ``spares``: keep released external segments for
    reuse (the app; see "Recycling" above).
    """

    def __init__(self, seg: "_core.Segment", max_bytes: int,
                 max_external_bytes: "int | None" = None, *, spares: bool = False) -> None:
        self.seg = seg
        #: Recycled external segments (the app's; None in workers, which never recycle).
        self.spares: "Spares | None" = None
        if spares:
            # idle spares hold /dev/shm: never more than a small share of the cap
            self.spares = Spares(nbytes=SPARE_BYTES if max_external_bytes is None
                                 else min(SPARE_BYTES, max_external_bytes // SPARE_SHARE))
        #: ident -> mapping of the external payloads this process wrote and still
        #: keeps mapped (only with spares), until recycled or freed.
        self._live: dict[int, _Spare] = {}
        self._raw = seg.raw
        self.max_bytes = max_bytes
        self.max_external_bytes = max_external_bytes
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
        """A segment of its own for ``data`` (a spare, or a new one); returns its handle.

        Raises:
            SharedMemoryFullError: /dev/shm has no room, or max_external_bytes
                would be passed; nothing is left behind.
            SegmentError: no free name after EXTERNAL_NAME_TRIES attempts.
        """
        n = len(data)
        spares = self.spares
        if spares is not None:
            spare = spares.take(n)
            if spare is not None:
                try:
                    _fill(spare.map, data)
                except BaseException:
                    spares.discard(spare)
                    raise
                self._live[spare.ident] = spare
                return _core.external_handle(spare.ident)
        # Sized up to a granule so the next payload of about this size fits
        # it once recycled (the app's; a worker's segments are never reused).
        size = -(-n // SEGMENT_GRANULE) * SEGMENT_GRANULE if spares is not None else n
        cap = self.max_external_bytes
        if cap is not None:
            used = external_bytes(self.seg.name)
            if used + size > cap and spares is not None and spares.drop_all():
                used = external_bytes(self.seg.name)  # idle spares gave way first
            if used + size > cap:
                if used + n > cap:
                    raise SharedMemoryFullError(
                        f"a payload of {n} bytes does not fit its own segment: external "
                        f"payloads already hold {used} bytes of max_external_bytes={cap}")
                size = n  # fits, but without the room to recycle into
        fd, path, ident = self._create_external()
        m = None
        try:
            try:
                # Allocate every page now: a sparse file whose pages cannot be
                # found later kills the writer with SIGBUS in the middle of a copy.
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.ENOMEM):
                    raise SharedMemoryFullError(
                        f"{SHM_DIR} has no room for a payload of {n} bytes "
                        f"({os.strerror(exc.errno)}); free some, enlarge it, or lower "
                        "max_payload_bytes / max_external_bytes") from None
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                os.ftruncate(fd, size)  # a file system without fallocate: the old way
            m = mmap.mmap(fd, size)
            # Build the page tables in one call instead of a fault per page
            # (kernels before 5.14 refuse it: the copy faults them in then).
            _advise(m, _MADV_POPULATE_WRITE, n)
            _fill(m, data)
            if spares is not None:  # kept mapped until the app recycles or frees it
                self._live[ident] = _Spare(ident, os.fstat(fd).st_ino, size, m, path)
                m = None
        except BaseException:
            _unlink_quietly(path)
            raise
        finally:
            if m is not None:
                m.close()
            os.close(fd)
        return _core.external_handle(ident)

    def _create_external(self) -> tuple[int, str, int]:
        """(fd, path, ident) of a new, empty, exclusively created segment."""
        for _ in range(EXTERNAL_NAME_TRIES):
            ident = secrets.randbits(32)
            path = os.path.join(SHM_DIR, external_name(self.seg.name, ident))
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue  # not ours: never opened, never removed
            except OSError as exc:
                if exc.errno == errno.ENOSPC:  # no inode left
                    raise SharedMemoryFullError(
                        f"{SHM_DIR} has no room for another segment: {exc.strerror}") from None
                raise SegmentError(f"cannot create a payload segment in {SHM_DIR}: {exc}") from exc
            return fd, path, ident
        raise SegmentError(f"{EXTERNAL_NAME_TRIES} random payload segment names were all taken "
                           f"in {SHM_DIR}: someone is creating names like {self.seg.name}_x...")

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

    def _read_external(self, ident: int, length: int):
        """A read-only view of an external payload: no copy (unpickling makes the one copy).

        The mapping lives as long as the view (or anything sliced from it);
        the name may be unlinked or recycled after the reader is done with it.
        """
        if length == 0:
            return b""
        path = os.path.join(SHM_DIR, external_name(self.seg.name, ident))
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid() or st.st_size < length:
                raise ValueError(f"payload segment {path} is not the one written "
                                 f"(owner {st.st_uid}, {st.st_size} bytes)")
            m = mmap.mmap(fd, length, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        return memoryview(m)

    def free_external(self, handle: int) -> None:
        """Unlink an external payload; chunks are freed by the slot's release. Never raises."""
        if handle >> 56 == _core.HANDLE_EXTERNAL:
            ident = handle & 0xFFFFFFFF
            spare = self._live.pop(ident, None)
            if spare is not None:
                spare.close()
            _unlink_quietly(os.path.join(SHM_DIR, external_name(self.seg.name, ident)))

    def recycle_external(self, handle: int) -> None:
        """App: the payload's task is over and no process reads it any more; keep it as a spare.

        Call only where that is certain (see "Recycling" above): the
        arguments of a COMPLETED task. A segment another process wrote, or
        one the spares have no room for, is unlinked as free_external does.
        Never raises.
        """
        if handle >> 56 != _core.HANDLE_EXTERNAL:
            return
        if self.spares is None:
            self.free_external(handle)
            return
        spare = self._live.pop(handle & 0xFFFFFFFF, None)
        if spare is None:  # not one this process wrote (and keeps mapped)
            self.free_external(handle)
            return
        if not self.spares.give(spare):
            spare.close()
            _unlink_quietly(spare.path)

    def drop_spares(self) -> int:
        """Unlink and unmap the spare segments (shutdown); returns how many. Never raises."""
        kept = self.unlink_spares()
        for spare in kept:
            spare.close()
        return len(kept)

    def unlink_spares(self) -> "list[_Spare]":
        """Unlink the spare segments (and those still live) now; return them, still mapped.

        Shutdown's half of drop_spares: their names are gone at once, and the
        unmap, which frees their pages (~1 ms per 16 MiB, the GIL held by
        mmap.close), is the caller's to do off the shutdown path (issue 18).
        Never raises.
        """
        if self.spares is None:
            return []
        kept = [spare for spare in (self._live.pop(ident, None) for ident in list(self._live))
                if spare is not None]
        for spare in kept:
            _unlink_quietly(spare.path)
        kept += self.spares.unlink_all()
        return kept


class _Spare:
    """One external segment this process keeps mapped read-write."""

    __slots__ = ("ident", "ino", "size", "map", "path")

    def __init__(self, ident: int, ino: int, size: int, m: mmap.mmap, path: str) -> None:
        self.ident, self.ino, self.size, self.map, self.path = ident, ino, size, m, path

    def close(self) -> None:
        try:
            self.map.close()
        except (BufferError, ValueError):  # a view still out: unmapped when it goes
            pass

    def still_named(self) -> bool:
        """Our file still has its name (not unlinked by shutdown or the janitor, not replaced)."""
        try:
            return os.stat(self.path, follow_symlinks=False).st_ino == self.ino
        except OSError:
            return False


class Spares:
    """Released external segments kept mapped for reuse, at most ``count``/``nbytes``. Thread-safe.

    Writers (any app thread submitting a task) take; the collector gives.
    """

    def __init__(self, count: int = SPARE_SEGMENTS, nbytes: int = SPARE_BYTES) -> None:
        self.count, self.nbytes = count, nbytes
        self._lock = threading.Lock()
        self._free: list[_Spare] = []

    def take(self, n: int) -> "_Spare | None":
        """The smallest spare holding ``n`` bytes without wasting more than half of it."""
        with self._lock:
            best = None
            for spare in self._free:
                if n <= spare.size <= max(2 * n, n + SEGMENT_GRANULE) and (
                        best is None or spare.size < best.size):
                    best = spare
            if best is None:
                return None
            self._free.remove(best)
        if best.still_named():
            return best
        best.close()  # someone removed it (shutdown, a janitor): not ours to reuse
        return None

    def give(self, spare: _Spare) -> bool:
        """Keep ``spare``; False (nothing kept) when that would pass the limits."""
        with self._lock:
            if (len(self._free) >= self.count
                    or sum(s.size for s in self._free) + spare.size > self.nbytes):
                return False
            self._free.append(spare)
            return True

    def discard(self, spare: _Spare) -> None:
        """A spare that must not be reused (a failed write): unmap and unlink it."""
        spare.close()
        _unlink_quietly(spare.path)

    def drop_all(self) -> int:
        """Unmap and unlink every idle spare; returns how many."""
        with self._lock:
            free, self._free = self._free, []
        for spare in free:
            self.discard(spare)
        return len(free)

    def unlink_all(self) -> "list[_Spare]":
        """Unlink every idle spare and hand them over, still mapped, for the caller to close."""
        with self._lock:
            free, self._free = self._free, []
        for spare in free:
            _unlink_quietly(spare.path)
        return free

    def __len__(self) -> int:
        return len(self._free)


def _fill(m: mmap.mmap, data) -> None:
    """Copy bytes, or each part of a Frame in turn, to the start of a mapping."""
    off = 0
    for part in (data.parts if isinstance(data, Frame) else (data,)):
        view = part if isinstance(part, memoryview) else memoryview(part)
        size = view.nbytes
        m[off:off + size] = view if view.format == "B" and view.ndim == 1 else view.cast("B")
        off += size


def _advise(m: mmap.mmap, advice: int, length: int) -> None:
    """madvise the first ``length`` bytes; an advice the kernel does not know is skipped."""
    try:
        m.madvise(advice, 0, length)
    except (OSError, ValueError, AttributeError):
        pass


def _unlink_quietly(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except OSError:
        return False


def _own_externals(segment_name: str):
    """(path, size) of the external payloads of a segment that belong to this user."""
    prefix = f"{segment_name}_x"
    try:
        names = [n for n in os.listdir(SHM_DIR) if n.startswith(prefix)]
    except OSError:
        return
    me = os.geteuid()
    for name in names:
        path = os.path.join(SHM_DIR, name)
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            continue
        if st.st_uid == me:
            yield path, st.st_size


def external_bytes(segment_name: str) -> int:
    """Bytes held now by the external payloads of a segment (all its processes')."""
    return sum(size for _, size in _own_externals(segment_name))


def remove_externals(segment_name: str) -> int:
    """Unlink the external payloads of a segment (shutdown, janitor); returns how many.

    Only this user's: a name another user made to look like ours is left
    alone (and could not be removed from the sticky /dev/shm anyway). Never
    raises: a shutdown must get to its end.
    """
    return sum(_unlink_quietly(path) for path, _ in _own_externals(segment_name))
