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
from typing import Callable

log = logging.getLogger("catzilla_mp")


class DelayQueue:
    def __init__(self, name: str = "czmp-delays") -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call_at(self, due: float, fn: Callable[[], None]) -> None:
        """Call ``fn()`` in the timer thread at ``due`` (time.monotonic())."""
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._seq), fn))
            if self._heap[0][2] is fn:
                self._cond.notify()

    def __len__(self) -> int:
        return len(self._heap)

    def drain(self) -> list[Callable[[], None]]:
        """Remove and return every pending callable (shutdown)."""
        with self._cond:
            items = [fn for _, _, fn in self._heap]
            self._heap.clear()
            return items

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    if self._heap and self._heap[0][0] <= time.monotonic():
                        break
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception:  # noqa: BLE001 - one bad entry must not stop the timer
                log.exception("delayed call %r failed", fn)
