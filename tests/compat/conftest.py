"""Fixtures of the compat tests: small engines (make_engine from tests/conftest.py)."""
from __future__ import annotations

import pytest

SMALL = dict(memory_pool_mb=16, queue_size=256, retry_backoff_base=0.01, retry_backoff_cap=0.05)


@pytest.fixture
def engine_defaults() -> dict:
    return dict(SMALL, workers=1)


@pytest.fixture
def engine(make_engine):
    return make_engine()
