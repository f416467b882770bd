"""The app-side API: Catzilla's methods for any app class, and the module helpers.

``BackgroundTaskApp`` is a mixin: any class (a Catzilla app, a FastAPI app
holder, a plain object) that inherits it gets Catzilla's
``enable_background_tasks`` / ``add_task`` / ``task`` / ``get_task_stats``
plus ``get_task_result``, with Catzilla's errors before enabling and on a
second enable. catzilla_mp.integrations.catzilla applies it to Catzilla's
own app class.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar, Union, overload

from .engine import BackgroundTasks
from .records import EngineStats, TaskPriority
from .results import TaskResult

if TYPE_CHECKING:
    from typing import ParamSpec

    from .compat import TaskFunction

    P = ParamSpec("P")

T = TypeVar("T")

NOT_ENABLED = "Background task system not enabled. Call enable_background_tasks() first."
ALREADY_ENABLED = "Background task system already enabled"


class BackgroundTaskApp:
    """Mixin with Catzilla's background-task methods, backed by catzilla_mp."""

    tasks: Optional[BackgroundTasks] = None

    def enable_background_tasks(
        self,
        workers: Optional[int] = None,
        min_workers: int = 2,
        max_workers: Optional[int] = None,
        queue_size: int = 10000,
        enable_auto_scaling: bool = True,
        memory_pool_mb: int = 500,
        enable_c_compilation: bool = True,
        enable_profiling: bool = False,
        *,
        mode: str = "process",
        **options: Any,
    ) -> None:
        """Start the engine. ``mode="process"`` runs tasks in worker processes.

        Every spelling of Catzilla's docs is accepted, ``initial_workers=``
        for ``workers=`` included; ``**options`` are BackgroundTasks' own.

        Raises:
            RuntimeError: already enabled (Catzilla's message).
            ValueError, TypeError: invalid options.
        """
        if getattr(self, "tasks", None) is not None:
            raise RuntimeError(ALREADY_ENABLED)
        self.tasks = BackgroundTasks(
            workers=workers, min_workers=min_workers, max_workers=max_workers,
            queue_size=queue_size, enable_auto_scaling=enable_auto_scaling,
            memory_pool_mb=memory_pool_mb, enable_c_compilation=enable_c_compilation,
            enable_profiling=enable_profiling, mode=mode, **options)
        self._task_system_enabled = True

    def _engine(self) -> BackgroundTasks:
        engine = getattr(self, "tasks", None)
        if engine is None:
            raise RuntimeError(NOT_ENABLED)
        return engine

    def add_task(
        self,
        func: Callable[..., T],
        *args: Any,
        priority: Any = TaskPriority.NORMAL,
        delay_ms: int = 0,
        max_retries: int = 3,
        timeout_ms: int = 30000,
        compile_to_c: Optional[bool] = None,
        **kwargs: Any,
    ) -> TaskResult[T]:
        """Submit a task; see BackgroundTasks.add_task."""
        return self._engine().add_task(func, *args, priority=priority, delay_ms=delay_ms,
                                       max_retries=max_retries, timeout_ms=timeout_ms,
                                       compile_to_c=compile_to_c, **kwargs)

    async def add_task_async(self, func: Callable[..., T], *args: Any,
                             **kwargs: Any) -> TaskResult[T]:
        """Submit from async code; a full queue is awaited, not blocked on.

        See BackgroundTasks.add_task_async (same arguments as add_task).
        """
        return await self._engine().add_task_async(func, *args, **kwargs)

    @overload
    def task(self, priority: Callable[P, T]) -> TaskFunction[P, T]: ...

    @overload
    def task(self, priority: Any = ..., compile_to_c: Optional[bool] = ...,
             **config_kwargs: Any) -> Callable[[Callable[P, T]], TaskFunction[P, T]]: ...

    def task(self, priority: Any = TaskPriority.NORMAL, compile_to_c: Optional[bool] = None,
             **config_kwargs: Any) -> Any:
        """Decorator whose configuration applies when the function is submitted.

        ``@app.task``, ``@app.task()`` and ``@app.task(priority=..., ...)``
        all work; see BackgroundTasks.task.
        """
        return self._engine().task(priority, compile_to_c=compile_to_c, **config_kwargs)

    def periodic(self, cron: Optional[str] = None, *, every: Any = None, tz: Any = None,
                 missed: str = "once", **options: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: run the function periodically (``@app.periodic("*/5 * * * *")``).

        See BackgroundTasks.periodic (``every=``, ``tz=``, ``missed=``; other
        keywords are the runs' add_task options). The function is returned
        unchanged; its Schedule is ``fn.schedule``.

        Raises:
            RuntimeError: not enabled. As BackgroundTasks.periodic.
        """
        engine = self._engine()

        def decorate(fn: Callable[..., T]) -> Callable[..., T]:
            fn.schedule = engine.periodic(fn, cron=cron, every=every, tz=tz,  # type: ignore[attr-defined]
                                          missed=missed, **options)
            return fn

        return decorate

    def get_task_result(self, task_id: Union[str, TaskResult]) -> TaskResult:
        """The TaskResult of a task id, or of a TaskResult (as Catzilla's docs pass it).

        Raises:
            RuntimeError: not enabled. UnknownTaskError: no such task.
        """
        return self._engine().get_task_result(task_id)

    def get_task_stats(self) -> EngineStats:
        return self._engine().get_stats()

    def disable_background_tasks(self, wait_for_completion: bool = True, timeout: float = 30.0) -> None:
        """Shut the engine down; enable_background_tasks may be called again afterwards."""
        engine, self.tasks = getattr(self, "tasks", None), None
        self._task_system_enabled = False
        if engine is not None:
            engine.shutdown(wait_for_completion=wait_for_completion, timeout=timeout)


# -- module helpers (Catzilla's names) ----------------------------------------

_global: Optional[BackgroundTasks] = None
_global_lock = threading.Lock()


def create_task_system(workers: Optional[int] = None, enable_auto_scaling: bool = True,
                       memory_pool_mb: int = 500, **options: Any) -> BackgroundTasks:
    """A new engine with Catzilla's defaults (process mode unless ``mode=`` says otherwise)."""
    return BackgroundTasks(workers=workers, enable_auto_scaling=enable_auto_scaling,
                           memory_pool_mb=memory_pool_mb, **options)


def get_global_task_system() -> BackgroundTasks:
    """The process-wide engine, created on first use (and shut down at exit)."""
    global _global
    with _global_lock:
        if _global is None or _global.closed:
            _global = create_task_system()
        return _global


def add_task(func: Callable[..., T], *args: Any, **kwargs: Any) -> TaskResult[T]:
    return get_global_task_system().add_task(func, *args, **kwargs)


@overload
def task(priority: Callable[P, T]) -> TaskFunction[P, T]: ...


@overload
def task(priority: Any = ..., **kwargs: Any) -> Callable[[Callable[P, T]], TaskFunction[P, T]]: ...


def task(priority: Any = TaskPriority.NORMAL, **kwargs: Any) -> Any:
    """@task, @task() or @task(priority=..., ...) on the global engine."""
    return get_global_task_system().task(priority, **kwargs)
