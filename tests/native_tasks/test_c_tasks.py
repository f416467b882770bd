"""C source tasks: built once in the app with cffi, loaded once per worker (issue 17)."""
from __future__ import annotations

import os
import stat

import pytest

import native_jobs
from catzilla_mp import NativeCompileError, TaskCompiler, WorkerCrashedError

DATA = bytes(range(256)) * 8


def test_a_c_task_runs_in_a_worker_over_bytes_bytearray_and_memoryview(native_engine,
                                                                       checksum_task):
    expected = native_jobs.py_checksum(DATA)
    for arg in (DATA, bytearray(DATA), memoryview(DATA)):
        task = native_engine.add_task(checksum_task, arg, len(DATA))
        assert task.wait(60) == expected
        stats = task.get_stats()
        assert (stats.compiled, stats.compile_error) == (True, None)


def test_a_c_task_reads_a_large_numpy_array_argument(native_engine, compiler):
    np = pytest.importorskip("numpy")
    task_fn = compiler.compile_c(native_jobs.SUM_DOUBLES_C,
                                 "double sum_doubles(const double *a, size_t n)")
    array = np.arange(200_000, dtype=np.float64)  # 1.6 MB: beyond the inline/copy sizes
    task = native_engine.add_task(task_fn, array, len(array))
    assert task.wait(60) == float(array.sum())


def test_a_c_task_counts_as_a_native_execution(native_engine, checksum_task):
    before = native_engine.get_stats().native_executions
    native_engine.add_task(checksum_task, DATA, len(DATA)).wait(60)
    assert native_engine.get_stats().native_executions == before + 1


def test_a_c_task_called_with_the_wrong_number_of_arguments_fails_with_a_type_error(
        native_engine, checksum_task):
    task = native_engine.add_task(checksum_task, DATA, max_retries=0)
    with pytest.raises(TypeError, match="takes 2 arguments"):
        task.wait(60)


def test_c_source_that_does_not_compile_raises_the_compilers_message_at_submission(compiler):
    with pytest.raises(NativeCompileError) as caught:
        compiler.compile_c("int broken(int x) { return x + undeclared_name; }",
                           "int broken(int x)")
    assert "undeclared_name" in str(caught.value)
    assert "error" in caught.value.compiler_output


def test_a_declaration_without_a_function_name_is_refused(compiler):
    with pytest.raises(NativeCompileError, match="function name"):
        compiler.compile_c("int x;", "int")


def test_the_same_source_is_built_once_into_a_private_cache(compiler, native_cache, checksum_task):
    again = compiler.compile_c(native_jobs.CHECKSUM_C, native_jobs.CHECKSUM_DECL)
    assert again.built is False and again.path == checksum_task.path
    assert stat.S_IMODE(os.stat(native_cache).st_mode) == 0o700
    assert [n for n in os.listdir(native_cache) if n.startswith(".build-")] == []


def test_a_cache_directory_open_to_others_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(NativeCompileError, match="closed to others"):
        TaskCompiler(cache_dir=str(shared)).compile_c(native_jobs.CHECKSUM_C,
                                                      native_jobs.CHECKSUM_DECL)


def test_a_c_task_that_segfaults_is_a_worker_crash_and_the_engine_goes_on(make_engine, compiler,
                                                                          checksum_task):
    crash = compiler.compile_c(native_jobs.CRASH_C, "int crash(int x)")
    engine = make_engine(workers=1, min_workers=1, enable_auto_scaling=False)
    task = engine.add_task(crash, 1, max_retries=0)
    with pytest.raises(WorkerCrashedError):
        task.wait(60)
    # the replacement worker runs the next task
    assert engine.add_task(checksum_task, DATA, len(DATA)).wait(60) == native_jobs.py_checksum(DATA)


def test_native_threads_run_c_tasks_on_every_thread_while_python_tasks_take_one_at_a_time(
        make_engine, compiler):
    # Given one worker with 2 executor threads for native tasks, 1 for Python ones
    thread_id = compiler.compile_c(native_jobs.THREAD_ID_C, "uint64_t thread_id(int sleep_us)")
    engine = make_engine(workers=1, min_workers=1, enable_auto_scaling=False,
                         threads_per_worker=1, native_threads_per_worker=2)
    # When C tasks that sleep without the GIL are queued together
    ids = {t.wait(60) for t in [engine.add_task(thread_id, 100_000) for _ in range(6)]}
    # Then both threads ran them
    assert len(ids) == 2
    # And Python tasks queued together never ran at the same time
    spans = sorted(t.wait(60) for t in [engine.add_task(native_jobs.timed_nap, 0.05)
                                         for _ in range(4)])
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def test_native_threads_per_worker_is_validated(make_engine):
    with pytest.raises(ValueError, match="native_threads_per_worker"):
        make_engine(native_threads_per_worker=0)


def test_native_tasks_of_module_functions_cross_to_each_worker_once(native_engine, checksum_task):
    # the function table ships a registered function once per worker, not with every task
    table = native_engine._backend.functions
    jit = native_engine._native_task(native_jobs.mandel, True)
    assert table.lookup(jit)[0] > 0
    assert table.lookup(checksum_task)[0] > 0
    # a closure's pickle may change: it goes with each task
    scale = 2
    closure = native_engine._native_task(lambda x: x * scale, True)
    assert table.lookup(closure)[0] == 0
