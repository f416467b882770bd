"""Engine fixtures: make_engine (tests/conftest.py) with these defaults, and one engine.

A test marked ``@pytest.mark.modes("process", "thread", "ray")`` runs once per
mode (``engine_mode``); unmarked tests run in process mode only. Ray-mode
engines share the session's local Ray (ray_session in tests/conftest.py).
"""
from __future__ import annotations

import pytest

SMALL = dict(memory_pool_mb=16, queue_size=512, retry_backoff_base=0.01, retry_backoff_cap=0.05)


def pytest_generate_tests(metafunc):
    marker = metafunc.definition.get_closest_marker("modes")
    if marker is not None and "engine_mode" in metafunc.fixturenames:
        modes = marker.args
        metafunc.parametrize("engine_mode", modes, ids=[f"{m}-mode" for m in modes])


@pytest.fixture
def engine_mode() -> str:
    return "process"


@pytest.fixture
def engine_defaults(engine_mode, request) -> dict:
    if engine_mode == "ray":
        request.getfixturevalue("ray_session")
    return dict(SMALL, workers=2, mode=engine_mode)


@pytest.fixture
def engine(make_engine):
    return make_engine()
