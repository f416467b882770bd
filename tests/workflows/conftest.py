"""Workflow fixtures: make_engine (tests/conftest.py) with small engines; a fake clock."""
from __future__ import annotations

import pytest

SMALL = dict(memory_pool_mb=16, queue_size=256, retry_backoff_base=0.01, retry_backoff_cap=0.05)


@pytest.fixture
def engine_defaults() -> dict:
    return dict(SMALL, workers=2)


class FakeClock:
    """A clock that moves only when told (rate limits, unique_for, schedules)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
