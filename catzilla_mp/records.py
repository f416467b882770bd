"""The records of the Catzilla background-task API: enums and dataclasses.

Names, values and fields are Catzilla's (``catzilla.background_tasks``,
0.2.3), so code written against it keeps working; see shared/API.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Optional, Union


class TaskPriority(Enum):
    """Task priority; lower values run first."""

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3

    @classmethod
    def parse(cls, value: Union["TaskPriority", Enum, str, int]) -> "TaskPriority":
        """Accept a TaskPriority, its name in any case ("high"), or its value.

        Any other enum is accepted by name, then by value: Catzilla's own
        ``catzilla.background_tasks.TaskPriority`` is what a Catzilla app
        passes, and it is a different class with the same names and values.

        Raises:
            ValueError: for anything else, naming the accepted values.
        """
        return parse_priority(value)


#: parse_priority's first try for a string: each name lower- and upper-case.
#: Only str keys: True == 1 would find a member by value, which parse refuses.
_PRIORITY_NAMES = {**{p.name.lower(): p for p in TaskPriority},
                   **{p.name: p for p in TaskPriority}}


def parse_priority(value: Union[TaskPriority, Enum, str, int]) -> TaskPriority:
    """TaskPriority.parse, callable without the classmethod lookup (~0.15 us on an
    Enum class): the submit hot path calls it for every priority that is not a
    member. A usual spelling ("normal", "HIGH") costs one dict lookup.

    Raises:
        ValueError: as TaskPriority.parse.
    """
    if type(value) is str:
        member = _PRIORITY_NAMES.get(value)
        if member is not None:
            return member
    if isinstance(value, TaskPriority):
        return value
    if isinstance(value, Enum):
        member = TaskPriority.__members__.get(str(value.name).upper())
        if member is not None:
            return member
        value = value.value
    if isinstance(value, str):
        try:
            return TaskPriority[value.strip().upper()]
        except KeyError:
            pass
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            return TaskPriority(value)
        except ValueError:
            pass
    names = ", ".join(p.name.lower() for p in TaskPriority)
    raise ValueError(f"unknown priority {value!r}; use TaskPriority or one of: {names}")


class TaskStatus(Enum):
    """Where a task is in its life."""

    PENDING = 0
    RUNNING = 1
    COMPLETED = 2
    FAILED = 3
    CANCELLED = 4
    RETRYING = 5


@dataclass
class TaskConfig:
    """Per-task configuration, as given to ``@task(...)`` or ``add_task(...)``."""

    priority: TaskPriority = TaskPriority.NORMAL
    delay_ms: int = 0
    max_retries: int = 3
    timeout_ms: int = 30000
    #: "exponential", "linear", "fixed", or a callable(attempt) -> seconds
    retry_backoff: Union[str, Callable[[int], float]] = "exponential"
    #: Catzilla's default, kept for code that reads it; catzilla_mp enforces a
    #: limit only on tasks that set one (see BackgroundTasks.task).
    memory_limit_mb: Optional[int] = 100
    compile_to_c: bool = True
    enable_profiling: bool = False
    # catzilla_mp's own, after Catzilla's eight
    #: retry only these exception types (None: any exception)
    retry_on: Optional[tuple] = None
    #: retry only when retry_if(exception) is true (None: any exception)
    retry_if: Optional[Callable[[BaseException], bool]] = None


@dataclass
class TaskStats:
    """What is known about one task. Times are Unix timestamps (seconds)."""

    task_id: str
    status: TaskStatus
    created_at: float
    started_at: Optional[float] = None
    completed_at: Optional[float] = None
    execution_time_ms: Optional[float] = None
    memory_usage_mb: Optional[float] = None
    retries: int = 0
    worker_id: Optional[int] = None
    #: with enable_profiling: the top functions of the task's cProfile run,
    #: each {"function", "calls", "total_ms", "cumulative_ms"}, costliest first
    profile: Optional[list[dict[str, Any]]] = None
    #: native tasks (compile_to_c=True, C tasks): True if machine code ran, False
    #: if the function ran as Python; None for a plain Python task or not yet run
    compiled: Optional[bool] = None
    #: why a compile_to_c task ran as Python (numba's message, numba missing, disabled)
    compile_error: Optional[str] = None
    #: time this attempt spent compiling/loading in its worker (0 once compiled there)
    compile_ms: Optional[float] = None


@dataclass
class EngineStats:
    """A snapshot of the engine, every field measured (see BackgroundTasks.get_stats)."""

    # Queue metrics
    critical_queue_size: int = 0
    high_queue_size: int = 0
    normal_queue_size: int = 0
    low_queue_size: int = 0
    total_queued: int = 0
    queue_pressure: float = 0.0

    # Worker metrics
    active_workers: int = 0
    idle_workers: int = 0
    total_workers: int = 0
    avg_worker_utilization: float = 0.0
    worker_cpu_usage: float = 0.0
    worker_memory_usage: int = 0

    # Performance metrics
    tasks_per_second: float = 0.0
    avg_execution_time_ms: float = 0.0
    p95_execution_time_ms: float = 0.0
    p99_execution_time_ms: float = 0.0
    memory_usage_mb: float = 0.0
    memory_efficiency: float = 0.0

    # Error metrics
    failed_tasks: int = 0
    retry_count: int = 0
    timeout_count: int = 0
    error_rate: float = 0.0

    # Engine metrics
    uptime_seconds: float = 0.0
    total_tasks_processed: int = 0
    engine_cpu_usage: float = 0.0
    engine_memory_usage: int = 0

    # catzilla_mp's own, after Catzilla's 26
    #: tasks submitted per second over the same window as tasks_per_second
    submissions_per_second: float = 0.0
    total_tasks_submitted: int = 0
    #: submissions refused with QueueFullError (nothing was queued)
    queue_full_rejections: int = 0
    #: finished tasks that ran as machine code (compiled by numba, or C tasks)
    native_executions: int = 0
    #: finished tasks that ran as Python (compile_to_c fallbacks included)
    python_executions: int = 0
