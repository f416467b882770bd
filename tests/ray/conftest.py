"""Ray-mode fixtures: engines on the session's local Ray (tests/conftest.py ray_session)."""
from __future__ import annotations

import pytest

SMALL = dict(queue_size=256, retry_backoff_base=0.01, retry_backoff_cap=0.05)


@pytest.fixture
def engine_defaults(ray_session) -> dict:
    return dict(SMALL, workers=2, mode="ray")


@pytest.fixture
def engine(make_engine):
    return make_engine()
