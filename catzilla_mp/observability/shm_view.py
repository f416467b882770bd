"""What ``catzilla-mp top`` shows of a segment: state names and the WorkerInfo record.

The reading itself is safe_view.SafeSegmentView's (copies read with pread
from a file checked to be ours, never a live mapping).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .._native import lib

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
SLOT_STATES = ("free", "queued", "running", "done", "held", "waiting", "feeding")  # czmp.h order


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
