"""Backends: what runs a task's attempts, below the task lifecycle.

    base.py        Backend: the protocol every backend implements
    thread.py      ThreadBackend: threads of the app process (mode="thread")
    ray.py         RayBackend: Ray tasks on a cluster (mode="ray"; imports Ray)
    process/       ProcessBackend: worker processes over one shared-memory
                   segment (mode="process"): backend, supervisor, payloads,
                   the worker loop

A backend gets the lifecycle's TaskHost (lifecycle/host.py) and imports
nothing above it.
"""
from .base import Backend

__all__ = ["Backend"]
