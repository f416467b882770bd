"""Deployment tests: engines as apps really run them (forked servers, small /dev/shm, signals)."""
from __future__ import annotations

import pytest

SMALL = dict(memory_pool_mb=8, queue_size=256, retry_backoff_base=0.01, retry_backoff_cap=0.05,
             timeout_grace_ms=500)


@pytest.fixture
def engine_defaults() -> dict:
    """make_engine (tests/conftest.py) builds small engines of one worker."""
    return dict(SMALL, workers=1)
