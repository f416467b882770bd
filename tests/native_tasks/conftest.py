"""Native-task fixtures: one engine and one C build per session (numba compiles once per worker)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def native_engine():
    """One worker with two executor threads, for the tests of one module.

    Module-scoped so numba compiles each test function once (in this worker)
    rather than once per test, and gone before other directories' tests run;
    no autoscaling, so no worker starts mid-test (the leak guard would see it).
    """
    from catzilla_mp import BackgroundTasks

    engine = BackgroundTasks(workers=1, min_workers=1, max_workers=1, enable_auto_scaling=False,
                             threads_per_worker=2, memory_pool_mb=32, queue_size=256)
    # its worker (and, in a threaded app such as one running a session's Ray,
    # the zygote spawned for it) starts now, not inside the first test
    engine.add_task(sum, (1, 2)).wait(120)
    yield engine
    engine.shutdown(wait_for_completion=False, timeout=10)


@pytest.fixture(scope="session")
def native_cache(tmp_path_factory):
    """A private build cache for the session's C tasks."""
    path = tmp_path_factory.mktemp("native-cache")
    path.chmod(0o700)
    return str(path)


@pytest.fixture(scope="session")
def compiler(native_cache):
    from catzilla_mp import TaskCompiler

    return TaskCompiler(cache_dir=native_cache)


@pytest.fixture(scope="session")
def checksum_task(compiler):
    import native_jobs

    return compiler.compile_c(native_jobs.CHECKSUM_C, native_jobs.CHECKSUM_DECL)
