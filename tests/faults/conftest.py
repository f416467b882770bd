"""Fault-test fixtures: engines that always shut down, a fault armed per engine."""
from __future__ import annotations

import pytest

from faultkit import SMALL


@pytest.fixture
def engine_defaults() -> dict:
    """make_engine (tests/conftest.py) builds small engines of two workers."""
    return dict(SMALL, workers=2)


@pytest.fixture
def arm_fault(monkeypatch, tmp_path):
    """arm_fault("ran", 1): the first worker to get there SIGKILLs itself, once per engine.

    Must be called before the engine is created: the supervisor copies the
    environment when it starts.
    """
    def arm(point: str, countdown: int = 1) -> None:
        monkeypatch.setenv("CZMP_WORKER_FAULT", f"{point}:{countdown}:{tmp_path / 'fault-claim'}")

    arm.armed = lambda: (tmp_path / "fault-claim").exists()
    return arm
