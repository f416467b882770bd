"""Rate limits per task name: ``rate_limit="100/s"`` delays the tasks over it, never fails them.

    add_task(fn, rate_limit="10/s") ──► RateLimits.limiter(name, "10/s") ──► WindowLimiter.reserve()
                                                                               │ seconds to wait
    engine: the task is queued with delay_ms += that wait ◄────────────────────┘

A limit of N per period P is a sliding window: every submission reserves
the earliest start time t such that fewer than N reservations lie in
(t - P, t]. The limiter keeps the last N reserved times (a deque), so the
N+1-th task of a burst is reserved exactly P after the first: at most N
tasks of a name are released to the queue in any window of P seconds. A
reserved task that is cancelled keeps its place in the window (the limit
counts submissions released, not runs).

Scope: the engine that applies it. Two processes each running an engine
have a limit each. With one engine per server (``BackgroundTasks(server=)``,
backends/remote.py) the client applies no limit of its own: it forwards the
task's name and limit with the submission, and the ``catzilla-mp serve``
process (server.py) reserves the start with ITS RateLimits, on arrival, in
arrival order, on its clock: one limit shared by every process using it.
"""
from __future__ import annotations

import collections
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

#: Unit names accepted after the slash, in seconds.
UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
         "h": 3600.0, "hour": 3600.0, "d": 86400.0, "day": 86400.0}
#: The largest count per window: the limiter keeps one float per task of a window.
MAX_COUNT = 1_000_000
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d*\.?\d*)\s*([a-z]+?)s?\s*$")


@dataclass(frozen=True)
class RateLimit:
    """``count`` tasks per ``period_s`` seconds."""

    count: int
    period_s: float

    def __str__(self) -> str:
        return f"{self.count}/{self.period_s:g}s"


def parse(spec: "str | RateLimit") -> RateLimit:
    """A RateLimit from "10/s", "100/m", "5/h", "1000/d" or "3/10s" (3 per 10 seconds).

    Raises:
        TypeError: not a string. ValueError: not of that form, or a zero count.
    """
    if isinstance(spec, RateLimit):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"rate_limit must be a string like '100/s', not {type(spec).__name__}")
    m = _SPEC.match(spec.lower())
    unit = m and (UNITS.get(m.group(3)) or UNITS.get(m.group(3) + "s"))
    if m is None or unit is None:
        raise ValueError(f"rate_limit {spec!r} is not of the form 'N/s', 'N/m', 'N/h', 'N/d' "
                         "(or 'N/10s')")
    count = int(m.group(1))
    mult = float(m.group(2)) if m.group(2) else 1.0
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"rate_limit {spec!r}: the count must be 1..{MAX_COUNT:,}")
    if mult <= 0:
        raise ValueError(f"rate_limit {spec!r}: the period must be positive")
    return RateLimit(count, mult * unit)


class WindowLimiter:
    """At most ``limit.count`` reservations in any window of ``limit.period_s`` seconds.

    Args:
        limit: the rate.
        clock: seconds, monotonic (tests inject a fake one).
    """

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._lock = threading.Lock()
        # the last `count` reserved start times, oldest first
        self._times: collections.deque[float] = collections.deque(maxlen=limit.count)

    def reserve(self) -> float:
        """Reserve the next start; returns the seconds to wait for it (0.0: now)."""
        with self._lock:
            now = self._clock()
            times = self._times
            start = now
            if len(times) == self.limit.count:
                start = max(now, times[0] + self.limit.period_s)
            if times and start < times[-1]:
                start = times[-1]  # reservations never go back in time
            times.append(start)
            return start - now


class RateLimits:
    """The limiters of one engine, by task name; the last limit given for a name applies."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._limiters: dict[str, WindowLimiter] = {}

    def limiter(self, name: str, spec: "str | RateLimit | None") -> Optional[WindowLimiter]:
        """The limiter of ``name`` under ``spec`` (None: no limit for this submission).

        Raises:
            TypeError, ValueError: a bad spec (see parse).
        """
        if spec is None:
            return None
        limit = parse(spec)
        with self._lock:
            current = self._limiters.get(name)
            if current is None or current.limit != limit:
                current = self._limiters[name] = WindowLimiter(limit, self._clock)
            return current
