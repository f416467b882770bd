"""Where user callbacks run: a small pool of daemon threads of the app.

The engine's own threads (collector, supervisor, delay timer, thread-mode
executors) settle tasks; before this pool they also ran the callbacks of
``TaskResult.add_callback`` and ``Future.add_done_callback``. A callback
that waited on another task then blocked the only thread that could deliver
that task (issue 20.5), and a ``sys.exit()`` in one killed the thread
(issue 20.6). Now a finishing task hands its callbacks here:

  * callbacks of one task run in the order they were added, on one thread;
  * a thread is started when every running one is busy (a callback that
    blocks does not hold up the others), up to ``MAX_THREADS``; threads end
    after ``IDLE_S`` without work, so an idle engine keeps none;
  * anything a callback raises, ``BaseException`` included, is logged;
  * after ``stop()`` (engine shutdown) callbacks run on the thread that
    settles the task, as there is no pool left to run them.
"""
from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Callable

log = logging.getLogger("catzilla_mp")

#: Threads at most: more callbacks blocked at once than this wait for a free one.
MAX_THREADS = 8
#: Seconds a thread waits for work before it ends.
IDLE_S = 5.0


class CallbackRunner:
    """Runs ``fn(*args)`` jobs on daemon threads; never runs them on the submitting thread."""

    def __init__(self, name: str = "czmp-callbacks") -> None:
        self._name = name
        self._jobs: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._threads: set[threading.Thread] = set()
        self._idle = 0
        self._stopped = False
        self._seq = 0

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` soon on a pool thread (at once, here, after stop())."""
        with self._cond:
            if not self._stopped:
                self._jobs.append((fn, args))
                if self._idle > len(self._jobs) - 1:
                    self._cond.notify()
                elif len(self._threads) < MAX_THREADS:
                    self._start_locked()
                return
        run_guarded(fn, *args)

    def in_pool(self) -> bool:
        """True on one of this runner's threads."""
        return threading.current_thread() in self._threads

    def stop(self, timeout: float) -> None:
        """Run what is queued, then end the threads; waits up to ``timeout`` s for them.

        Called from a callback (a callback that shuts the engine down), it
        does not wait for its own thread.
        """
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
            threads = [t for t in self._threads if t is not threading.current_thread()]
        for t in threads:
            t.join(timeout)

    def _start_locked(self) -> None:
        self._seq += 1
        t = threading.Thread(target=self._run, name=f"{self._name}-{self._seq}", daemon=True)
        self._threads.add(t)
        t.start()

    def _run(self) -> None:
        me = threading.current_thread()
        try:
            while True:
                with self._cond:
                    self._idle += 1
                    try:
                        while not self._jobs and not self._stopped:
                            if not self._cond.wait(IDLE_S) and not self._jobs:
                                return
                    finally:
                        self._idle -= 1
                    if not self._jobs:
                        return  # stopped and nothing left
                    fn, args = self._jobs.popleft()
                run_guarded(fn, *args)
                # an idle thread must not keep the last job's task (and its
                # result) alive: the caller may have dropped it (issue 11.13)
                fn = args = None
        finally:
            with self._cond:
                self._threads.discard(me)
                if self._jobs and not self._threads:
                    self._start_locked()  # a job queued as we were leaving


def run_guarded(fn: Callable[..., Any], *args: Any) -> None:
    """``fn(*args)``; whatever it raises (``SystemExit`` too) is logged, never propagated."""
    try:
        fn(*args)
    except BaseException:  # noqa: BLE001 - user code must not end an engine thread
        log.exception("task callback %r raised", fn)
