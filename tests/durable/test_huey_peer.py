"""Huey's SqliteHuey deletes a task when a consumer dequeues it; the journal keeps it until its outcome.

The difference issue 14 asks to show: kill the process running a task, start
again, and see whether the task ever completes.
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import time

import psutil
import pytest

from catzilla_mp import BackgroundTasks

huey = pytest.importorskip("huey")
HERE = pathlib.Path(__file__).parent


def wait_for(path: pathlib.Path, deadline_s: float = 60.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_huey_loses_a_running_task_in_a_crash_and_catzilla_mp_does_not(spawn, tmp_path):
    import huey_app

    # Given a task running in each system, its consumer / app then SIGKILLed
    hlog, clog = tmp_path / "huey", tmp_path / "czmp"
    hlog.mkdir()
    clog.mkdir()
    hdb = str(tmp_path / "huey.db")
    hq, tasks = huey_app.make(hdb)
    result = tasks["long_once"](str(hlog), "h", 5)
    consumer = spawn(huey_app.CONSUMER, hdb, "1", stdout=subprocess.PIPE,
                     text=True)
    wait_for(hlog / "started-h")
    os.kill(consumer.pid, signal.SIGKILL)
    consumer.wait()

    journal = str(tmp_path / "journal.db")
    app = spawn(open(HERE / "crash_app.py").read(), journal, str(clog), "0", "0", "1",
                stdout=subprocess.PIPE, text=True)
    ids = json.loads(app.stdout.readline())
    assert app.stdout.readline().strip() == "READY"
    family = [app.pid] + [c.pid for c in psutil.Process(app.pid).children(recursive=True)]
    for pid in family:
        os.kill(pid, signal.SIGKILL)
    app.wait()
    psutil.wait_procs([psutil.Process(p) for p in family if psutil.pid_exists(p)], timeout=10)

    # Then Huey has nothing left to run: the task left its queue when dequeued, with no result
    assert hq.pending_count() == 0
    assert result.get() is None
    # a new consumer finds nothing (its queue is empty), so the task never completes
    again = spawn(huey_app.CONSUMER, hdb, "1", stdout=subprocess.PIPE, text=True)
    assert again.stdout.readline().strip() == "CONSUMING"
    assert hq.pending_count() == 0 and result.get() is None
    os.kill(again.pid, signal.SIGTERM)
    again.wait(30)
    # while catzilla_mp's restart completes its task, the killed attempt counted
    engine = BackgroundTasks(workers=1, memory_pool_mb=8, queue_size=64, durable=journal)
    try:
        t = engine.get_task_result(ids["long"][0])
        assert t.wait(60) == 0 and t.attempt == 1
    finally:
        engine.shutdown()
