"""instrument(engine): the engine's Observer, made once; metrics_text(engine) from it.

Its own module so that dashboard.py and metrics.py, which the package's
__init__ imports, can use it without importing the package back.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from .snapshot import Observer

if TYPE_CHECKING:
    from ..engine import BackgroundTasks

_lock = threading.Lock()


def instrument(engine: "BackgroundTasks") -> Observer:
    """The engine's Observer, created (and its listeners attached) on first call.

    Idempotent and thread-safe. Costs the engine one listener call per task
    event (a few integer increments under a lock).
    """
    obs = getattr(engine, "_czmp_observer", None)
    if obs is not None:
        return obs
    with _lock:
        obs = getattr(engine, "_czmp_observer", None)
        if obs is None:
            from .logs import TaskEventLogger
            from .metrics import make_registry

            obs = Observer(engine)
            obs.registry = make_registry(obs)
            obs.task_logger = TaskEventLogger(engine)
            engine._czmp_observer = obs
    return obs


def snapshot(engine: "BackgroundTasks") -> dict:
    """The dashboard's JSON snapshot of the engine (see snapshot.build_snapshot)."""
    return instrument(engine).snapshot()


def metrics_text(engine: "BackgroundTasks") -> tuple[bytes, str]:
    """(body, content type) of the engine's metrics in the text exposition format.

    Instruments the engine on first use (counters count from then on): call
    :func:`catzilla_mp.observability.instrument` when the engine starts to
    count from the beginning.
    """
    from prometheus_client import generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    obs = instrument(engine)
    return generate_latest(obs.registry), CONTENT_TYPE_LATEST
