"""A timer thread for delayed starts and retry back-offs.

One thread sleeps on a condition until the earliest due time; adding an
earlier entry wakes it. With nothing scheduled it sleeps indefinitely, so an
idle engine pays nothing for it.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Callable, Optional

log = logging.getLogger("catzilla_mp")


class Timer:
    """A scheduled call; cancel() drops the callable (and what it holds) at once."""

    __slots__ = ("due", "seq", "fn")

    def __init__(self, due: float, seq: int, fn: Optional[Callable[[], None]]) -> None:
        self.due, self.seq, self.fn = due, seq, fn

    def __lt__(self, other: "Timer") -> bool:
        return (self.due, self.seq) < (other.due, other.seq)


#: Cancelled timers stay in the heap until due or until they outnumber the
#: live ones by this factor (then the heap is rebuilt without them).
COMPACT_FACTOR = 2


class DelayQueue:
    def __init__(self, name: str = "czmp-delays",
                 on_death: Optional[Callable[[str, BaseException], None]] = None) -> None:
        self._heap: list[Timer] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._cancelled = 0
        self._on_death = on_death
        self._thread = threading.Thread(target=self._guarded_run, name=name, daemon=True)
        self._thread.start()

    def call_at(self, due: float, fn: Callable[[], None]) -> Timer:
        """Call ``fn()`` in the timer thread at ``due`` (time.monotonic()); returns its Timer."""
        timer = Timer(due, next(self._seq), fn)
        with self._cond:
            heapq.heappush(self._heap, timer)
            if self._heap[0] is timer:
                self._cond.notify()
        return timer

    def cancel(self, timer: Timer) -> None:
        """Drop a timer: its callable is released now, not when it would have been due.

        Without this a thread-mode task kept its 30 s timeout timer (holding
        the task and its result) long after it ended (issue 20.10).
        """
        with self._cond:
            if timer.fn is None:
                return
            timer.fn = None
            self._cancelled += 1
            if self._cancelled > COMPACT_FACTOR * (len(self._heap) - self._cancelled) + 64:
                self._heap = [t for t in self._heap if t.fn is not None]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def __len__(self) -> int:
        return len(self._heap) - self._cancelled

    def drain(self) -> list[Callable[[], None]]:
        """Remove and return every pending callable (shutdown)."""
        with self._cond:
            items = [t.fn for t in self._heap if t.fn is not None]
            for t in self._heap:
                t.fn = None
            self._heap.clear()
            self._cancelled = 0
            return items

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _guarded_run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported: the engine is broken
            if self._on_death is not None:
                self._on_death(self._thread.name, exc)
            raise

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    if self._heap and self._heap[0].due <= time.monotonic():
                        break
                    timeout = self._heap[0].due - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                timer = heapq.heappop(self._heap)
                fn, timer.fn = timer.fn, None
                if fn is None:
                    self._cancelled -= 1
                    continue
            try:
                fn()
            except BaseException:  # noqa: BLE001 - one bad entry must not stop the timer
                log.exception("delayed call %r failed", fn)
            del fn
