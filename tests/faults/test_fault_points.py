"""A worker SIGKILLed at each named point of its loop loses no task and delivers none twice.

Points (workers.py and the C core's CZMP_FAULT_*):
  taken       slot RUNNING(w), nothing of the task run        -> re-run, one attempt used
  c3          slot RUNNING(w), its ring cell not yet released  -> re-run, one attempt used
  running     in the task, before the function                -> re-run, one attempt used
  c4          result chunk allocated (big result), not in slot -> re-run, one attempt used
  ran         the function returned, result not yet written    -> re-run (it ran twice)
  publishing  result in the slot, slot still RUNNING           -> re-run (it ran twice)
  c5          slot DONE(w), hint not in the result ring        -> delivered by the reap, no re-run
  c1          slot DONE(w), result-ring cell claimed, unpublished -> delivered by the reap
  c2          a task-ring cell claimed, slot still QUEUED      -> handed back by the ring repair,
                                                                     never started: no attempt used
Every case: each task delivers exactly one outcome (callbacks counted), the
others are correct, a replacement worker serves, and afterwards every slot,
chunk and ring cell is back.
"""
from __future__ import annotations

import pytest

import fault_jobs
from catzilla_mp import WorkerCrashedError
from faultkit import books_balance, counting_callbacks, replacement_started

N = 12
BIG = 40_000  # bytes: beyond the slot's inline result, inside an arena chunk

#: point -> (task re-run after the crash?, function ran before the crash?)
POINTS = {
    "taken": (True, False),
    "c3": (True, False),
    "running": (True, False),
    "c4": (True, True),
    "ran": (True, True),
    "publishing": (True, True),
    "c5": (False, True),
    "c1": (False, True),
}



def _submit(engine, path, point, max_retries):
    if point == "c4":
        return [engine.add_task(fault_jobs.mark_big, path, i, BIG, max_retries=max_retries)
                for i in range(N)]
    return [engine.add_task(fault_jobs.mark, path, i, max_retries=max_retries) for i in range(N)]


def _expected(point, i):
    return bytes([i % 256]) * BIG if point == "c4" else i * 3 + 1


@pytest.mark.parametrize("point", list(POINTS) + [
    "c2"])
def test_a_worker_killed_at_a_fault_point_loses_and_duplicates_nothing(make_engine, arm_fault,
                                                                       tmp_path, point):
    arm_fault(point, 1)
    engine = make_engine(workers=1)
    path = str(tmp_path / "runs")
    tasks = _submit(engine, path, point, max_retries=3)
    delivered = counting_callbacks(tasks)
    values = [t.wait(60) for t in tasks]
    assert arm_fault.armed()
    assert values == [_expected(point, i) for i in range(N)]
    assert all(len(v) == 1 for v in delivered.values()), delivered
    rerun, ran = POINTS.get(point, (False, False))
    retries = sorted(t.get_stats().retries for t in tasks)
    runs = fault_jobs.runs(path)
    if rerun:
        assert retries == [0] * (N - 1) + [1]
        assert sum(runs.values()) == N + (1 if ran else 0)
    else:
        assert retries == [0] * N
        assert sum(runs.values()) == N and set(runs.values()) == {1}
    assert engine._backend.supervisor.crashes == 1
    replacement_started(engine)
    books_balance(engine)
    assert engine.add_task(fault_jobs.triple, 5).wait(30) == 16


@pytest.mark.parametrize("point", [p for p, (rerun, _) in POINTS.items() if rerun])
def test_with_no_attempts_left_the_task_fails_naming_the_signal(make_engine, arm_fault,
                                                                 tmp_path, point):
    arm_fault(point, 1)
    engine = make_engine(workers=1)
    path = str(tmp_path / "runs")
    tasks = _submit(engine, path, point, max_retries=0)
    delivered = counting_callbacks(tasks)
    outcomes = []
    for t in tasks:
        try:
            outcomes.append(t.wait(60))
        except WorkerCrashedError as exc:
            outcomes.append(exc)
    crashed = [o for o in outcomes if isinstance(o, WorkerCrashedError)]
    assert len(crashed) == 1
    assert crashed[0].exitcode == -9 and "SIGKILL" in str(crashed[0])
    assert [o for o in outcomes if not isinstance(o, WorkerCrashedError)] == \
        [_expected(point, i) for i in range(N) if outcomes[i] is not crashed[0]]
    assert all(len(v) == 1 for v in delivered.values())
    replacement_started(engine)
    books_balance(engine)


VICTIM = """
import sys
from catzilla_mp._core import Segment
from catzilla_mp._native import ffi, lib
seg = Segment.attach(sys.argv[1])
lib.czmp_fault_arm(lib.CZMP_FAULT_RING_POP_CLAIMED, 1)
out = ffi.new("uint32_t *")
lib.czmp_ring_pop(lib.czmp_segment_task_ring(seg.raw, 3), out)
sys.exit(7)  # the fault did not fire
"""


def test_a_process_dying_with_a_claimed_task_ring_cell_delays_the_task_only(make_engine, spawn,
                                                                            tmp_path):
    # Given an engine whose only worker is busy, with one LOW task queued behind it
    engine = make_engine(workers=1)
    release = tmp_path / "release"
    path = str(tmp_path / "runs")
    blocker = engine.add_task(fault_jobs.hold, path, "blocker", str(release))
    from faultkit import wait_running
    wait_running(blocker)
    victim = engine.add_task(fault_jobs.mark, path, 1, priority="low")
    delivered = counting_callbacks([victim])
    # When a process claims that task's ring cell and is SIGKILLed before releasing it
    p = spawn(VICTIM, engine._backend.seg.name)
    assert p.wait(30) == -9
    release.touch()
    # Then the supervisor's ring repair hands the hint back: the task runs once, unretried
    assert victim.wait(60) == 4 and blocker.wait(30) == "blocker"
    assert victim.get_stats().retries == 0 and fault_jobs.runs(path)["1"] == 1
    assert len(delivered[victim.task_id]) == 1
    books_balance(engine)
