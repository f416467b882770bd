"""catzilla_mp: run CPU-heavy Python functions in worker processes over shared memory.

The API is a superset of the Catzilla web framework's background tasks::

    from catzilla_mp import BackgroundTasks

    with BackgroundTasks(workers=2) as engine:
        result = engine.add_task(pow, 2, 10)
        print(result.wait(timeout=5))   # 1024
"""
from .app import (
    BackgroundTaskApp,
    add_task,
    create_task_system,
    get_global_task_system,
    task,
)
from .engine import BackgroundTasks
from .errors import (
    CatzillaMPError,
    EngineBrokenError,
    EngineClosedError,
    PayloadTooLargeError,
    QueueFullError,
    RemoteTraceback,
    SegmentCorruptError,
    SegmentError,
    SegmentExistsError,
    SegmentOwnerError,
    SegmentVersionError,
    SerializationError,
    TaskCancelledError,
    TaskError,
    TaskTimeoutError,
    UnknownTaskError,
    WorkerCrashedError,
)
from .progress import report_progress
from .records import EngineStats, TaskConfig, TaskPriority, TaskStats, TaskStatus
from .results import TaskFuture, TaskResult

__version__ = "0.1.0"

# A library logs but never decides where logs go: without this handler, a
# warning (a crashed worker) would reach stderr through logging's last resort.
import logging as _logging

_logging.getLogger("catzilla_mp").addHandler(_logging.NullHandler())

__all__ = [
    "BackgroundTaskApp", "BackgroundTasks", "CatzillaMPError", "EngineBrokenError",
    "EngineClosedError", "EngineStats", "PayloadTooLargeError", "QueueFullError",
    "RemoteTraceback", "SegmentCorruptError", "SegmentError", "SegmentExistsError",
    "SegmentOwnerError", "SegmentVersionError", "SerializationError", "TaskCancelledError",
    "TaskConfig", "TaskError", "TaskFuture", "TaskPriority", "TaskResult", "TaskStats",
    "TaskStatus", "TaskTimeoutError", "UnknownTaskError", "WorkerCrashedError", "add_task",
    "create_task_system", "get_global_task_system", "report_progress", "task",
]


def __getattr__(name: str):
    # Catzilla lives in an optional extra: import it only when asked for.
    if name == "Catzilla":
        from .integrations.catzilla import Catzilla

        return Catzilla
    raise AttributeError(f"module 'catzilla_mp' has no attribute {name!r}")
