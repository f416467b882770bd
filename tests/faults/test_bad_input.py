"""Bad input the engine tests do not already cover, each a typed error with the engine serving on.

(Covered in tests/engine: unpicklable arguments/results/exceptions, BaseExceptions,
deep recursion, invalid options, submit after shutdown, unknown ids; in
tests/native/test_segment.py: every header check of Segment.attach. os._exit and
segfaults are in test_crashes.py.)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import fault_jobs
from catzilla_mp import PayloadTooLargeError, SegmentError, UnknownTaskError
from catzilla_mp._core import Segment
from catzilla_mp.errors import SegmentCorruptError
from catzilla_mp.segment_janitor import new_segment_name
from faultkit import books_balance


def test_arguments_beyond_max_payload_bytes_are_refused_at_submit(make_engine):
    engine = make_engine(max_payload_bytes=50_000)
    with pytest.raises(PayloadTooLargeError, match="max_payload_bytes"):
        engine.add_task(fault_jobs.triple, b"x" * 60_000)
    assert engine.get_stats().total_queued == 0
    assert engine.add_task(fault_jobs.triple, 2).wait(60) == 7
    books_balance(engine)


def test_a_result_beyond_max_payload_bytes_fails_the_task_and_is_not_retried(make_engine, tmp_path):
    engine = make_engine(max_payload_bytes=50_000)
    path = str(tmp_path / "runs")
    r = engine.add_task(fault_jobs.mark_big, path, 1, 60_000, max_retries=3)
    with pytest.raises(PayloadTooLargeError, match="max_payload_bytes"):
        r.wait(60)
    assert r.get_stats().retries == 0 and fault_jobs.runs(path) == {"1": 1}
    ok = engine.add_task(fault_jobs.mark_big, path, 2, 40_000)
    assert ok.wait(60) == bytes([2]) * 40_000
    books_balance(engine)


def test_a_forgotten_task_id_is_unknown(make_engine):
    engine = make_engine(keep_finished=2)
    done = [engine.add_task(fault_jobs.triple, i) for i in range(5)]
    for t in done:
        t.wait(60)
    assert engine.get_task_result(done[-1].task_id) is done[-1]
    with pytest.raises(UnknownTaskError, match=done[0].task_id):
        engine.get_task_result(done[0].task_id)


@pytest.fixture
def garbage_segment():
    name = new_segment_name()
    path = f"/dev/shm/{name}"
    with open(path, "wb") as f:
        f.write(os.urandom(64 << 10))
    os.chmod(path, 0o600)
    yield name
    os.unlink(path)


def test_attaching_to_a_file_that_is_not_a_segment_is_refused(garbage_segment):
    with pytest.raises(SegmentCorruptError):
        Segment.attach(garbage_segment)


def test_a_worker_pointed_at_a_foreign_segment_exits_with_the_error(garbage_segment, make_engine):
    engine = make_engine(workers=1)
    cfg = {"segment": garbage_segment, "index": 0, "parent": os.getpid(), "threads": 1,
           "max_payload_bytes": 1 << 20, "default_timeout_ms": 30000}
    p = subprocess.run([sys.executable, "-m", "catzilla_mp.workers", json.dumps(cfg)],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert p.returncode != 0 and "SegmentCorruptError" in p.stderr
    # and the engine next door is untouched
    assert engine.add_task(fault_jobs.triple, 3).wait(60) == 10
    assert issubclass(SegmentCorruptError, SegmentError)
