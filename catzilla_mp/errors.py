"""Every exception catzilla_mp raises.

    CatzillaMPError
    ├── SegmentError                 the shared-memory segment cannot be used
    │   ├── SegmentExistsError       a segment of that name exists already
    │   ├── SegmentVersionError      made by another layout version
    │   ├── SegmentOwnerError        belongs to another user
    │   └── SegmentCorruptError      not ours, truncated or inconsistent
    ├── QueueFullError               no room for the task within the wait allowed
    ├── PayloadTooLargeError         arguments or result beyond max_payload_bytes
    ├── SharedMemoryFullError        /dev/shm full, or max_external_bytes reached
    ├── RouteConflictError           the web routes clash with the app's (at startup)
    ├── SerializationError           arguments, result or exception cannot be pickled
    ├── EngineClosedError            you shut the engine down; no new work
    ├── EngineBrokenError            the engine broke (its supervisor died)
    │   └── WorkerInitializerError   the engine's initializer raised in a worker
    ├── UnknownTaskError             no task with that id (also a KeyError)
    └── TaskError                    a task did not produce a result
        ├── TaskTimeoutError         past its timeout_ms (also a TimeoutError)
        ├── WorkerCrashedError       its worker died running it, attempts used up
        ├── TaskCancelledError       cancelled before it ran
        │   └── DependencyCancelledError  a task it depended on was cancelled
        ├── DependencyFailedError    a task it depended on failed
        └── MemoryLimitError         past its memory_limit_mb (also a MemoryError)

A task's own exception is re-raised as itself, with the worker's traceback
text as its ``__cause__`` (a :class:`RemoteTraceback`). All of these pickle.
"""
from __future__ import annotations


class CatzillaMPError(Exception):
    """Root of every catzilla_mp error."""


class SegmentError(CatzillaMPError):
    """The shared-memory segment cannot be created or attached."""


class SegmentExistsError(SegmentError):
    """A segment with that name exists already."""


class SegmentVersionError(SegmentError):
    """The segment was made by another layout version of catzilla_mp."""


class SegmentOwnerError(SegmentError):
    """The segment belongs to another user; attaching would run their pickles."""


class SegmentCorruptError(SegmentError):
    """The segment is not a catzilla_mp segment, or is truncated or inconsistent."""


class QueueFullError(CatzillaMPError):
    """Every task slot stayed taken for the whole wait allowed; the task was not queued."""


class PayloadTooLargeError(CatzillaMPError, ValueError):
    """A pickled payload exceeds the engine's max_payload_bytes."""


class SerializationError(CatzillaMPError):
    """Arguments, a result or an exception could not be pickled or unpickled."""


class EngineClosedError(CatzillaMPError, RuntimeError):
    """The engine was shut down by its owner; it takes no new tasks."""


class EngineBrokenError(CatzillaMPError, RuntimeError):
    """The engine broke from outside (its supervisor died); pending tasks get this."""


class UnknownTaskError(CatzillaMPError, KeyError):
    """No task with that id is known to this engine (never submitted, or forgotten)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class TaskError(CatzillaMPError):
    """A task ended without a result for a reason of the engine's, not its own."""


class TaskTimeoutError(TaskError, TimeoutError):
    """The task ran past its timeout_ms and was stopped."""


class WorkerCrashedError(TaskError):
    """The worker process running the task died, and no attempts were left.

    ``exitcode`` is the process exit code, or minus the signal number.
    """

    def __init__(self, message: str = "", exitcode: int | None = None) -> None:
        super().__init__(message, exitcode)
        self.exitcode = exitcode

    def __str__(self) -> str:
        return str(self.args[0])


class TaskCancelledError(TaskError):
    """The task was cancelled before it started."""


class RemoteTraceback(Exception):
    """Carries the worker's formatted traceback; set as ``__cause__`` of a task's exception."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class MemoryLimitError(TaskError, MemoryError):
    """The task's memory grew past its memory_limit_mb; it was stopped and its worker recycled.

    Measured as the worker's resident set size over its value at the task's
    start. ``limit_mb`` is the limit, ``peak_mb`` what was seen.
    """

    def __init__(self, message: str = "", limit_mb: float | None = None,
                 peak_mb: float | None = None) -> None:
        super().__init__(message, limit_mb, peak_mb)
        self.limit_mb = limit_mb
        self.peak_mb = peak_mb

    def __str__(self) -> str:
        return str(self.args[0])


class WorkerInitializerError(EngineBrokenError):
    """The engine's ``initializer`` raised in a worker; the task could not run there.

    Not retried. The worker that failed exits after reporting it, and its
    replacement runs the initializer again (a transient failure heals).
    The initializer's traceback is the ``__cause__``.
    """


class RouteConflictError(CatzillaMPError, ValueError):
    """The engine's web routes and the app's own would answer the same path (raised at startup)."""


class SharedMemoryFullError(CatzillaMPError):
    """Shared memory has no room for a payload: /dev/shm is full, or max_external_bytes is reached.

    Raised by add_task (the task was not queued), or a task's outcome when
    its result did not fit (the task may be retried).
    """


class NativeCompileError(CatzillaMPError, ValueError):
    """A C task's source did not compile (raised by TaskCompiler.compile_c, in the app).

    Nothing was queued. ``compiler_output`` holds what the compiler said;
    ``str()`` gives its error lines. Not raised for compile_to_c: a Python
    function numba cannot compile runs as Python (TaskStats.compile_error).
    """

    def __init__(self, message: str = "", compiler_output: str = "") -> None:
        super().__init__(message, compiler_output)
        self.compiler_output = compiler_output

    def __str__(self) -> str:
        return str(self.args[0])


class _NamesItsParent(Exception):
    """What both dependency errors carry: the parent task that decided this one's fate."""

    def __init__(self, message: str = "", parent_id: str | None = None,
                 parent_name: str | None = None) -> None:
        super().__init__(message, parent_id, parent_name)
        self.parent_id = parent_id
        self.parent_name = parent_name

    def __str__(self) -> str:
        return str(self.args[0])


class DependencyFailedError(_NamesItsParent, TaskError):
    """A task this one depended on failed, so this one never ran (workflows: depends_on, chain, chord).

    ``parent_id`` and ``parent_name`` name the parent that failed; its own
    exception is the ``__cause__``. A dependant of this task gets another
    DependencyFailedError naming this task, and so on down the graph.
    """


class DependencyCancelledError(_NamesItsParent, TaskCancelledError):
    """A task this one depended on was cancelled, so this one is cancelled too (never ran).

    ``parent_id`` and ``parent_name`` name the cancelled parent. A
    TaskCancelledError, so code that handles cancellation handles this.
    """


class JournalError(CatzillaMPError):
    """The durable journal (``durable=``) cannot be opened or written.

    Raised by the engine's constructor (the file is another user's, open to
    other users, or in use by another engine) or by add_task (the task's row
    could not be committed: it was not queued).
    """


class ScheduleConflictError(CatzillaMPError, ValueError):
    """A schedule's key is registered on the server with another spec (``periodic(name=...)``).

    Raised by ``periodic()`` on a client of ``catzilla-mp serve`` when another
    process registered the same ``name=`` with a different cron/every, time
    zone, policy, function or arguments: the first registration stays, this
    one is refused (nothing was registered). A ValueError too.
    """
