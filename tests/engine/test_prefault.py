"""The pool's background pre-fault waits while tasks are queued or running (issue 18).

Backing a 500 MiB pool costs ~0.35 s of a core. Done beside running tasks it
took their CPU and the collector's: CRITICAL results of the mixed-load
benchmark came up to ~50 ms late. A busy pool backs chunks on first use.
"""
from __future__ import annotations

import os
import time

import engine_jobs as jobs
from catzilla_mp import TaskStatus
from catzilla_mp.backends.process import backend as process_backend

POOL_MB = 64


def _backed(engine) -> int:
    return os.stat(os.path.join("/dev/shm", engine._backend.seg.name)).st_blocks * 512


def test_the_pool_is_not_prefaulted_while_a_task_runs_and_is_once_the_engine_is_idle(
        make_engine, tmp_path):
    # Given an engine whose pool is backed in the background, and a task running
    engine = make_engine(workers=1, memory_pool_mb=POOL_MB, populate=True)
    gate = tmp_path / "go"
    task = engine.add_task(jobs.wait_for_path, str(gate))
    deadline = time.monotonic() + 30
    while task.status is not TaskStatus.RUNNING and time.monotonic() < deadline:
        time.sleep(0.01)
    before = _backed(engine)
    # When more than the pre-fault's delay passes while it runs
    time.sleep(process_backend.PREFAULT_DELAY_S + 1.0)
    # Then at most one step of the pool was backed meanwhile
    assert _backed(engine) - before <= process_backend.PREFAULT_STEP
    # And once the task is done, the pre-fault runs to its end and backs the pool
    gate.touch()
    assert task.wait(60) is True
    engine._backend._prefault.join(60)
    assert not engine._backend._prefault.is_alive()
    assert _backed(engine) - before >= (POOL_MB << 20) // 2
