"""JournalBackend: a backend wrapper that keeps every task in SQLite (``durable=``, issue 14).

The engine makes its usual backend (threads or worker processes) with a
TaskHost of this module in front of its own, and this wrapper in front of
the backend. Every dispatch is written to the journal before the task is
queued; every final outcome is written once; what was dispatched and never
finished is dispatched again when an engine next opens the journal:

    add_task ─► engine ─► JournalBackend.dispatch ──INSERT, commit──► journal.db (WAL)
                              │                                          ▲   ▲
                              ▼                                          │   │
                          inner backend (thread / process) ─ runs it     │   │
                              │ host.finish / attempt_failed / backoff_s │   │
                              ▼                                          │   │
                          _JournalHost ─► pending ops ─► writer thread ──┘   │
                              │ (then the engine's own TaskHost)             │
                              ▼                                              │
                          TaskLifecycle.finish                               │
    next start: engine ─► recovered() ◄── SELECT unfinished ─────────────────┘
                         resume(): re-queued on a thread, with their ids

Actors:
  * Submitters write the task's row (function by reference or by value,
    pickled arguments, options, due time) and commit before the inner
    backend queues it: once add_task returns the task is in the journal.
    Concurrent submitters share commits (group commit: whoever takes the
    database lock commits every row pending), and add_tasks/map commit their
    whole batch in one transaction.
  * The wrapped backend's threads report outcomes through _JournalHost; the
    outcome is appended to the pending operations and the writer thread
    commits them in batches every FLUSH_S. The outcome row's primary key is
    the task id and the task's row is deleted in the same transaction, so an
    outcome is recorded exactly once whatever runs twice.
  * The writer thread also notes which tasks have started (a scan of the
    tasks in flight every FLUSH_S through the inner backend's is_running) so
    that an attempt that dies with the app is counted at the next start, and
    drops outcomes older than result_ttl_s.

What survives what (SQLite WAL, ``synchronous=NORMAL``): a commit is in the
WAL file when it returns, so a SIGKILL of every process loses nothing
committed; a power loss or kernel crash may lose the last commits before the
next checkpoint (``synchronous=FULL`` would fsync each commit; see
docs/deploy.md). Outcomes committed by the writer thread may lag by FLUSH_S:
an outcome lost that way means the task runs again (at-least-once).

Execution is at-least-once: a task that was running, or had finished but
whose outcome was not yet committed, when the app died runs again.
"""
from __future__ import annotations

import fcntl
import importlib
import logging
import os
import sqlite3
import stat
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Optional

from .. import serialization
from ..errors import JournalError, SerializationError, WorkerCrashedError
from ..records import TaskPriority, TaskStatus
from ..results import cancelled_error

if TYPE_CHECKING:
    from ..lifecycle.host import TaskHost
    from ..results import TaskResult

log = logging.getLogger("catzilla_mp")

#: How often the writer thread commits outcomes and looks for started tasks:
#: the window in which a finished task's outcome may be lost (it then runs
#: again) and a just-started attempt may go uncounted.
FLUSH_S = 0.02
#: While journal writes keep failing, how often the writer thread says so again.
FAILURE_REPORT_S = 60.0
#: Tasks the writer thread asks "running?" per FLUSH_S: the oldest HEAD_SCAN (tasks
#: start roughly in submission order) plus a window that rotates over the rest (a
#: delayed task submitted early must not hide the others). Bounds the scan's cost
#: with thousands of tasks queued; a start it misses is seen within a few rounds.
HEAD_SCAN = 128
ROTATING_SCAN = 384
#: How often outcomes older than result_ttl_s are deleted.
PURGE_EVERY_S = 30.0
#: Tasks dispatched per pass of the resume thread before it looks at close().
RESUME_BATCH = 256
#: How long the resume thread waits before retrying a re-queue that found the queue full.
RESUME_FULL_PAUSE_S = 0.05
#: Functions whose journal form (reference or pickle) is cached.
FN_CACHE = 1024
SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks(
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    fn_ref TEXT,            -- "module:qualname" of an importable function, or NULL
    fn_blob BLOB,           -- its cloudpickle otherwise
    call BLOB NOT NULL,     -- pickle of (args, kwargs)
    opts BLOB,              -- pickle of compat.TaskOptions, or NULL
    priority INTEGER NOT NULL,
    max_retries INTEGER NOT NULL,
    timeout_ms INTEGER NOT NULL,
    due_at REAL NOT NULL,   -- wall clock: not to start before (delay_ms, retry back-off)
    attempt INTEGER NOT NULL DEFAULT 0,
    started INTEGER NOT NULL DEFAULT 0,  -- the current attempt was seen running
    created_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outcomes(
    id TEXT PRIMARY KEY,    -- one outcome per task, ever
    name TEXT NOT NULL,
    status TEXT NOT NULL,   -- TaskStatus name
    ok INTEGER NOT NULL,
    value BLOB,             -- pickle of the result or of the exception
    attempt INTEGER NOT NULL,
    created_at REAL NOT NULL,
    completed_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outcomes_by_age ON outcomes(completed_at);
CREATE TABLE IF NOT EXISTS schedules(  -- added in place: an older journal gains it on open
    key TEXT PRIMARY KEY,   -- workflows/schedule.py's schedule_key
    last_run REAL NOT NULL  -- the due time (wall clock) of its last run fired
) WITHOUT ROWID;
"""


class JournalRecord:
    """One unfinished task read back from the journal (what the engine re-admits)."""

    __slots__ = ("task_id", "name", "priority", "max_retries", "timeout_ms", "delay_ms",
                 "attempt", "created_at", "opts", "fn", "args", "kwargs", "error")

    def __init__(self, row: tuple, now: float) -> None:
        (self.task_id, self.name, fn_ref, fn_blob, call, opts, priority, self.max_retries,
         self.timeout_ms, due_at, attempt, started, self.created_at) = row
        self.priority = TaskPriority.parse(priority)
        self.delay_ms = max(0, min(int((due_at - now) * 1000), 30 * 86400 * 1000))
        # an attempt that was running when the app died counts (issue 14)
        self.attempt = attempt + 1 if started else attempt
        self.error: Optional[BaseException] = None
        self.fn: Optional[Callable] = None
        self.args: tuple = ()
        self.kwargs: dict = {}
        self.opts = None
        try:
            self.fn = _resolve(fn_ref) if fn_ref else serialization.loads_function(fn_blob)
            self.args, self.kwargs = serialization.loads_function(call)
            self.opts = serialization.loads_function(opts) if opts is not None else None
        except BaseException as exc:  # noqa: BLE001 - an unreadable task fails alone
            self.error = SerializationError(
                f"task {self.task_id} ({self.name}) cannot be re-created from the journal "
                f"after a restart: {exc!r}")
            self.error.__cause__ = exc
            return
        if started and self.attempt > self.max_retries:
            self.error = WorkerCrashedError(
                f"task {self.task_id} ({self.name}) was running when the app stopped, "
                f"and no attempts were left ({self.attempt} of {self.max_retries} retries)")


class JournalOutcome:
    """A finished task's outcome as the journal keeps it (get_task_result after a restart)."""

    __slots__ = ("task_id", "name", "status", "ok", "value", "attempt", "created_at",
                 "completed_at")

    def __init__(self, row: tuple) -> None:
        (self.task_id, self.name, status, ok, blob, self.attempt, self.created_at,
         self.completed_at) = row
        self.status = TaskStatus[status]
        self.ok = bool(ok)
        try:
            self.value = serialization.loads_function(blob) if blob is not None else None
        except BaseException as exc:  # noqa: BLE001 - a result that no longer unpickles
            self.ok = False
            self.value = SerializationError(f"the journaled result of task {self.task_id} "
                                            f"cannot be read: {exc!r}")


class Journal:
    """The SQLite file: one connection, guarded by a lock, shared by every thread.

    Raises (constructor):
        JournalError: the file is another user's, is writable by others, is
            not a regular file, or another engine has it open.
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self._lock_fd = _take_lock(self.path + ".lock")
        try:
            _check_or_create(self.path)
            self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            found = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if found is None:
                self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            elif found[0] != SCHEMA_VERSION:
                raise JournalError(f"{self.path}: journal schema {found[0]}, this version "
                                   f"reads {SCHEMA_VERSION}")
            for side in ("-wal", "-shm"):  # SQLite copies the mode; make sure
                if os.path.exists(self.path + side):
                    os.chmod(self.path + side, 0o600)
        except sqlite3.Error as exc:
            os.close(self._lock_fd)
            raise JournalError(f"{self.path}: cannot open the journal: {exc}") from exc
        except BaseException:
            os.close(self._lock_fd)
            raise
        self.lock = threading.Lock()
        # operations not yet committed, in order; _next is the number of the
        # last one appended, _committed that of the last one committed
        self._ops: list[tuple[str, tuple]] = []
        self._ops_lock = threading.Lock()
        self._next = 0
        self._committed = 0

    def add(self, sql: str, params: tuple) -> int:
        """Append an operation; returns its number (for commit_through)."""
        with self._ops_lock:
            self._ops.append((sql, params))
            self._next += 1
            return self._next

    def add_many(self, ops: list[tuple[str, tuple]]) -> int:
        with self._ops_lock:
            self._ops.extend(ops)
            self._next += len(ops)
            return self._next

    def commit_through(self, number: int) -> None:
        """Return once operation ``number`` is committed (committing it and all before it).

        Raises:
            JournalError: the commit failed (disk full, I/O error).
        """
        if self._committed >= number:
            return
        with self.lock:
            if self._committed >= number:
                return  # another thread's transaction took ours along
            self._commit_locked()

    def flush(self) -> None:
        """Commit every pending operation."""
        with self.lock:
            self._commit_locked()

    def _commit_locked(self) -> None:
        with self._ops_lock:
            ops, self._ops = self._ops, []
            last = self._next
        if not ops:
            return
        db = self.db
        try:
            db.execute("BEGIN")
            for sql, params in ops:
                db.execute(sql, params)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            with self._ops_lock:  # kept: the next commit tries again
                self._ops[:0] = ops
            raise JournalError(f"{self.path}: cannot write the journal: {exc}") from exc
        self._committed = last

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self.lock:
            return self.db.execute(sql, params).fetchall()

    def close(self) -> None:
        with self.lock:
            try:
                self._commit_locked()
            except JournalError:
                log.exception("the journal's last operations could not be written")
            try:
                self.db.close()
            finally:
                os.close(self._lock_fd)


class ScheduleStore:
    """The last run of each schedule key, in the journal (workflows/schedule.py's ScheduleStore).

    A durable engine's schedules save each run they fire here; a restarted
    engine adding a schedule of the same key continues from the saved run.
    """

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    def last_run(self, key: str) -> Optional[float]:
        """The due time of ``key``'s last run fired, or None."""
        rows = self._journal.query("SELECT last_run FROM schedules WHERE key=?", (key,))
        return float(rows[0][0]) if rows else None

    def save(self, key: str, due: float) -> None:
        """Record a run of ``key`` due at ``due``; committed when this returns.

        Raises:
            JournalError: the commit failed.
        """
        number = self._journal.add("INSERT OR REPLACE INTO schedules(key, last_run) VALUES (?,?)",
                                   (key, float(due)))
        self._journal.commit_through(number)


_INSERT_TASK = ("INSERT OR REPLACE INTO tasks(id, name, fn_ref, fn_blob, call, opts, priority, "
                "max_retries, timeout_ms, due_at, attempt, started, created_at) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,0,?)")
_DELETE_TASK = "DELETE FROM tasks WHERE id=?"
_INSERT_OUTCOME = ("INSERT OR IGNORE INTO outcomes(id, name, status, ok, value, attempt, "
                   "created_at, completed_at) VALUES (?,?,?,?,?,?,?,?)")
_STARTED = "UPDATE tasks SET started=1 WHERE id=?"
_RETRY = "UPDATE tasks SET attempt=?, started=0, due_at=? WHERE id=?"


class _JournalHost:
    """The TaskHost the wrapped backend sees: the engine's, with the outcomes journaled."""

    def __init__(self, host: "TaskHost", wrapper: "JournalBackend") -> None:
        self._host = host
        self._wrapper = weakref.ref(wrapper)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)

    def finish(self, task: "TaskResult", ok: bool, value: Any, status: TaskStatus) -> None:
        wrapper = self._wrapper()
        if wrapper is not None:
            wrapper.record_finish(task, ok, value, status)
        self._host.finish(task, ok, value, status)

    def finish_many(self, settled: list) -> None:
        """finish() of a batch (the process backend's collector): each outcome journaled."""
        wrapper = self._wrapper()
        if wrapper is not None:
            for task, ok, value, status in settled:
                wrapper.record_finish(task, ok, value, status)
        self._host.finish_many(settled)

    def attempt_failed(self, task: "TaskResult", exc: BaseException) -> bool:
        retried = self._host.attempt_failed(task, exc)
        wrapper = self._wrapper()
        if wrapper is not None:
            wrapper.record_attempt(task, retried)
        return retried

    def backoff_s(self, attempt: int, task: Optional["TaskResult"] = None) -> float:
        delay = self._host.backoff_s(attempt, task)
        wrapper = self._wrapper()
        if wrapper is not None and task is not None:
            wrapper.record_due(task, delay)
        return delay


class JournalBackend:
    """A backend that journals another (see the module docstring).

    Args:
        host: the engine's TaskHost.
        path: the SQLite file (created 0600 if missing).
        make_inner: makes the wrapped backend from a TaskHost.
    Raises:
        JournalError: the journal cannot be opened (see Journal).
    """

    def __init__(self, host: "TaskHost", path: str,
                 make_inner: Callable[["TaskHost"], Any]) -> None:
        self.host = host
        self.journal = Journal(path)
        self._fn_cache: dict[int, tuple[Any, Optional[str], Optional[bytes]]] = {}
        # id -> task, for tasks dispatched and not final: the started scan
        self._in_flight: dict[str, "TaskResult"] = {}
        self._seen_started: set[str] = set()
        self._scan_at = 0  # where the rotating part of the started scan goes on
        # tasks whose failure is the shutdown's doing (no retry while closing): not final
        self._not_final: set[str] = set()
        self._closing = False
        self._stop = threading.Event()
        try:
            self.inner = make_inner(_JournalHost(host, self))
        except BaseException:
            self.journal.close()
            raise
        self._resume: list[tuple["TaskResult", JournalRecord]] = []
        self._writer = threading.Thread(target=self._write_loop, name="czmp-journal",
                                        daemon=True)
        self._writer.start()
        self._resumer: Optional[threading.Thread] = None

    def __getattr__(self, name: str) -> Any:
        # anything else the engine or observability asks of a backend
        # (task_id_of_log, external_bytes, seg, supervisor, ...)
        return getattr(self.__dict__["inner"], name)

    # -- submitting -------------------------------------------------------

    def _fn_form(self, fn: Callable) -> tuple[Optional[str], Optional[bytes]]:
        key = id(fn)
        hit = self._fn_cache.get(key)
        if hit is not None and hit[0]() is fn:
            return hit[1], hit[2]
        ref = _reference(fn)
        blob = None if ref is not None else serialization.dumps_function(fn)
        try:
            weak = weakref.ref(fn)
        except TypeError:
            return ref, blob
        if len(self._fn_cache) >= FN_CACHE:
            self._fn_cache.clear()
        self._fn_cache[key] = (weak, ref, blob)
        return ref, blob

    def _row(self, task: "TaskResult", fn: Callable, args: tuple, kwargs: dict,
             now: float) -> tuple:
        ref, blob = self._fn_form(fn)
        call = serialization.dumps((args, kwargs))
        opts = serialization.dumps(task.opts) if task.opts is not None else None
        return (task.task_id, task.name or getattr(fn, "__qualname__", "?"), ref, blob, call,
                opts, task.priority.value, task.max_retries, task.timeout_ms,
                now + task.delay_ms / 1000.0, task.attempt, task.created_at)

    def dispatch(self, task: "TaskResult", fn: Callable, args: tuple, kwargs: dict) -> None:
        """Journal the task (committed), then queue it on the inner backend.

        Raises:
            SerializationError: the function or arguments cannot be journaled.
            JournalError: the journal cannot be written. As the inner backend's
            dispatch otherwise; in every case the task is neither queued nor journaled.
        """
        journal = self.journal
        journal.commit_through(journal.add(_INSERT_TASK, self._row(task, fn, args, kwargs,
                                                                   time.time())))
        self._in_flight[task.task_id] = task
        try:
            self.inner.dispatch(task, fn, args, kwargs)
        except BaseException:
            self._in_flight.pop(task.task_id, None)
            journal.commit_through(journal.add(_DELETE_TASK, (task.task_id,)))
            raise

    def dispatch_many(self, tasks: list["TaskResult"], fn: Callable, calls: list[tuple],
                      done: list[int]) -> None:
        """dispatch for many tasks, journaled in one transaction."""
        journal = self.journal
        now = time.time()
        rows = [(_INSERT_TASK, self._row(t, fn, c, {}, now)) for t, c in zip(tasks, calls)]
        journal.commit_through(journal.add_many(rows))
        for t in tasks:
            self._in_flight[t.task_id] = t
        try:
            self.inner.dispatch_many(tasks, fn, calls, done)
        except BaseException:
            left = tasks[done[0]:]
            for t in left:
                self._in_flight.pop(t.task_id, None)
            journal.commit_through(journal.add_many([(_DELETE_TASK, (t.task_id,)) for t in left]))
            raise

    # -- what the wrapped backend reports (through _JournalHost) ---------------

    def record_finish(self, task: "TaskResult", ok: bool, value: Any, status: TaskStatus) -> None:
        """Journal ``task``'s outcome (committed by the writer thread within FLUSH_S)."""
        tid = task.task_id
        self._in_flight.pop(tid, None)
        self._seen_started.discard(tid)
        if task.done():
            return  # settled already (the engine broke, or a cancel won): not this outcome
        if tid in self._not_final or (self._closing and not ok):
            # the shutdown stopped it, not the task: it runs again at the next start
            self._not_final.discard(tid)
            return
        self._record_outcome(task, ok, value, status)

    def _record_outcome(self, task: "TaskResult", ok: bool, value: Any,
                        status: TaskStatus) -> None:
        try:
            blob = serialization.dumps(value)
        except SerializationError as exc:
            ok, blob = False, serialization.dumps(SerializationError(
                f"task {task.task_id} finished ({status.name}) but its "
                f"{'result' if ok else 'exception'} cannot be journaled: {exc}"))
        self.journal.add_many([
            (_INSERT_OUTCOME, (task.task_id, task.name, status.name, int(ok), blob,
                               task.attempt, task.created_at, time.time())),
            (_DELETE_TASK, (task.task_id,))])

    def record_attempt(self, task: "TaskResult", retried: bool) -> None:
        """After a failed attempt: journal the new attempt number (or why it is not final)."""
        self._seen_started.discard(task.task_id)
        if retried:
            self.journal.add(_RETRY, (task.attempt, time.time(), task.task_id))
        elif getattr(self.host, "closed", False) and task.attempt < task.max_retries:
            self._not_final.add(task.task_id)  # no retry only because the engine is closing

    def record_due(self, task: "TaskResult", delay_s: float) -> None:
        self.journal.add(_RETRY, (task.attempt, time.time() + delay_s, task.task_id))

    # -- the Backend protocol, passed on ----------------------------------------

    def cancel(self, task: "TaskResult") -> bool:
        withdrawn = self.inner.cancel(task)
        if withdrawn:
            self._in_flight.pop(task.task_id, None)
            if not getattr(self.host, "closed", False):  # a shutdown's cancel: runs next start
                self._record_outcome(task, False, cancelled_error(task), TaskStatus.CANCELLED)
        return withdrawn

    def terminate(self, task: "TaskResult") -> bool:
        return self.inner.terminate(task)

    def observe(self, task: "TaskResult") -> None:
        self.inner.observe(task)

    def is_running(self, task: "TaskResult") -> bool:
        return self.inner.is_running(task)

    def live_progress(self, task: "TaskResult") -> Optional[tuple[float, str]]:
        return self.inner.live_progress(task)

    def help_collect(self, task: "TaskResult", timeout: Optional[float]) -> None:
        self.inner.help_collect(task, timeout)

    def queue_depths(self) -> list[int]:
        return self.inner.queue_depths()

    def worker_records(self):
        return self.inner.worker_records()

    def in_flight_memory(self) -> tuple[int, int]:
        return self.inner.in_flight_memory()

    def close(self, abandon: Callable[["TaskResult"], None]) -> None:
        """Close the inner backend; what it abandons stays in the journal for the next start."""
        self._closing = True
        self._stop.set()
        try:
            if self._resumer is not None:
                # it may wait for room in the queue; what it has not re-queued stays journaled
                self._resumer.join(1.0)
            self.inner.close(abandon)
        finally:
            self._writer.join()
            self.journal.close()

    # -- restart ------------------------------------------------------------------

    def recovered(self) -> list[JournalRecord]:
        """The tasks the journal holds unfinished, oldest first (read once, at start)."""
        now = time.time()
        rows = self.journal.query(
            "SELECT id, name, fn_ref, fn_blob, call, opts, priority, max_retries, timeout_ms, "
            "due_at, attempt, started, created_at FROM tasks ORDER BY created_at")
        return [JournalRecord(r, now) for r in rows]

    def resume(self, pairs: list[tuple["TaskResult", JournalRecord]]) -> None:
        """Queue again the tasks of ``recovered()`` (already admitted by the engine), on a thread.

        A task whose function cannot be re-created, or whose last attempt
        died with the app, is finished FAILED (and journaled) at once.
        """
        if not pairs:
            return
        self._resume = list(pairs)
        self._resumer = threading.Thread(target=self._resume_loop, name="czmp-journal-resume",
                                         daemon=True)
        self._resumer.start()

    def _resume_loop(self) -> None:
        from ..errors import QueueFullError

        pairs, self._resume = self._resume, []
        pairs.reverse()
        while pairs and not self._stop.is_set():
            task, rec = pairs[-1]
            if rec.error is not None:
                pairs.pop()
                self._record_outcome(task, False, rec.error, TaskStatus.FAILED)
                self.host.finish(task, False, rec.error, TaskStatus.FAILED)
                continue
            self._in_flight[task.task_id] = task
            if rec.attempt:
                self.journal.add(_RETRY, (rec.attempt, time.time(), task.task_id))
            try:
                self.inner.dispatch(task, rec.fn, rec.args, rec.kwargs)
            except QueueFullError:
                self._stop.wait(RESUME_FULL_PAUSE_S)
                continue
            except BaseException as exc:  # noqa: BLE001 - this task fails, the others go on
                if self._closing:
                    return
                self._in_flight.pop(task.task_id, None)
                self._record_outcome(task, False, exc, TaskStatus.FAILED)
                self.host.finish(task, False, exc, TaskStatus.FAILED)
            pairs.pop()

    def schedule_store(self) -> ScheduleStore:
        """Where this journal keeps its engine's schedules' last runs."""
        return ScheduleStore(self.journal)

    def outcome(self, task_id: str) -> Optional[JournalOutcome]:
        """The journaled outcome of ``task_id`` within result_ttl_s, or None."""
        horizon = time.time() - self.host.options.result_ttl_s
        try:
            rows = self.journal.query(
                "SELECT id, name, status, ok, value, attempt, created_at, completed_at "
                "FROM outcomes WHERE id=? AND completed_at>?", (task_id, horizon))
        except sqlite3.Error:
            return None
        return JournalOutcome(rows[0]) if rows else None

    # -- the writer thread ----------------------------------------------------------

    def _write_loop(self) -> None:
        next_purge = 0.0
        failing_since: Optional[float] = None  # writes fail (a full disk): since when
        failures, next_report = 0, 0.0
        while True:
            stopping = self._stop.wait(FLUSH_S)
            now = time.monotonic()
            try:
                if not stopping:
                    self._note_started()
                if now >= next_purge and not stopping:
                    next_purge = now + PURGE_EVERY_S
                    self.journal.add("DELETE FROM outcomes WHERE completed_at<?",
                                     (time.time() - self.host.options.result_ttl_s,))
                self.journal.flush()
                if failing_since is not None:
                    log.warning("journal writes work again after %d failed attempts in %.0f s",
                                failures, now - failing_since)
                    failing_since, failures = None, 0
            except ReferenceError:
                return  # the engine is gone; close() flushes
            except Exception:  # noqa: BLE001 - a full disk must not end the thread
                # retried every FLUSH_S, reported once and then every FAILURE_REPORT_S:
                # a disk full for an hour must not write 180,000 tracebacks
                failures += 1
                if failing_since is None:
                    failing_since, next_report = now, now + FAILURE_REPORT_S
                    log.exception("journal write failed; retried every %s s, outcomes kept "
                                  "in memory meanwhile", FLUSH_S)
                elif now >= next_report:
                    next_report = now + FAILURE_REPORT_S
                    log.error("journal writes still failing: %d attempts in %.0f s",
                              failures, now - failing_since)
            if stopping:
                return

    def _note_started(self) -> None:
        running = self.inner.is_running
        seen = self._seen_started
        items = list(self._in_flight.items())
        if len(items) > HEAD_SCAN + ROTATING_SCAN:
            start = HEAD_SCAN + self._scan_at % (len(items) - HEAD_SCAN)
            self._scan_at += ROTATING_SCAN
            items = items[:HEAD_SCAN] + items[start:start + ROTATING_SCAN]
        ops = []
        for tid, task in items:
            if tid not in seen and running(task):
                seen.add(tid)
                ops.append((_STARTED, (tid,)))
        if ops:
            self.journal.add_many(ops)


def _reference(fn: Callable) -> Optional[str]:
    """"module:qualname" if importing it gives ``fn`` back (not __main__: a script's
    functions travel by value, as the workers get them)."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or module == "__main__" \
            or "<" in qualname:
        return None
    try:
        found = _resolve(f"{module}:{qualname}")
    except Exception:  # noqa: BLE001 - not importable: by value then
        return None
    return f"{module}:{qualname}" if found is fn else None


def _resolve(ref: str) -> Callable:
    module, _, qualname = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _take_lock(path: str) -> int:
    """An exclusive flock on the journal's lock file: one engine per journal."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise JournalError(f"{path}: cannot open the journal's lock file: {exc}") from exc
    try:
        _check_owned(path, os.fstat(fd))
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise JournalError(f"{path[:-5]} is in use by another engine (one engine per journal; "
                           "for several app processes, see docs/deploy.md)") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_or_create(path: str) -> None:
    """Create the journal 0600, or check that the existing one is ours and private."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise JournalError(f"{path}: cannot open the journal: {exc}") from exc
    try:
        _check_owned(path, os.fstat(fd))
    finally:
        os.close(fd)


def _check_owned(path: str, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise JournalError(f"{path}: not a regular file")
    if st.st_uid != os.getuid():
        raise JournalError(f"{path}: owned by uid {st.st_uid}, not {os.getuid()}: a journal "
                           "holds pickles and is trusted by one user only (SECURITY.md)")
    if st.st_mode & 0o077:
        raise JournalError(f"{path}: mode {stat.S_IMODE(st.st_mode):o} lets other users in; "
                           "a journal must be 0600 (SECURITY.md)")
