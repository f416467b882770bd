"""Signals as servers deliver them: SIGTERM to the app, SIGKILL to a worker (issue 11.7 and "also expected").

SIGTERM is what gunicorn, systemd and Kubernetes send. An app that lets
Python run its exit handlers (a handler that raises SystemExit, as web
servers install) gets a clean engine shutdown from the atexit hook; an app
killed outright leaves its segment, which the next engine start sweeps (its
workers die with it: PR_SET_PDEATHSIG).
"""
from __future__ import annotations

import json
import os
import signal

import psutil
import pytest

import deploy_jobs
from faultkit_deploy import wait_until

HERE = os.path.dirname(os.path.abspath(__file__))

APP = r"""
import json, os, signal, sys, time
sys.path.insert(0, {here!r})
if {handler}:
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
from catzilla_mp import BackgroundTasks
import deploy_jobs
engine = BackgroundTasks(workers=2, memory_pool_mb=8, queue_size=64, shutdown_timeout=5)
assert engine.add_task(deploy_jobs.square, 3).wait(60) == 9
# both workers serving (a worker forked by the zygote may serve before the next is forked)
while len([r for w, r in engine._backend.supervisor.snapshot() if r.pid == w.pid]) < 2:
    time.sleep(0.01)
pids = [w.pid for w, _ in engine._backend.supervisor.snapshot()]
print(json.dumps({{"segment": engine._backend.seg.name, "workers": pids}}), flush=True)
while True:
    time.sleep(0.05)
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _start_app(spawn, handler: bool):
    import subprocess

    app = spawn(APP.format(here=HERE, handler=handler), stdout=subprocess.PIPE, text=True)
    info = json.loads(app.stdout.readline())
    assert len(info["workers"]) == 2 and os.path.exists(f"/dev/shm/{info['segment']}")
    return app, info


def test_sigterm_to_an_app_that_runs_exit_handlers_shuts_its_engine_down_cleanly(spawn):
    app, info = _start_app(spawn, handler=True)
    app.send_signal(signal.SIGTERM)
    assert app.wait(timeout=60) == 0
    # the atexit hook ran before the process ended: nothing is left at all
    assert not os.path.exists(f"/dev/shm/{info['segment']}")
    wait_until(lambda: all(_gone(p) for p in info["workers"]), what="the workers gone")


def test_sigterm_to_an_app_that_dies_of_it_leaves_what_the_next_engine_start_sweeps(spawn,
                                                                                make_engine):
    app, info = _start_app(spawn, handler=False)
    app.send_signal(signal.SIGTERM)
    assert app.wait(timeout=60) == -signal.SIGTERM
    wait_until(lambda: all(_gone(p) for p in info["workers"]), what="the workers gone")
    assert os.path.exists(f"/dev/shm/{info['segment']}")  # no exit handler ran
    engine = make_engine()  # the next start sweeps segments of dead apps
    assert not os.path.exists(f"/dev/shm/{info['segment']}")
    assert engine.add_task(deploy_jobs.square, 4).wait(60) == 16


@pytest.mark.parametrize("how", ["cancel(force=True)", "worker SIGKILLed"])
def test_killing_a_worker_kills_the_processes_its_task_started(make_engine, tmp_path, how):
    """Issue 11.7: a task's child processes outlived their worker (reparented to init)."""
    engine = make_engine()
    pid_path = str(tmp_path / "child.pid")
    task = engine.add_task(deploy_jobs.start_child_and_sleep, pid_path, max_retries=0)
    wait_until(lambda: os.path.exists(pid_path), what="the task's child started")
    child = psutil.Process(int(open(pid_path).read()))
    try:
        if how == "cancel(force=True)":
            assert task.cancel(force=True)
        else:
            worker = psutil.Process(child.ppid())
            worker.kill()
            with pytest.raises(Exception, match="died running task"):
                task.wait(60)
        wait_until(lambda: _gone(child.pid), what="the task's child killed with its worker")
    finally:
        if not _gone(child.pid):
            child.kill()
    assert engine.add_task(deploy_jobs.square, 5).wait(60) == 25
