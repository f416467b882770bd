"""Unique jobs: a second submission with the same key returns the first's TaskResult (arq's job_id).

    add_task(fn, job_id="report-42")            key = ("id", "report-42")
    add_task(fn, x, unique_for=60)              key = ("args", name, sha256(pickle((args, kwargs))))
          │
          ▼  UniqueJobs.claim(key, new task) under one lock
    the table holds a live task for key? ──yes──► that TaskResult (the new one is dropped, never ran)
          │ no (none, or finished and past unique_for)
          ▼
    the new task is entered and submitted

A key is taken while its task is unfinished and, with ``unique_for``, for
that many seconds after the submission even once finished (a result
within the window is reused: "at most once per minute"). The claim and the
entry happen under one lock, so of many threads submitting one key at once
exactly one task is made.

Scope: the engine that applies it. With one engine per server (``server=``)
the client keeps no table: the key goes with the submission and the
``catzilla-mp serve`` process (server.py) claims it under its index lock; a
key already held there is answered with the holder's task id, and the
second submitter gets a TaskResult of that id (it follows the first task's
outcome), so of N processes submitting one key at once exactly one task runs.
"""
from __future__ import annotations

import collections
import hashlib
import pickle
import threading
import time
from typing import Any, Callable, Hashable, Optional

from ..errors import SerializationError
from ..results import TaskResult

#: unique_for upper bound in seconds (30 days, as every other time option).
MAX_UNIQUE_FOR_S = 30 * 86400.0
#: Finished entries looked at per claim to drop expired ones (bounds the table).
PRUNE_PER_CLAIM = 8


def check_unique_for(value: Any) -> Optional[float]:
    """unique_for validated: None, or seconds in (0, 30 days].

    Raises:
        TypeError: not a number. ValueError: zero, negative, NaN or too large.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"unique_for must be a number of seconds, not {type(value).__name__}")
    if not 0 < value <= MAX_UNIQUE_FOR_S:  # NaN fails this too
        raise ValueError(f"unique_for must be in (0, {MAX_UNIQUE_FOR_S:g}] seconds, not {value}")
    return float(value)


def key_of(job_id: Any, name: str, args: tuple, kwargs: dict) -> Hashable:
    """The uniqueness key: the job_id, or (without one) the task name and its pickled arguments.

    Raises:
        TypeError: a job_id that is not a non-empty str.
        SerializationError: no job_id and arguments that cannot be pickled.
    """
    if job_id is not None:
        if not isinstance(job_id, str) or not job_id:
            raise TypeError(f"job_id must be a non-empty str, not {job_id!r}")
        return ("id", job_id)
    try:
        blob = pickle.dumps((args, sorted(kwargs.items())), protocol=5)
    except Exception as exc:  # noqa: BLE001 - any pickling failure is the caller's input
        raise SerializationError(f"unique_for without job_id keys on the arguments, "
                                 f"and they cannot be pickled: {exc!r}") from exc
    return ("args", name, hashlib.sha256(blob).hexdigest())


class UniqueJobs:
    """The table of keys to the TaskResult that holds them (one per engine).

    Args:
        clock: monotonic seconds (tests inject a fake one).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (task, held until (monotonic) or None: while unfinished), oldest first
        self._jobs: collections.OrderedDict[Hashable, tuple[TaskResult, Optional[float]]] = \
            collections.OrderedDict()

    def claim(self, key: Hashable, task: TaskResult, unique_for: Optional[float]) -> TaskResult:
        """``task`` if it now holds ``key``; else the TaskResult that holds it already."""
        with self._lock:
            now = self._clock()
            entry = self._jobs.get(key)
            if entry is not None and self._live(entry, now):
                return entry[0]
            self._jobs[key] = (task, None if unique_for is None else now + unique_for)
            self._jobs.move_to_end(key)
            self._prune_locked(now)
        if unique_for is None:
            # without a window the key is free once the task ends: drop it then
            task.add_callback(lambda _value: self.drop(key, task))
        return task

    def drop(self, key: Hashable, task: TaskResult) -> None:
        """Free ``key`` if ``task`` still holds it (its submission failed, or it ended)."""
        with self._lock:
            entry = self._jobs.get(key)
            if entry is not None and entry[0] is task:
                del self._jobs[key]

    def find(self, key: Hashable) -> Optional[TaskResult]:
        """The TaskResult holding ``key`` now, or None."""
        with self._lock:
            entry = self._jobs.get(key)
            return entry[0] if entry is not None and self._live(entry, self._clock()) else None

    def __len__(self) -> int:
        return len(self._jobs)

    @staticmethod
    def _live(entry: tuple[TaskResult, Optional[float]], now: float) -> bool:
        task, until = entry
        return not task.done() or (until is not None and now < until)

    def _prune_locked(self, now: float) -> None:
        for _ in range(PRUNE_PER_CLAIM):
            if not self._jobs:
                return
            key, entry = next(iter(self._jobs.items()))
            if self._live(entry, now):
                return
            del self._jobs[key]
