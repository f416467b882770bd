"""Bad input the engine tests do not already cover, each a typed error with the engine serving on.

(Covered in tests/engine: unpicklable arguments/results/exceptions, BaseExceptions,
deep recursion, invalid options, submit after shutdown, unknown ids; in
tests/native/test_segment.py: every header check of Segment.attach. os._exit and
segfaults are in test_crashes.py.)

Issue 11, item by item (hostile environments are in tests/deploy/):
  1  fork / gunicorn --preload   tests/deploy/test_fork.py
  2  full /dev/shm               tests/deploy/test_shm_full.py; the cap here
  3  squatted payload names      here
  5  upper bounds                here
  6, 12  submit() keywords       here
  7  a worker's process group    tests/deploy/test_signals.py
  8, 10, 11, 13, 14              tests/deploy/test_lifetime.py
  15 source lines                here
  SIGTERM, both ways             tests/deploy/test_signals.py
  (20.8 a killed worker's result segment: here)
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
    # two stay findable; which two follows the order tasks finished in, which
    # the collector and waiting threads settle concurrently
    forgotten = 0
    for t in done:
        try:
            assert engine.get_task_result(t.task_id) is t
        except UnknownTaskError as exc:
            assert t.task_id in str(exc)
            forgotten += 1
    assert forgotten == 3


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


# -- issue 11: bounds, keywords, hostile /dev/shm names, source lines ------------

import linecache

from catzilla_mp import BackgroundTasks
from catzilla_mp import engine as engine_mod
from catzilla_mp.errors import SharedMemoryFullError
from catzilla_mp.backends.process.payloads import SHM_DIR, external_bytes, plan_arena

import bad_input_jobs

TOO_BIG_OPTIONS = [
    ("workers", 70000), ("min_workers", 70000), ("max_workers", 70000),
    ("queue_size", 10 ** 8), ("memory_pool_mb", 10 ** 9), ("threads_per_worker", 10 ** 6),
    ("max_payload_bytes", 1 << 40), ("queue_full_timeout", 1e30),
    ("retry_backoff_base", 1e30), ("retry_backoff_cap", 10 ** 30),
    ("timeout_grace_ms", 10 ** 30), ("scale_down_idle_s", 1e30),
    ("max_tasks_per_worker", 10 ** 30), ("worker_memory_limit_mb", 10 ** 30),
    ("worker_niceness", 40), ("shutdown_timeout", 1e30), ("keep_finished", 10 ** 30),
    ("max_external_bytes", 10 ** 30), ("keep_finished_bytes", 10 ** 30),
    ("result_ttl_s", 1e30),
]


@pytest.mark.parametrize("name,value", TOO_BIG_OPTIONS)
def test_an_option_above_its_limit_is_refused_naming_the_limit(name, value):
    """Issue 11.5: memory_pool_mb=10**9 was a bare OverflowError, workers=70000 a vague SegmentError."""
    with pytest.raises(ValueError, match=rf"{name} must be <= [\d,]+"):
        BackgroundTasks(**{name: value})


@pytest.mark.parametrize("name", ["queue_full_timeout", "shutdown_timeout", "result_ttl_s"])
def test_a_nan_duration_is_refused(name):
    """Issue 11.5: NaN compares false with every bound, so it passed them all."""
    with pytest.raises(ValueError, match=f"{name} must be a number, not NaN"):
        BackgroundTasks(**{name: float("nan")})


@pytest.mark.parametrize("name,value,limit", [
    ("timeout_ms", 10 ** 30, engine_mod.MAX_MS), ("delay_ms", 10 ** 30, engine_mod.MAX_MS),
    ("max_retries", 10 ** 9, engine_mod.MAX_RETRIES),
])
def test_a_per_task_value_above_its_limit_is_refused_at_submit(make_engine, name, value, limit):
    """Issue 11.5: timeout_ms=10**30 was accepted, failed in the worker with OverflowError, and was retried."""
    engine = make_engine()
    with pytest.raises(ValueError, match=f"{name} must be <= {limit:,}"):
        engine.add_task(bad_input_jobs.triple, 1, **{name: value})
    with pytest.raises(ValueError, match=f"{name} must be <= {limit:,}"):
        engine.add_tasks(bad_input_jobs.triple, [1, 2], **{name: value})
    with pytest.raises(ValueError, match=f"{name} must be <= {limit:,}"):
        engine.task(**{name: value})
    assert engine.get_stats().total_queued == 0
    assert engine.add_task(bad_input_jobs.triple, 2).wait(60) == 7
    books_balance(engine)


def test_map_refuses_a_chunksize_or_timeout_above_its_limit(make_engine):
    """Issue 11.5: a huge map() timeout reached Event.wait() and raised OverflowError there."""
    engine = make_engine()
    with pytest.raises(ValueError, match="chunksize must be <="):
        engine.map(bad_input_jobs.triple, [1], chunksize=10 ** 30)
    with pytest.raises(ValueError, match="timeout must be <="):
        engine.map(bad_input_jobs.triple, [1], timeout=1e30)
    assert list(engine.map(bad_input_jobs.triple, [1, 2], timeout=60)) == [4, 7]


def test_submit_hands_every_keyword_to_the_function(make_engine):
    """Issue 11.6 and 11.12: keywords named like add_task's options were swallowed or refused."""
    engine = make_engine()
    kwargs = dict(delay_ms=5, max_retries="x", priority=object.__name__, timeout_ms=-1,
                  compile_to_c=[1], func="f", fn="g")
    fut = engine.submit(bad_input_jobs.keywords, 1, **kwargs)
    assert fut.result(60) == ((1,), kwargs)
    assert engine.submit(bad_input_jobs.keywords).result(60) == ((), {})


def _arena_max(engine) -> int:
    return max(c.chunk_size for c in plan_arena(engine.options.memory_pool_mb << 20))


def _own_externals(seg_name):
    return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(f"{seg_name}_x"))


def test_pre_created_payload_segment_names_neither_fail_tasks_nor_shutdown(make_engine,
                                                                           monkeypatch):
    """Issue 11.3: another local user who pre-created <segment>_x1... made add_task raise an
    untyped ExistentialError, a result come back as SerializationError and shutdown() raise.

    The pre-created names cover the old sequential scheme (app and worker 0)
    and, by fixing the app's first random draws, a name the new scheme picks;
    they belong to another user where the test can arrange it (as root).
    """
    engine = make_engine(workers=1)
    seg = engine._backend.seg.name
    size = _arena_max(engine) + 1
    squatted = [f"{seg}_x{i:x}" for i in (1, 2, 0x1000001, 0x1000002)] + [f"{seg}_x{1:08x}"]
    for name in squatted:
        fd = os.open(os.path.join(SHM_DIR, name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        os.close(fd)
        if os.geteuid() == 0:
            os.chown(os.path.join(SHM_DIR, name), 65534, 65534)
    draws = iter([1, 1, 0x2A])
    import catzilla_mp.backends.process.payloads as payloads_mod
    real = payloads_mod.secrets.randbits
    monkeypatch.setattr(payloads_mod.secrets, "randbits",
                        lambda k: next(draws, None) or real(k))
    try:
        assert engine.add_task(bad_input_jobs.length, b"a" * size).wait(60) == size
        assert engine.add_task(bad_input_jobs.big, size).wait(60) == bytes([7]) * size
        assert engine.add_task(bad_input_jobs.big, size, 9).wait(60) == bytes([9]) * size
        engine.shutdown()  # never raises, and removes only its own
        left = set(n for n in os.listdir(SHM_DIR) if n.startswith(f"{seg}_x"))
        assert left == set(squatted)
    finally:
        for name in squatted:
            os.unlink(os.path.join(SHM_DIR, name))


def test_external_payloads_are_capped_by_max_external_bytes(make_engine, tmp_path):
    """Issue 11.2: a cap on the bytes of payload segments of their own, typed error past it."""
    engine = make_engine(workers=1, memory_pool_mb=1, max_external_bytes=300_000)
    size = _arena_max(engine) + 1  # 64 KiB + 1: an external segment
    go = str(tmp_path / "go")
    held = engine.add_task(bad_input_jobs.hold, b"a" * size, go)
    assert size < engine.monitor.external_payload_bytes() < size + 4096  # the pickled call
    open(go, "w").close()
    assert held.wait(60) == size
    with pytest.raises(SharedMemoryFullError, match="max_external_bytes=300000"):
        engine.add_task(bad_input_jobs.length, b"a" * 400_000)
    assert engine.get_stats().total_queued == 0
    r = engine.add_task(bad_input_jobs.big, 400_000, max_retries=0)
    with pytest.raises(SharedMemoryFullError, match="max_external_bytes"):
        r.wait(60)
    assert engine.add_task(bad_input_jobs.big, size).wait(60) == bytes([7]) * size
    assert engine.monitor.external_payload_bytes() == 0 == external_bytes(
        engine._backend.seg.name)
    books_balance(engine)


def test_a_killed_workers_unpublished_big_result_is_unlinked_and_its_replacement_reuses_no_name(
        make_engine, arm_fault):
    """Issue 20.8: the side segment of a big result whose worker was killed leaked, and the
    replacement's first big result failed (it restarted side-segment ids at the same value).

    The fault point "publishing" SIGKILLs the worker after it wrote the result
    segment and before it finished the slot.
    """
    arm_fault("publishing", 1)
    engine = make_engine(workers=1, memory_pool_mb=1)
    size = _arena_max(engine) + 1
    r = engine.add_task(bad_input_jobs.big, size, 3, max_retries=2)
    assert r.wait(60) == bytes([3]) * size
    assert arm_fault.armed() and r.get_stats().retries == 1
    assert _own_externals(engine._backend.seg.name) == []
    books_balance(engine)


DYNAMIC_SOURCE = '''
import functools

class Jobs:
    @classmethod
    def by_class(cls, x):
        raise ValueError(f"classmethod {x}")

    @staticmethod
    def by_static(x):
        raise ValueError(f"staticmethod {x}")

    def by_instance(self, x):
        raise ValueError(f"method {x}")

def plain(x):
    raise ValueError(f"plain {x}")

as_lambda = lambda x: [][x]  # noqa: E731
'''


def test_a_remote_traceback_keeps_its_source_lines_for_every_function_kind(make_engine):
    """Issue 11.15: a classmethod shipped by value lost its source lines (File "<dynamic-code>").

    The functions are compiled from a string the app registered in its
    linecache (as notebooks do), so the worker has no file to read the lines from.
    """
    filename = "<dynamic-code>"
    ns = {"__name__": "czmp_dynamic_jobs"}  # not importable: shipped by value
    exec(compile(DYNAMIC_SOURCE, filename, "exec"), ns)
    linecache.cache[filename] = (len(DYNAMIC_SOURCE), None,
                                 DYNAMIC_SOURCE.splitlines(True), filename)
    engine = make_engine(workers=1)
    kinds = {
        ns["Jobs"].by_class: 'raise ValueError(f"classmethod {x}")',
        ns["Jobs"].by_static: 'raise ValueError(f"staticmethod {x}")',
        ns["Jobs"]().by_instance: 'raise ValueError(f"method {x}")',
        ns["plain"]: 'raise ValueError(f"plain {x}")',
        ns["as_lambda"]: "as_lambda = lambda x: [][x]  # noqa: E731",
    }
    try:
        for fn, line in kinds.items():
            with pytest.raises(Exception) as info:
                engine.add_task(fn, 1, max_retries=0).wait(60)
            tb = str(info.value.__cause__)
            assert f'File "{filename}"' in tb and line in tb, tb
    finally:
        linecache.cache.pop(filename, None)
