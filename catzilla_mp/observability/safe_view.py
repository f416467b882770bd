"""A segment view for ``catzilla-mp top`` that a hostile /dev/shm entry cannot hurt.

A view that maps the file and reads the live mapping (what top did before,
issue 12.6) dies of SIGBUS when another user truncates the file under it, a FIFO planted under
an engine's name hangs the open, a symlink is followed, and root skipped
the owner check. Here, instead:

* the name must be one of ours (segment_janitor's scheme) naming a main
  segment, and its pid must be a possible pid;
* the open is ``O_RDONLY | O_NOFOLLOW | O_NONBLOCK``: no symlink, no FIFO
  wait; fstat must then show a regular file, owned by the uid the name
  claims, which is also the header's ``owner_uid`` and (unless top runs as
  root) top's own uid, writable by its owner only;
* the header is validated as czmp_segment_attach does (magic, layout
  version, header size, owner, total size recomputed by the C core from the
  header's own counts, every region inside the file, ready), and counts are
  bounded before anything is sized from them;
* nothing is mapped: each frame reads COPIES with ``pread`` (the header,
  the ring heads, the worker table, the slots it shows). A file that
  shrank gives a short read, which ends top with a clear error; numbers
  are range-checked (a pid of 0xFFFFFFFF is shown as unknown, not passed to
  kill()).

The reading methods mirror SegmentView's, so ``top.render`` takes either.
"""
from __future__ import annotations

import errno
import os
import stat
from typing import Optional

from .._native import ffi, lib
from ..errors import SegmentCorruptError, SegmentOwnerError, SegmentVersionError
from ..segment_janitor import SHM_DIR, owner_alive, parse_segment_name
from .shm_view import MAX_SLOT_SCAN, NPRIO, PRIORITIES, SLOT_STATES, WORKER_STATES, WorkerInfo

#: The largest pid Linux can hand out (PID_MAX_LIMIT); anything above is garbage.
PID_MAX = 1 << 22
#: Bounds on the header's counts before top sizes a copy from them.
MAX_WORKERS = 1 << 16
MAX_SLOTS = 1 << 23
#: Bytes of a ring copied to read its size: its head and tail words sit in
#: the first three cache lines (native/internal.h); czmp_ring_size reads only those.
RING_HEAD_BYTES = 192


def pid_ok(pid: int) -> bool:
    """A pid that could name a process (1..PID_MAX)."""
    return 0 < pid <= PID_MAX


class SafeSegmentView:
    """Copies of one engine segment's state, re-read by ``refresh()``. Read-only, never mapped.

    Raises (from the constructor):
        SegmentCorruptError: not a regular file, not one of ours, truncated
            or inconsistent.
        SegmentOwnerError: owned by another uid than its name, header or caller.
        SegmentVersionError: another layout version.
        OSError: it does not exist (FileNotFoundError), or cannot be read.
    """

    def __init__(self, name: str, shm_dir: str = SHM_DIR) -> None:
        self.name = name.lstrip("/")
        self.parsed = parse_segment_name(self.name)
        if (self.parsed is None or self.parsed.suffix is not None or "/" in self.name
                or not pid_ok(self.parsed.pid)):
            raise SegmentCorruptError(f"{self.name!r} is not the name of a catzilla_mp engine segment")
        self.path = os.path.join(shm_dir, self.name)
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise SegmentCorruptError(f"{self.name}: a symbolic link, not a segment") from None
            raise
        try:
            self._check_file()
            self.header = self._read_header()
            self._validate()
            self._layout = self._layout_of(self.header)
            self.refresh()
        except BaseException:
            self.close()
            raise

    # -- opening -------------------------------------------------------------------

    def _check_file(self) -> None:
        st = os.fstat(self._fd)
        if not stat.S_ISREG(st.st_mode):
            raise SegmentCorruptError(f"{self.name}: not a regular file")
        me = os.getuid()
        if st.st_uid != self.parsed.uid or (me != 0 and st.st_uid != me):
            raise SegmentOwnerError(f"{self.name}: owned by uid {st.st_uid}, its name says "
                                    f"uid {self.parsed.uid}" + ("" if me == 0 else f", you are {me}"))
        if st.st_mode & 0o077:
            raise SegmentOwnerError(f"{self.name}: mode {st.st_mode & 0o777:o}; an engine's "
                                    "segment is readable by its owner only")
        if st.st_size < ffi.sizeof("czmp_header_t"):
            raise SegmentCorruptError(f"{self.name}: {st.st_size} bytes, smaller than a header")
        self.size = st.st_size

    def _read(self, n: int, offset: int) -> bytes:
        data = os.pread(self._fd, n, offset)
        if len(data) != n:
            raise SegmentCorruptError(f"{self.name}: the file ends before byte {offset + n} "
                                      "(truncated while top was reading it)")
        return data

    def _read_header(self):
        h = ffi.new("czmp_header_t *")
        ffi.memmove(h, self._read(ffi.sizeof("czmp_header_t"), 0), ffi.sizeof("czmp_header_t"))
        return h

    def _validate(self) -> None:
        h = self.header
        if (h.magic_lo, h.magic_hi) != (lib.CZMP_MAGIC_LO, lib.CZMP_MAGIC_HI):
            raise SegmentCorruptError(f"{self.name}: not a catzilla_mp segment (bad magic)")
        if h.version != lib.CZMP_LAYOUT_VERSION or h.header_size != ffi.sizeof("czmp_header_t"):
            raise SegmentVersionError(f"{self.name}: layout version {h.version}, this catzilla_mp "
                                      f"reads {lib.CZMP_LAYOUT_VERSION}")
        if h.owner_uid != self.parsed.uid:
            raise SegmentOwnerError(f"{self.name}: header says uid {h.owner_uid}, its name "
                                    f"uid {self.parsed.uid}")
        if not h.ready:
            raise SegmentCorruptError(f"{self.name}: header not ready")
        if (h.nclasses > lib.CZMP_MAX_CLASSES or h.nworkers > MAX_WORKERS
                or h.nslots > MAX_SLOTS):
            raise SegmentCorruptError(f"{self.name}: counts out of range")
        cfg = ffi.new("czmp_config_t *")
        cfg.nslots, cfg.nworkers, cfg.nfuncs, cfg.nclasses = h.nslots, h.nworkers, h.nfuncs, h.nclasses
        for i in range(h.nclasses):
            cfg.class_size[i] = h.classes[i].chunk_size
            cfg.class_count[i] = h.classes[i].nchunks
        expected = lib.czmp_segment_size(cfg)
        if expected == 0 or h.total_size != expected:
            raise SegmentCorruptError(f"{self.name}: inconsistent layout")
        if h.total_size > self.size:
            raise SegmentCorruptError(f"{self.name}: file shorter than its header says")
        hsize = ffi.sizeof("czmp_header_t")
        regions = [(h.tasks_off, NPRIO * h.ring_bytes), (h.results_off, h.ring_bytes),
                   (h.slots_off, h.nslots * ffi.sizeof("czmp_slot_t")),
                   (h.workers_off, h.nworkers * ffi.sizeof("czmp_worker_t"))]
        if h.ring_bytes < RING_HEAD_BYTES or any(
                off < hsize or off + n > h.total_size for off, n in regions):
            raise SegmentCorruptError(f"{self.name}: regions beyond the end")

    @staticmethod
    def _layout_of(h) -> tuple:
        return (h.total_size, h.tasks_off, h.results_off, h.slots_off, h.workers_off,
                h.ring_bytes, h.nslots, h.nworkers)

    # -- per frame ----------------------------------------------------------------------

    def refresh(self) -> None:
        """Read fresh copies of the header, ring heads and worker table.

        Raises:
            SegmentCorruptError: the file shrank, or its layout changed.
        """
        h = self._read_header()
        if self._layout_of(h) != self._layout or h.magic_lo != lib.CZMP_MAGIC_LO:
            raise SegmentCorruptError(f"{self.name}: the segment's layout changed under top")
        self.header = h
        rings = []
        for off in [h.tasks_off + p * h.ring_bytes for p in range(NPRIO)] + [h.results_off]:
            buf = ffi.new("char[]", RING_HEAD_BYTES)
            ffi.memmove(buf, self._read(RING_HEAD_BYTES, off), RING_HEAD_BYTES)
            rings.append(buf)
        self._rings = rings
        n = h.nworkers
        workers = ffi.new("czmp_worker_t[]", max(n, 1))
        size = n * ffi.sizeof("czmp_worker_t")
        if size:
            ffi.memmove(workers, self._read(size, h.workers_off), size)
        self._workers = workers

    def _slot(self, idx: int):
        slot = ffi.new("czmp_slot_t *")
        size = ffi.sizeof("czmp_slot_t")
        ffi.memmove(slot, self._read(size, self.header.slots_off + idx * size), size)
        return slot

    # -- reading (SegmentView's interface) ----------------------------------------------

    def close(self) -> None:
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> "SafeSegmentView":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def shutting_down(self) -> bool:
        return bool(self.header.shutdown)

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def owner_alive(self) -> bool:
        return owner_alive(self.parsed)

    def queue_depths(self) -> dict[str, int]:
        return {PRIORITIES[p]: self._ring_size(p) for p in range(NPRIO)}

    def results_pending(self) -> int:
        return self._ring_size(NPRIO)

    def _ring_size(self, i: int) -> int:
        # the shared ring starts with tail at word 0 and head at word 8
        # (czmp_ring_shm; czmp_ring_t is a per-process view since layout 5)
        words = ffi.cast("uint64_t *", self._rings[i])
        tail, head = words[0], words[8]
        n = tail - head if tail > head else 0
        return min(n, self.header.ring_cap or n)  # a torn read must not show billions

    def slot_states(self) -> Optional[dict[str, int]]:
        """How many slots are in each state (one bounded read), or None for a huge table."""
        n = self.header.nslots
        if n > MAX_SLOT_SCAN:
            return None
        size = ffi.sizeof("czmp_slot_t")
        slots = ffi.new("czmp_slot_t[]", max(n, 1))
        if n:
            ffi.memmove(slots, self._read(n * size, self.header.slots_off), n * size)
        counts = [0] * (len(SLOT_STATES) + 1)
        for i in range(n):
            counts[min(slots[i].state & 0xFF, len(SLOT_STATES))] += 1
        out = dict(zip(SLOT_STATES, counts))
        if counts[-1]:
            out["other"] = counts[-1]
        return out

    def workers(self, include_empty: bool = False) -> list[WorkerInfo]:
        now = lib.czmp_now_ns()
        out = []
        for i in range(self.header.nworkers):
            rec = self._workers[i]
            pid, state = rec.pid, rec.state
            if not include_empty and state == lib.CZMP_WORKER_EMPTY and not pid:
                continue
            cur = rec.current_slot
            slot_idx = cur - 1 if 0 < cur <= self.header.nslots else None
            task_id = func_id = attempt = prio = running = None
            if slot_idx is not None:
                slot = self._slot(slot_idx)
                task_id, func_id, attempt = slot.task_id, slot.func_id, slot.attempt
                prio = PRIORITIES[slot.priority] if slot.priority < NPRIO else str(slot.priority)
                running = (now - slot.started_ns) / 1e9 if 0 < slot.started_ns <= now else None
            beat = rec.heartbeat_ns
            name = WORKER_STATES.get(state, str(state))
            if slot_idx is not None and name == "idle":
                name = "busy"
            good_pid = pid_ok(pid)
            out.append(WorkerInfo(
                index=i, pid=pid if good_pid else 0, state=name if good_pid or not pid else "bad pid",
                current_slot=slot_idx, task_id=task_id, func_id=func_id, attempt=attempt,
                priority=prio, running_s=None if running is None else max(0.0, running),
                tasks_done=rec.tasks_done, tasks_failed=rec.tasks_failed,
                heartbeat_age_s=max(0.0, (now - beat) / 1e9) if 0 < beat <= now else None,
                incarnation=rec.incarnation, alive=good_pid and _pid_alive(pid)))
        return out


def _pid_alive(pid: int) -> bool:
    if not pid_ok(pid):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_segments(owner_pid: Optional[int] = None, shm_dir: str = SHM_DIR) -> list:
    """This user's main segments whose owner is alive, newest first; names with an
    impossible pid are skipped (they would reach the C core's process checks)."""
    found = []
    try:
        names = os.listdir(shm_dir)
    except FileNotFoundError:
        return []
    me = os.getuid()
    for name in names:
        parsed = parse_segment_name(name)
        if (parsed is None or parsed.suffix is not None or parsed.uid != me
                or not pid_ok(parsed.pid) or parsed.start_time >= 1 << 63):
            continue
        if owner_pid is not None and parsed.pid != owner_pid:
            continue
        if owner_alive(parsed):
            found.append(parsed)
    return sorted(found, key=lambda p: p.start_time, reverse=True)
