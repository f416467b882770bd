"""Workers are replaced between tasks (task count, memory), and never outlive their app."""
from __future__ import annotations

import collections
import os
import signal
import time

import psutil

import fault_jobs
from catzilla_mp import BackgroundTasks
from faultkit import SMALL, books_balance, wait_until, worker_pids


def test_max_tasks_per_worker_recycles_workers_without_losing_work(make_engine):
    engine = make_engine(workers=2, max_tasks_per_worker=5)
    tasks = [engine.add_task(fault_jobs.pid_after, 0.001) for _ in range(60)]
    pids = collections.Counter(t.wait(60) for t in tasks)
    assert sum(pids.values()) == 60
    assert max(pids.values()) <= 5 and len(pids) >= 12
    assert engine._backend.supervisor.crashes == 0  # a recycled worker exits cleanly
    wait_until(lambda: len(worker_pids(engine)) == 2, 30, "the pool back to 2")
    books_balance(engine)


def test_a_worker_over_its_memory_limit_finishes_its_task_then_is_replaced(make_engine, tmp_path):
    # one worker, room for a second: the replacement starts while the old one finishes
    engine = make_engine(workers=1, max_workers=2, enable_auto_scaling=False,
                         worker_memory_limit_mb=150)
    path, release = str(tmp_path / "runs"), tmp_path / "release"
    # the growth and the held task are one task: were they two, the supervisor's
    # RSS check could land between them and the worker would leave while idle
    busy = engine.add_task(fault_jobs.keep_then_hold, 200, path, "busy", str(release))
    wait_until(lambda: fault_jobs.runs(path).get("busy") == 1, 60, "the task running")
    fat_pid = int(open(path).read().split()[1])
    # the supervisor notices the RSS (checked every second) and starts a replacement
    wait_until(lambda: any(p != fat_pid for p in worker_pids(engine)), 60, "a replacement")
    queued = [engine.add_task(fault_jobs.pid_after, 0) for _ in range(20)]
    served_by = {t.wait(60) for t in queued}  # served while the old worker still runs
    assert fat_pid not in served_by
    assert psutil.pid_exists(fat_pid) and not busy.is_ready()
    release.touch()
    assert busy.wait(60) == "busy"  # the recycled worker's task was not lost or cut
    wait_until(lambda: fat_pid not in worker_pids(engine), 30, "the old worker gone")
    assert engine._backend.supervisor.crashes == 0
    books_balance(engine)


APP = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
import fault_jobs
from catzilla_mp import BackgroundTasks
engine = BackgroundTasks(workers=3, memory_pool_mb=16, queue_size=64)
busy = engine.add_task(fault_jobs.hold, sys.argv[2], "busy", sys.argv[3])
while len([r for w, r in engine._backend.supervisor.snapshot() if r.pid == w.pid]) < 3 \\
        or not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
pids = [w.pid for w, r in engine._backend.supervisor.snapshot()]
print(engine._backend.seg.name, *pids, flush=True)
time.sleep(600)
"""


def _alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_workers_exit_within_2s_of_their_app_being_killed_and_its_segment_is_swept(spawn, tmp_path):
    import subprocess

    app = spawn(APP, os.path.dirname(fault_jobs.__file__), str(tmp_path / "runs"),
                str(tmp_path / "never"), stdout=subprocess.PIPE, text=True)
    line = app.stdout.readline().split()
    assert line, "the app did not start"
    seg_name, pids = line[0], [int(p) for p in line[1:]]
    assert len(pids) == 3 and all(_alive(p) for p in pids)
    app.send_signal(signal.SIGKILL)
    app.wait()
    killed = time.monotonic()
    while any(_alive(p) for p in pids) and time.monotonic() - killed < 10:
        time.sleep(0.01)
    gone_after = time.monotonic() - killed
    assert not any(_alive(p) for p in pids), "workers outlived their app"
    assert gone_after <= 2.0, f"workers took {gone_after:.2f} s to exit"  # the bound
    # the dead app's segment is still there, until the next engine starts
    assert os.path.exists(f"/dev/shm/{seg_name}")
    BackgroundTasks(workers=1, **SMALL).shutdown()
    assert not os.path.exists(f"/dev/shm/{seg_name}")
