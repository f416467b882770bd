"""Names of shared-memory segments, and the janitor that removes dead owners' ones.

Every segment an engine creates is named

    czmp_<uid>_<pid>_<starttime>_<random>[_<suffix>]

where pid and starttime (clock ticks since boot, /proc/<pid>/stat field 22)
identify the creating process: a pid alone could be reused by an unrelated
process after the owner died, the pair cannot. The optional suffix names a
side segment of the same engine (a huge payload that did not fit the arena),
so one prefix finds the main segment and all of its side segments.

A SIGKILLed engine cannot unlink its segments; the janitor, run when a later
engine starts, removes every entry of ours whose owner is gone.

"Gone" is judged twice, because /proc only shows our own PID namespace:
containers sharing /dev/shm (``--ipc=host``, pods) see each other's segments
but not each other's processes (issue 10.9). The creator of a main segment
holds ``flock(LOCK_EX)`` on the segment's own file for as long as it has it
mapped (czmp_segment_create); the lock belongs to the open file, so it holds
in every namespace and vanishes with the process however it dies. An owner
is alive if /proc shows its pid with its start time OR that lock is held; a
side segment lives as long as its main segment's owner does. The janitor
removes a main segment only while holding that lock itself, so a creator
that opened the name but had not locked it yet finds it gone and starts
again (segment.c) rather than running on an unlinked file.
"""
from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
from dataclasses import dataclass

from ._native import lib

SHM_DIR = "/dev/shm"
PREFIX = "czmp"

_NAME_RE = re.compile(r"^czmp_(\d+)_(\d+)_(\d+)_([0-9a-f]+)(?:_([A-Za-z0-9.-]+))?$")


@dataclass(frozen=True)
class SegmentName:
    """The parts of a segment name (see the module docstring)."""
    uid: int
    pid: int
    start_time: int
    token: str
    suffix: str | None = None

    @property
    def base(self) -> str:
        """Name of the engine's main segment (the prefix of its side segments)."""
        return f"{PREFIX}_{self.uid}_{self.pid}_{self.start_time}_{self.token}"

    def __str__(self) -> str:
        return self.base if self.suffix is None else f"{self.base}_{self.suffix}"


def parse_segment_name(name: str) -> SegmentName | None:
    """Split a /dev/shm entry name into its parts; None if it is not ours."""
    m = _NAME_RE.match(name.lstrip("/"))
    if not m:
        return None
    uid, pid, start, token, suffix = m.groups()
    return SegmentName(int(uid), int(pid), int(start), token, suffix)


def new_segment_name() -> str:
    """A fresh main-segment name owned by the calling process."""
    pid = os.getpid()
    start = lib.czmp_process_start_time(pid)
    return str(SegmentName(os.getuid(), pid, start, secrets.token_hex(6)))


def side_segment_name(base: str, suffix: str | int) -> str:
    """Name of a side segment (e.g. a huge payload) belonging to segment ``base``."""
    if parse_segment_name(base) is None or parse_segment_name(base).suffix is not None:
        raise ValueError(f"not a main segment name: {base!r}")
    name = f"{base.lstrip('/')}_{suffix}"
    if parse_segment_name(name) is None:
        raise ValueError(f"bad side segment suffix: {suffix!r}")
    return name


def owner_alive(parsed: SegmentName, shm_dir: str = SHM_DIR) -> bool:
    """True if the engine named by the segment still runs.

    Either /proc (in our PID namespace) shows its pid with the same start
    time, or its main segment's owner lock is held (any namespace).
    """
    if parsed.pid > 0 and lib.czmp_process_start_time(parsed.pid) == parsed.start_time:
        return True
    return owner_lock_held(os.path.join(shm_dir, parsed.base))


def owner_lock_held(path: str) -> bool:
    """True if some process holds the owner lock (flock) on the segment file at ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)  # also drops our probe lock
    return False


def _unlink_if_unlocked(path: str, uid: int) -> bool:
    """Unlink ``path`` while holding its owner lock; False if it is held or not ours."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        # the name's uid could lie; the file's owner cannot
        if os.fstat(fd).st_uid != uid:
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # still the file we locked (not a fresh one under the same name)?
        if os.stat(path).st_ino != os.fstat(fd).st_ino:
            return False
        os.unlink(path)
        return True
    except OSError:
        return False  # locked by a live owner, or vanished meanwhile
    finally:
        os.close(fd)


def sweep_dead_segments(shm_dir: str = SHM_DIR) -> list[str]:
    """Remove this user's segments (and side segments) whose owner is dead.

    Entries of other users, entries not named by our scheme, and entries of
    live owners (see :func:`owner_alive`) are left alone. Returns the names
    removed. Never raises for an entry that vanished or could not be
    removed meanwhile.
    """
    uid = os.getuid()
    removed = []
    try:
        names = os.listdir(shm_dir)
    except FileNotFoundError:
        return removed
    # sorted: a main segment comes before its side segments, which are then
    # judged with their main segment (and its lock) gone
    for name in sorted(names):
        parsed = parse_segment_name(name)
        if parsed is None or parsed.uid != uid or owner_alive(parsed, shm_dir):
            continue
        if _unlink_if_unlocked(os.path.join(shm_dir, name), uid):
            removed.append(name)
    return removed
