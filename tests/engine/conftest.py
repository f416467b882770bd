"""Engine fixtures: small engines that start fast and always shut down."""
from __future__ import annotations

import pytest

from catzilla_mp import BackgroundTasks

SMALL = dict(memory_pool_mb=16, queue_size=512, retry_backoff_base=0.01, retry_backoff_cap=0.05)


@pytest.fixture
def make_engine():
    """Factory for engines with test-sized defaults; every one is shut down after the test."""
    engines = []

    def make(**options):
        opts = dict(SMALL, workers=2)
        opts.update(options)
        engine = BackgroundTasks(**opts)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.shutdown(wait_for_completion=False, timeout=5)


@pytest.fixture
def engine(make_engine):
    return make_engine()

