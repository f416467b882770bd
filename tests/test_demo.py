"""``catzilla-mp demo``: the newcomer's first run works, says what happened, and cleans up.

The demo runs as a subprocess (``python -m catzilla_mp.demo``), as a user
runs it; stdout and stderr are pipes, so rich's non-terminal path is the one
exercised. The leak guard (tests/conftest.py) fails a test whose demo left a
worker process or a /dev/shm segment behind.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from catzilla_mp import TaskPriority, demo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_demo(*args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.run([sys.executable, "-m", "catzilla_mp.demo", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_the_plan_covers_every_priority_a_delay_a_retry_and_a_timeout():
    with tempfile.TemporaryDirectory() as scratch:
        jobs = demo.plan(demo.QUICK, scratch)
    assert {j.priority for j in jobs} == set(TaskPriority)
    assert any(j.delay_ms for j in jobs)
    assert [j.kind for j in jobs if j.fn is demo.jobs.deliver_webhook] == ["webhook (flaky)"]
    runaway = [j for j in jobs if j.fn is demo.jobs.runaway_export]
    assert len(runaway) == 1 and runaway[0].timeout_ms < runaway[0].args[0] * 1000


def test_a_partial_serial_baseline_scales_each_kind_by_its_count():
    jobs = [demo.Job("a", demo.jobs.hash_password, ("pw", b"salt", 1000), TaskPriority.HIGH)] * 4
    jobs += [demo.Job("b", demo.jobs.count_primes, (2000,), TaskPriority.LOW)] * 2
    steps = []
    out = demo.run_serial(jobs, 0.5, lambda i, n: steps.append((i, n)))
    assert out["tasks_run"] == 3 and steps[-1] == (3, 3)
    assert out["kinds"]["a"] == dict(out["kinds"]["a"], count=4, ran=2)
    expected = sum(k["mean_ms"] * k["count"] for k in out["kinds"].values()) / 1000
    assert out["seconds"] == pytest.approx(expected)


def test_the_cli_hands_demo_its_own_options(capsys):
    from catzilla_mp import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", "--help"])
    assert exit_.value.code == 0
    assert "--quick" in capsys.readouterr().out


@pytest.mark.timeout_guard(240)
def test_quick_demo_accounts_for_every_task_and_reports_without_a_terminal():
    # Given the demo run as a newcomer would, with pipes instead of a terminal
    proc = run_demo("--quick", "--json")

    # Then it succeeds and its JSON summary accounts for every task
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    tasks = s["tasks"]
    assert tasks["accounted"] == tasks["total"] == sum(k["count"] for k in s["kinds"].values())
    assert tasks.get("cancelled", 0) == 0
    assert tasks["completed"] == tasks["total"] - 1  # only the runaway export fails
    assert s["interrupted"] is False and s["workers"] >= 1

    # the flaky webhook failed twice, was retried, and recovered
    retried = s["retried"]
    assert retried["status"] == "COMPLETED" and retried["retries"] == 2
    assert all(e.startswith("ConnectionError") for e in retried["attempt_errors"])
    # the runaway export was stopped by its timeout and not retried
    timed_out = s["timed_out"]
    assert timed_out["status"] == "FAILED" and timed_out["error"] == "TaskTimeoutError"
    assert timed_out["retries"] == 0
    assert s["engine_stats"]["timeout_count"] == 1 and s["engine_stats"]["retry_count"] == 2

    # the serial baseline really ran, and a speed-up was measured (its size is the bench's job)
    assert s["serial"]["tasks_run"] > 0 and s["serial"]["seconds"] > 0
    assert s["speedup"] > 0
    assert all(k["mean_ms"] is not None for k in s["kinds"].values())

    # and rich, writing to a pipe, still printed the display's last frame and the report
    err = proc.stderr
    assert "Traceback" not in err
    for text in ("tasks/s", "busy", "critical", "What ran", "Retried:", "Timed out:",
                 "Speed-up:"):
        assert text in err, f"{text!r} missing from the report:\n{err}"


@pytest.mark.timeout_guard(240)
def test_ctrl_c_stops_the_demo_at_once_and_leaves_nothing_behind():
    # Given a full-size demo (tens of seconds) that has started its engine
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen([sys.executable, "-m", "catzilla_mp.demo", "--json"], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()
        assert "background jobs" in first, first + proc.stderr.read()
        time.sleep(2.0)  # submitting takes milliseconds; the run, tens of seconds

        # When the user presses Ctrl-C mid-run
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    # Then it exits as interrupted, with every task accounted for
    assert proc.returncode == demo.EXIT_INTERRUPTED, err
    assert "Traceback" not in err
    s = json.loads(out)
    assert s["interrupted"] is True and s["speedup"] is None
    assert s["tasks"]["accounted"] == s["tasks"]["total"]
    assert s["tasks"]["not_submitted"] == 0
    assert s["tasks"].get("cancelled", 0) > 0  # 2 s into a burst of tens of seconds
