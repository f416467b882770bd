"""catzilla_mp: run CPU-heavy Python functions in worker processes over shared memory.

The API is a superset of the Catzilla web framework's background tasks::

    from catzilla_mp import BackgroundTasks

    with BackgroundTasks(workers=2) as engine:
        result = engine.add_task(pow, 2, 10)
        print(result.wait(timeout=5))   # 1024
"""
import importlib
from typing import TYPE_CHECKING

# Public names, imported on first use (PEP 562): a worker process imports
# only the modules it runs with, not the engine, asyncio and psutil, which
# took a third of a worker's start-up time.
_EXPORTS = {
    "BackgroundTaskApp": "app", "add_task": "app", "create_task_system": "app",
    "get_global_task_system": "app", "task": "app",
    "BackgroundTasks": "engine",
    "HAS_C_EXTENSION": "compat", "TaskCompiler": "compat", "propagate_context": "compat",
    "report_progress": "progress",
    "EngineStats": "records", "TaskConfig": "records", "TaskPriority": "records",
    "TaskStats": "records", "TaskStatus": "records",
    "TaskFuture": "results", "TaskResult": "results",
    "Catzilla": "integrations.catzilla",
    "enable": "integrations.catzilla", "RouteConflictError": "errors",
    **{name: "errors" for name in (
        "CatzillaMPError", "EngineBrokenError", "EngineClosedError", "PayloadTooLargeError",
        "QueueFullError", "RemoteTraceback", "SegmentCorruptError", "SegmentError",
        "SegmentExistsError", "SegmentOwnerError", "SegmentVersionError", "SerializationError",
        "TaskCancelledError", "TaskError", "TaskTimeoutError", "UnknownTaskError",
        "WorkerCrashedError", "MemoryLimitError", "WorkerInitializerError",
        "SharedMemoryFullError", "NativeCompileError", "JournalError",
        "DependencyFailedError", "DependencyCancelledError", "ScheduleConflictError")},
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .app import BackgroundTaskApp, add_task, create_task_system, get_global_task_system, task
    from .compat import HAS_C_EXTENSION, TaskCompiler, propagate_context
    from .engine import BackgroundTasks
    from .errors import *  # noqa: F401,F403
    from .progress import report_progress
    from .records import EngineStats, TaskConfig, TaskPriority, TaskStats, TaskStatus
    from .results import TaskFuture, TaskResult

__version__ = "0.1.0"

# A library logs but never decides where logs go: without this handler, a
# warning (a crashed worker) would reach stderr through logging's last resort.
import logging as _logging

_logging.getLogger("catzilla_mp").addHandler(_logging.NullHandler())

__all__ = [  # noqa: F822 - provided by __getattr__
    "BackgroundTaskApp", "BackgroundTasks", "CatzillaMPError", "HAS_C_EXTENSION",
    "MemoryLimitError", "NativeCompileError", "TaskCompiler", "WorkerInitializerError", "propagate_context", "EngineBrokenError",
    "EngineClosedError", "EngineStats", "PayloadTooLargeError", "QueueFullError",
    "RemoteTraceback", "SegmentCorruptError", "SegmentError", "SegmentExistsError",
    "SegmentOwnerError", "SegmentVersionError", "SerializationError", "TaskCancelledError",
    "TaskConfig", "TaskError", "TaskFuture", "TaskPriority", "TaskResult", "TaskStats",
    "TaskStatus", "TaskTimeoutError", "UnknownTaskError", "WorkerCrashedError", "add_task",
    "create_task_system", "get_global_task_system", "report_progress", "task",
    "Catzilla", "enable", "RouteConflictError", "SharedMemoryFullError", "JournalError",
    "DependencyFailedError", "DependencyCancelledError", "ScheduleConflictError",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'catzilla_mp' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))
