"""The task lifecycle layer: a task's state machine and policies, below the API, above the backends.

    core.py       TaskLifecycle: admission, retry and back-off, delays, timeouts,
                  finishing, retention of finished tasks, a dead engine thread
    host.py       TaskHost: the protocol a backend is given (all it may call)
    delays.py     DelayQueue: the delay thread (delayed starts, back-offs, timeouts)
    callbacks.py  CallbackRunner: the threads that run user callbacks
    monitor.py    Monitor: counters, events, EngineStats snapshots

Imports point down only: this package imports the base modules (errors,
records, results, compat, progress) and never engine.py or a backend.
"""
from .core import TaskLifecycle
from .host import TaskHost

__all__ = ["TaskHost", "TaskLifecycle"]
