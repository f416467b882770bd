"""A read-only view of a running engine's shared-memory segment, for ``catzilla-mp top``.

``_core.Segment.attach`` maps a segment read-write, as workers need. An
observer must never be able to disturb the engine, so this module opens
/dev/shm/<name> O_RDONLY, maps it with ``mmap.ACCESS_READ`` (PROT_READ: a
stray write faults instead of corrupting a queue), and reads the structs of
czmp.h through cffi casts of that buffer. It validates the header itself,
as czmp_segment_attach would: magic, layout version, owner uid, and the
total size recomputed by the C core from the header's own counts.

Reads are racy by nature (the engine keeps running): every number is a
moment's value, which is all a monitor needs; nothing here follows a
pointer or an offset that the header did not validate.
"""
from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from typing import Optional

from .._native import ffi, lib
from ..errors import SegmentCorruptError, SegmentOwnerError, SegmentVersionError
from ..segment_janitor import SHM_DIR, SegmentName, owner_alive, parse_segment_name

NPRIO = lib.CZMP_NPRIO
PRIORITIES = ("critical", "high", "normal", "low")
#: Slots whose states are counted per frame; beyond it the count is skipped
#: (a scan of a 4M-slot table from Python would make top itself the load).
MAX_SLOT_SCAN = 1 << 16
WORKER_STATES = {
    lib.CZMP_WORKER_EMPTY: "empty", lib.CZMP_WORKER_STARTING: "starting",
    lib.CZMP_WORKER_IDLE: "idle", lib.CZMP_WORKER_BUSY: "busy",
    lib.CZMP_WORKER_STOPPING: "stopping", lib.CZMP_WORKER_DEAD: "dead",
}
SLOT_STATES = ("free", "queued", "running", "done", "held")


@dataclass
class WorkerInfo:
    index: int
    pid: int
    state: str
    current_slot: Optional[int]   # slot index, None when idle
    task_id: Optional[int]        # the engine's numeric id of that slot's task (0: not recorded)
    func_id: Optional[int]        # index in the function table (0: sent with the task)
    attempt: Optional[int]
    priority: Optional[str]
    running_s: Optional[float]
    tasks_done: int
    tasks_failed: int
    heartbeat_age_s: Optional[float]
    incarnation: int
    alive: bool


def find_segments(owner_pid: Optional[int] = None, shm_dir: str = SHM_DIR) -> list[SegmentName]:
    """This user's main segments whose owner is alive, newest first (optionally of one pid)."""
    found = []
    try:
        names = os.listdir(shm_dir)
    except FileNotFoundError:
        return []
    for name in names:
        parsed = parse_segment_name(name)
        if parsed is None or parsed.suffix is not None or parsed.uid != os.getuid():
            continue
        if owner_pid is not None and parsed.pid != owner_pid:
            continue
        if owner_alive(parsed):
            found.append(parsed)
    return sorted(found, key=lambda p: p.start_time, reverse=True)


class SegmentView:
    """Read-only mapping of one segment. Use as a context manager, or call close()."""

    def __init__(self, name: str, shm_dir: str = SHM_DIR) -> None:
        self.name = name.lstrip("/")
        self.path = os.path.join(shm_dir, self.name)
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size < ffi.sizeof("czmp_header_t"):
                raise SegmentCorruptError(f"{self.name}: {size} bytes, smaller than a header")
            self._mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        self.size = size
        self._buf = ffi.from_buffer(self._mm)       # read-only: never written through
        self._base = ffi.cast("char *", self._buf)
        self.header = ffi.cast("czmp_header_t *", self._base)
        try:
            self._validate()
        except BaseException:
            self.close()
            raise
        h = self.header
        self._workers = ffi.cast("czmp_worker_t *", self._base + h.workers_off)
        self._slots = ffi.cast("czmp_slot_t *", self._base + h.slots_off)
        self.parsed = parse_segment_name(self.name)

    def close(self) -> None:
        if self._mm is None:
            return
        self.header = self._workers = self._slots = self._base = None
        ffi.release(self._buf)  # the mmap refuses to close while a cffi buffer exports it
        self._mm.close()
        self._mm = None

    def __enter__(self) -> "SegmentView":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- validation ------------------------------------------------------

    def _validate(self) -> None:
        h = self.header
        if (h.magic_lo, h.magic_hi) != (lib.CZMP_MAGIC_LO, lib.CZMP_MAGIC_HI):
            raise SegmentCorruptError(f"{self.name}: not a catzilla_mp segment (bad magic)")
        if h.version != lib.CZMP_LAYOUT_VERSION:
            raise SegmentVersionError(f"{self.name}: layout version {h.version}, this catzilla_mp "
                                      f"reads {lib.CZMP_LAYOUT_VERSION}")
        if h.owner_uid != os.getuid() and os.getuid() != 0:
            raise SegmentOwnerError(f"{self.name}: owned by uid {h.owner_uid}")
        if h.header_size != ffi.sizeof("czmp_header_t") or not h.ready:
            raise SegmentCorruptError(f"{self.name}: header not ready or of another size")
        if h.nclasses > lib.CZMP_MAX_CLASSES or h.total_size != self._expected_size():
            raise SegmentCorruptError(f"{self.name}: inconsistent layout")
        if h.total_size > self.size:
            raise SegmentCorruptError(f"{self.name}: file shorter than its header says")
        ends = [h.tasks_off + NPRIO * h.ring_bytes, h.results_off + h.ring_bytes,
                h.slots_off + h.nslots * ffi.sizeof("czmp_slot_t"),
                h.workers_off + h.nworkers * ffi.sizeof("czmp_worker_t")]
        if any(end > h.total_size for end in ends):
            raise SegmentCorruptError(f"{self.name}: regions beyond the end")

    def _expected_size(self) -> int:
        """The size the C core computes for the header's own counts."""
        h = self.header
        cfg = ffi.new("czmp_config_t *")
        cfg.nslots, cfg.nworkers, cfg.nfuncs, cfg.nclasses = h.nslots, h.nworkers, h.nfuncs, h.nclasses
        for i in range(h.nclasses):
            cfg.class_size[i] = h.classes[i].chunk_size
            cfg.class_count[i] = h.classes[i].nchunks
        return lib.czmp_segment_size(cfg)

    # -- reading ----------------------------------------------------------

    @property
    def shutting_down(self) -> bool:
        return bool(self.header.shutdown)

    def exists(self) -> bool:
        """False once the owner removed the segment (our mapping stays readable)."""
        return os.path.exists(self.path)

    def owner_alive(self) -> bool:
        return self.parsed is not None and owner_alive(self.parsed)

    def queue_depths(self) -> dict[str, int]:
        h = self.header
        return {PRIORITIES[p]: self._ring_size(h.tasks_off + p * h.ring_bytes) for p in range(NPRIO)}

    def results_pending(self) -> int:
        return self._ring_size(self.header.results_off)

    def _ring_size(self, off: int) -> int:
        """tail - head of the ring at ``off`` (czmp_ring_shm: tail at word 0, head at word 8)."""
        words = ffi.cast("uint64_t *", self._base + off)
        tail, head = words[0], words[8]
        return tail - head if tail > head else 0

    def slot_states(self) -> Optional[dict[str, int]]:
        """How many slots are in each state, or None for a table too big to scan per frame."""
        n = self.header.nslots
        if n > MAX_SLOT_SCAN:
            return None
        counts = [0] * (len(SLOT_STATES) + 1)
        slots = self._slots
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
                slot = self._slots[slot_idx]
                task_id, func_id, attempt = slot.task_id, slot.func_id, slot.attempt
                prio = PRIORITIES[slot.priority] if slot.priority < NPRIO else str(slot.priority)
                running = (now - slot.started_ns) / 1e9 if slot.started_ns else None
            beat = rec.heartbeat_ns
            name = WORKER_STATES.get(state, str(state))
            if slot_idx is not None and name == "idle":
                name = "busy"  # the worker may skip its state word on the hot path; the slot is the truth
            out.append(WorkerInfo(
                index=i, pid=pid, state=name,
                current_slot=slot_idx, task_id=task_id, func_id=func_id, attempt=attempt,
                priority=prio,
                running_s=None if running is None else max(0.0, running),
                tasks_done=rec.tasks_done, tasks_failed=rec.tasks_failed,
                heartbeat_age_s=max(0.0, (now - beat) / 1e9) if beat else None,
                incarnation=rec.incarnation, alive=bool(pid) and _pid_alive(pid)))
        return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
