"""Structured logs: the events worth a line reach ``logging`` with extra= fields, and nothing is printed by default."""
from __future__ import annotations

import io
import pathlib
import json
import logging
import subprocess
import sys

import pytest

import obs_jobs
from catzilla_mp import TaskTimeoutError, WorkerCrashedError
from catzilla_mp.observability import configure_logging, instrument
from catzilla_mp.observability.logs import extra_fields
from obs_helpers import wait_until


def events(caplog) -> list[dict]:
    return [dict(extra_fields(r), _level=r.levelname, _msg=r.getMessage()) for r in caplog.records
            if r.name.startswith("catzilla_mp")]


def test_worker_life_retries_timeouts_crashes_and_scaling_are_logged_with_fields(make_engine, caplog):
    caplog.set_level(logging.INFO, logger="catzilla_mp")
    # Given an instrumented engine that may grow from 1 to 2 workers
    engine = make_engine(workers=1, min_workers=1, max_workers=2, enable_auto_scaling=True,
                         timeout_grace_ms=200)
    instrument(engine)
    # When tasks retry, time out, crash their worker, and a backlog builds up
    flaky = engine.add_task(obs_jobs.fail, "try again", max_retries=1)
    with pytest.raises(ValueError):
        flaky.wait(30)
    with pytest.raises(TaskTimeoutError):
        engine.add_task(obs_jobs.spin, 30, timeout_ms=200, max_retries=0).wait(30)
    with pytest.raises(WorkerCrashedError):
        engine.add_task(obs_jobs.exit_hard, 3, max_retries=0).wait(30)
    backlog = [engine.add_task(obs_jobs.nap, 0.05) for _ in range(20)]
    for t in backlog:
        t.wait(60)
    wait_until(lambda: any(e.get("event") == "scale_up" for e in events(caplog)), what="scale-up logged")

    # Then each is one record with machine-readable fields
    ev = events(caplog)
    by = {}
    for e in ev:
        by.setdefault(e.get("event"), []).append(e)
    assert by["worker_started"][0]["pid"] > 0
    [retry] = by["task_retrying"]
    assert retry["task_id"] == flaky.task_id and retry["error_type"] == "ValueError" and retry["attempt"] == 1
    [final] = [e for e in by["task_failed"] if e["task_id"] == flaky.task_id]
    assert final["_level"] == "WARNING" and final["task"] == "fail"
    assert by["task_timeout"][0]["task"] == "spin"
    assert by["task_timeout_signalled"][0]["worker"] is not None
    assert by["task_crash"][0]["error_type"] == "WorkerCrashedError"
    crashed = by["worker_crashed"][0]
    assert crashed["exit_code"] == 3 and crashed["tasks_running"] == 1
    assert by["scale_up"][0]["workers"] == 2


def test_configure_logging_writes_json_lines_with_the_fields(make_engine):
    stream = io.StringIO()
    handler = configure_logging("INFO", json_lines=True, stream=stream)
    try:
        engine = make_engine(workers=1)
        instrument(engine)
        with pytest.raises(ValueError):
            engine.add_task(obs_jobs.fail, "logged", max_retries=0).wait(30)
        wait_until(lambda: "task_failed" in stream.getvalue(), what="failure logged")
    finally:
        logging.getLogger("catzilla_mp").removeHandler(handler)
        logging.getLogger("catzilla_mp").setLevel(logging.NOTSET)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    [failed] = [r for r in lines if r.get("event") == "task_failed"]
    assert failed["logger"] == "catzilla_mp.tasks" and failed["error_type"] == "ValueError"
    assert any(r.get("event") == "worker_started" for r in lines)


def test_the_library_prints_nothing_unless_logging_is_configured(tmp_path):
    # a worker crash logs a WARNING; without any logging setup it must not reach stderr
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "import obs_jobs\n"
        "from catzilla_mp import BackgroundTasks\n"
        "with BackgroundTasks(workers=1, memory_pool_mb=16, queue_size=64) as e:\n"
        "    try: e.add_task(obs_jobs.exit_hard, 3, max_retries=0).wait(30)\n"
        "    except Exception as exc: print(type(exc).__name__)\n"
    ) % str(pathlib.Path(__file__).parent)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "WorkerCrashedError"
    assert out.stderr == ""


def test_issue_12_4_a_task_error_with_a_newline_cannot_forge_a_key_value_log_line(make_engine):
    # Given key=value logging, and a task whose error text holds a whole forged line
    forged = "x\n2026-01-01 00:00:00,000 ERROR catzilla_mp.tasks admin=granted"
    stream = io.StringIO()
    handler = configure_logging("INFO", stream=stream)
    try:
        engine = make_engine(workers=1)
        instrument(engine)
        with pytest.raises(ValueError):
            engine.add_task(obs_jobs.fail, forged, max_retries=0).wait(30)
        with pytest.raises(obs_jobs.Unprintable):
            engine.add_task(obs_jobs.fail_unprintable, max_retries=0).wait(30)
        wait_until(lambda: stream.getvalue().count("task_failed") >= 2, what="failures logged")
    finally:
        logging.getLogger("catzilla_mp").removeHandler(handler)
        logging.getLogger("catzilla_mp").setLevel(logging.NOTSET)
    # Then every line is one record of ours: the forged text stays inside its record
    lines = stream.getvalue().splitlines()
    assert not any(line.startswith("2026-01-01") for line in lines)
    [failed] = [line for line in lines if "admin=granted" in line]
    assert "\\x0a2026-01-01" in failed and "event=task_failed" in failed
    # And an exception whose __str__ raises is logged, not lost
    assert any("<unprintable Unprintable" in line for line in lines)
