"""Engine fixtures: make_engine (tests/conftest.py) with these defaults, and one engine."""
from __future__ import annotations

import pytest

SMALL = dict(memory_pool_mb=16, queue_size=512, retry_backoff_base=0.01, retry_backoff_cap=0.05)


@pytest.fixture
def engine_defaults() -> dict:
    return dict(SMALL, workers=2)


@pytest.fixture
def engine(make_engine):
    return make_engine()
