"""Backends: what runs a task's attempts, below the task lifecycle.

    base.py        Backend: the protocol every backend implements
    thread.py      ThreadBackend: threads of the app process (mode="thread")
    process/       ProcessBackend: worker processes over one shared-memory
                   segment (mode="process"): backend, supervisor, payloads,
                   the worker loop

A backend gets the lifecycle's TaskHost (lifecycle/host.py) and imports
nothing above it.
"""
from .base import Backend

__all__ = ["Backend"]
