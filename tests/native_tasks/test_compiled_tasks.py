"""compile_to_c: numba compiles a task in its worker, or it runs as Python and says why (issue 17)."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

import native_jobs
from native_jobs import needs_numba

TILE = (-2.0, -1.0, 0.05, 20, 20, 50)


@needs_numba
def test_compile_to_c_runs_the_function_compiled_in_its_worker(native_engine):
    # Given a numeric function submitted with compile_to_c=True, twice
    first = native_engine.add_task(native_jobs.mandel, *TILE, compile_to_c=True)
    assert first.wait(120) == native_jobs.mandel(*TILE)
    second = native_engine.add_task(native_jobs.mandel, *TILE, compile_to_c=True)
    assert second.wait(120) == native_jobs.mandel(*TILE)
    # Then both ran compiled, and only the first paid for compiling
    one, two = first.get_stats(), second.get_stats()
    assert (one.compiled, one.compile_error) == (True, None)
    assert (two.compiled, two.compile_error) == (True, None)
    assert one.compile_ms > 0
    assert two.compile_ms == 0


@needs_numba
def test_a_function_numba_cannot_compile_runs_as_python_and_says_why(native_engine):
    task = native_engine.add_task(native_jobs.not_numeric, "abc", compile_to_c=True)
    assert task.wait(120) == {"abc": ["ABC"]}
    stats = task.get_stats()
    assert stats.compiled is False
    assert "TypingError" in stats.compile_error
    assert "\x1b[" not in stats.compile_error  # numba's terminal colours are stripped


@needs_numba
def test_task_decorated_with_compile_to_c_runs_compiled_unless_a_submission_says_false(
        native_engine):
    fn = native_engine.task(compile_to_c=True)(native_jobs.scaled_sum)
    decorated = fn.submit(100)
    assert decorated.wait(120) == native_jobs.scaled_sum(100)
    assert decorated.get_stats().compiled is True
    plain = native_engine.add_task(fn, 100, compile_to_c=False)
    assert plain.wait(120) == native_jobs.scaled_sum(100)
    assert plain.get_stats().compiled is None  # a Python task: nothing to report
    # keyword arguments and defaults are bound before numba types the call
    keywords = native_engine.add_task(fn, n=10, factor=0.5)
    assert keywords.wait(120) == native_jobs.scaled_sum(10, 0.5)
    assert keywords.get_stats().compiled is True


def test_a_task_submitted_without_compile_to_c_is_a_python_task(native_engine):
    task = native_engine.add_task(native_jobs.mandel, *TILE)
    assert task.wait(120) == native_jobs.mandel(*TILE)
    stats = task.get_stats()
    assert (stats.compiled, stats.compile_error, stats.compile_ms) == (None, None, None)


@needs_numba
def test_engine_stats_count_native_and_python_executions(native_engine):
    before = native_engine.get_stats()
    tasks = [native_engine.add_task(native_jobs.mandel, *TILE, compile_to_c=True) for _ in range(3)]
    tasks += [native_engine.add_task(native_jobs.mandel, *TILE),
              native_engine.add_task(native_jobs.not_numeric, "x", compile_to_c=True)]
    for t in tasks:
        t.wait(120)
    after = native_engine.get_stats()
    assert after.native_executions - before.native_executions == 3
    assert after.python_executions - before.python_executions == 2


def test_compile_to_c_must_be_a_bool_or_none(native_engine):
    with pytest.raises(TypeError, match="compile_to_c"):
        native_engine.add_task(native_jobs.mandel, *TILE, compile_to_c="yes")


def test_an_engine_with_compilation_disabled_runs_compile_to_c_tasks_as_python(make_engine):
    engine = make_engine(mode="thread", enable_c_compilation=False)
    task = engine.add_task(native_jobs.mandel, *TILE, compile_to_c=True)
    assert task.wait(60) == native_jobs.mandel(*TILE)
    stats = task.get_stats()
    assert stats.compiled is False
    assert "enable_c_compilation=False" in stats.compile_error


def test_without_numba_compile_to_c_falls_back_to_python_and_says_numba_is_missing(tmp_path):
    # Given an interpreter (and its workers) where importing numba fails
    shadow = tmp_path / "shadow" / "numba"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('numba hidden by the test')\n")
    here = pathlib.Path(__file__).resolve().parent
    code = textwrap.dedent("""
        from catzilla_mp import BackgroundTasks
        import native_jobs
        with BackgroundTasks(workers=1, min_workers=1, enable_auto_scaling=False,
                             memory_pool_mb=16) as engine:
            task = engine.add_task(native_jobs.mandel, -2.0, -1.0, 0.05, 4, 4, 20,
                                   compile_to_c=True)
            value = task.wait(120)
            stats = task.get_stats()
            print(value == native_jobs.mandel(-2.0, -1.0, 0.05, 4, 4, 20), stats.compiled,
                  stats.compile_error, sep="|")
    """)
    path = [str(tmp_path / "shadow"), str(here)] + [p for p in sys.path if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=180, cwd=str(pathlib.Path.cwd()))
    assert proc.returncode == 0, proc.stderr[-3000:]
    same, compiled, error = proc.stdout.strip().splitlines()[-1].split("|", 2)
    # Then the task ran as Python, and its stats say numba is not installed
    assert (same, compiled) == ("True", "False")
    assert "numba is not installed" in error
