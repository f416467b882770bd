"""Periodic tasks: cron expressions (cronsim) or fixed intervals, in a time zone.

    engine.schedule(fn, cron="*/5 * * * *", tz="Europe/Riga")      @app.periodic("0 3 * * *")
          │
          ▼
    Scheduler (one thread per engine, "czmp-scheduler")
      loop: tick(clock()) ──► each due Schedule: its due times in (last run, now]
                 │             ──► missed-runs policy picks which to fire
                 │             ──► submit(schedule, due time) = engine.add_task(fn, *args, **kwargs)
                 └─ sleep until the earliest next run (at most MAX_SLEEP_S; a wall-clock
                    jump is noticed then), or until a schedule is added or cancelled

Missed runs. A run is *missed* when it is found due more than
``MISSED_GRACE_S`` after its time (the app was suspended, the machine
slept, the engine was busy or not yet started). The policy, per schedule:

  * ``"once"`` (default): every run due since the last one is fired as
    ONE run (Celery beat's and APScheduler's coalescing).
  * ``"skip"``: runs found late are dropped; only a run on time fires,
    and the schedule continues from the next future time.
  * ``"catch_up"``: each due run is fired, in order (at most MAX_CATCH_UP
    at once; the rest are counted as skipped).

Every schedule's ``skipped`` counts the runs it dropped. Times are wall
clock (time.time) evaluated in the schedule's time zone (default UTC), so
"0 3 * * *" in "Europe/Riga" fires once a day at 03:00 local time across
DST changes (cronsim: a time that does not exist fires at the first minute
after the gap; a time that exists twice fires once).

Scope. A schedule fires in the engine it was added to. Its *key* (its
``name=``, or the function's qualified name plus its spec and arguments:
schedule_key) names it across processes and restarts:

  * ``durable=``: the engine's journal keeps each key's last run
    (ScheduleStore in backends/journal.py); a restarted engine that adds a
    schedule of the same key continues from that run, and the missed-runs
    policy decides what of the runs due while it was down fires.
  * ``server=``: the client forwards the schedule to the ``catzilla-mp
    serve`` process (SharedSchedule, workflows/core.py); N app processes
    registering the same key make ONE schedule there, which fires each run
    once, in the server's engine, while any of them stays registered.
  * otherwise the schedule lives in memory: lost with the process, and two
    processes each running an engine each fire every run.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import itertools
import logging
import threading
import pickle
import time
from typing import Any, Callable, Optional, Protocol, Union

log = logging.getLogger("catzilla_mp")

MISSED_POLICIES = ("once", "skip", "catch_up")
#: A run found due this many seconds after its time is on time (the
#: scheduler thread's wake-up latency on a busy machine); later, it is missed.
MISSED_GRACE_S = 1.0
#: Runs catch_up fires in one tick; more are counted as skipped.
MAX_CATCH_UP = 1000
#: The longest the scheduler thread sleeps without looking at the clock.
MAX_SLEEP_S = 60.0
#: Shortest interval of ``every`` (anything shorter is a busy loop, not a schedule).
MIN_EVERY_S = 0.01

TimeZoneLike = Union[str, _dt.tzinfo, None]


def _zone(tz: TimeZoneLike) -> _dt.tzinfo:
    if tz is None:
        return _dt.timezone.utc
    if isinstance(tz, _dt.tzinfo):
        return tz
    if not isinstance(tz, str):
        raise TypeError(f"tz must be a time zone name or a tzinfo, not {type(tz).__name__}")
    import zoneinfo
    try:
        return zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {tz!r}") from exc


def _cron_class():
    try:
        from cronsim import CronSim
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("cron schedules need cronsim: pip install 'catzilla_mp[cron]'") from exc
    return CronSim


def check_when(fn: Callable, cron: Optional[str], every: Any, tz: TimeZoneLike,
               missed: str) -> tuple[Optional[str], Optional[float], _dt.tzinfo]:
    """A schedule's spec validated: (cron, every in seconds, time zone).

    Raises:
        TypeError, ValueError: not exactly one of cron/every, a bad cron
            expression, interval, time zone or policy.
        ImportError: a cron schedule without cronsim installed.
    """
    if not callable(fn):
        raise TypeError(f"a schedule runs a callable, not {type(fn).__name__}")
    if (cron is None) == (every is None):
        raise ValueError("give exactly one of cron= or every=")
    if missed not in MISSED_POLICIES:
        raise ValueError(f"missed must be one of {MISSED_POLICIES}, not {missed!r}")
    zone = _zone(tz)
    every_s = None
    if every is not None:
        every_s = every.total_seconds() if isinstance(every, _dt.timedelta) else every
        if isinstance(every_s, bool) or not isinstance(every_s, (int, float)):
            raise TypeError(f"every must be a timedelta or seconds, not {type(every).__name__}")
        if not MIN_EVERY_S <= every_s <= 366 * 86400:
            raise ValueError(f"every must be between {MIN_EVERY_S} s and a year, "
                             f"not {every_s} s")
        every_s = float(every_s)
    else:
        if not isinstance(cron, str):
            raise TypeError(f"cron must be a string, not {type(cron).__name__}")
        CronSim = _cron_class()
        try:
            CronSim(cron, _dt.datetime.now(zone))
        except Exception as exc:  # cronsim's CronSimError is not a ValueError
            raise ValueError(f"bad cron expression {cron!r}: {exc}") from None
    return cron, every_s, zone


def schedule_key(fn: Callable, args: tuple, kwargs: dict, *, cron: Optional[str],
                 every_s: Optional[float], tz: _dt.tzinfo, missed: str,
                 name: Optional[str]) -> str:
    """The name of a schedule across processes and restarts.

    ``name`` if given; else the function's module and qualified name, its
    spec and a digest of its arguments, so that every web worker importing
    the same ``@app.periodic`` line makes the same key, and two schedules of
    one function with different specs or arguments make two.

    Raises:
        TypeError: a name that is not a non-empty str.
    """
    if name is not None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"a schedule's name must be a non-empty str, not {name!r}")
        return name
    target = getattr(fn, "__func__", fn)
    qual = (f"{getattr(target, '__module__', None) or '?'}."
            f"{getattr(target, '__qualname__', None) or type(target).__qualname__}")
    when = cron if cron is not None else f"every {every_s:g}s"
    try:
        blob = pickle.dumps((args, sorted(kwargs.items())), protocol=5)
    except Exception:  # noqa: BLE001 - unpicklable arguments: keyed on their reprs
        blob = repr((args, sorted(kwargs.items()))).encode()
    digest = hashlib.sha256(blob).hexdigest()[:12]
    return f"{qual} [{when} {tz} {missed}] {digest}"


class ScheduleStore(Protocol):
    """Where the last run of each schedule key is kept (a durable engine's journal)."""

    def last_run(self, key: str) -> Optional[float]:
        """The due time of the key's last run fired, or None."""

    def save(self, key: str, due: float) -> None:
        """Record a run fired (committed before it returns)."""


class Schedule:
    """One periodic task: what runs, when, and what happened so far (a handle; ``cancel()`` it).

    Attributes:
        name: the task's name (for logs and lists).
        key: the schedule's key (schedule_key): its name across processes and restarts.
        cron / every_s / tz / missed: as given.
        next_run: the next time it fires (epoch seconds), None once cancelled.
        last_run: the time of the last run fired (its due time), or None.
        runs: runs fired. skipped: runs dropped by the missed-runs policy.
        last_result: the TaskResult of the last run (None before the first,
            or if that submission raised; ``last_error`` says why).
    """

    def __init__(self, scheduler: "Scheduler", fn: Callable, args: tuple, kwargs: dict, *,
                 cron: Optional[str], every_s: Optional[float], tz: _dt.tzinfo, missed: str,
                 first: float, name: str, key: str = "") -> None:
        self._scheduler = scheduler
        self.key = key
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.cron, self.every_s, self.tz, self.missed = cron, every_s, tz, missed
        self.name = name
        self.next_run: Optional[float] = first
        self.last_run: Optional[float] = None
        self.runs = 0
        self.skipped = 0
        self.last_result: Any = None
        self.last_error: Optional[BaseException] = None
        self._anchor = first  # `every` counts from here, so runs do not drift

    def next_after(self, t: float) -> float:
        """The first run time strictly after ``t`` (epoch seconds)."""
        if self.every_s is not None:
            k = max(0, int((t - self._anchor) // self.every_s) + 1)
            nxt = self._anchor + k * self.every_s
            return nxt if nxt > t else nxt + self.every_s
        when = _dt.datetime.fromtimestamp(t, self.tz)
        return next(_cron_class()(self.cron, when)).timestamp()

    def cancel(self) -> bool:
        """Stop firing; True if it was active. Runs already submitted go on."""
        return self._scheduler.cancel(self)

    @property
    def active(self) -> bool:
        return self.next_run is not None

    def __repr__(self) -> str:
        when = self.cron if self.cron is not None else f"every {self.every_s:g} s"
        state = "active" if self.active else "cancelled"
        return f"<Schedule {self.name} {when} {state} runs={self.runs}>"


class Scheduler:
    """Fires due schedules through ``submit(schedule, due_time)``.

    Args:
        submit: queues one run (the engine's add_task); its return value is
            kept as ``last_result``, an exception it raises is logged and kept
            as ``last_error`` (a full queue must not stop the schedule).
        clock: wall-clock seconds (tests inject a fake one and call tick()).
        thread: start the scheduler thread on the first add (tests pass False).
        store: keeps each key's last run (durable engines); None: memory only.
    """

    def __init__(self, submit: Callable[[Schedule, float], Any], *,
                 clock: Callable[[], float] = time.time, thread: bool = True,
                 store: Optional[ScheduleStore] = None) -> None:
        self._submit = submit
        self.store = store
        self._clock = clock
        self._use_thread = thread
        self._cond = threading.Condition()
        self._schedules: list[Schedule] = []
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self._names = itertools.count(1)

    def add(self, fn: Callable, args: tuple = (), kwargs: Optional[dict] = None, *,
            cron: Optional[str] = None, every: Union[_dt.timedelta, float, None] = None,
            tz: TimeZoneLike = None, missed: str = "once", name: Optional[str] = None) -> Schedule:
        """A new schedule; its first run is the first time after now.

        With a store that holds the schedule's key (a durable engine added
        the same schedule before a restart), it continues from the stored
        last run instead: runs due since then are missed runs, and its
        policy picks which fire at the next tick.

        Raises:
            TypeError, ValueError: not exactly one of cron/every, a bad cron
                expression, interval, time zone, policy or name.
            ImportError: a cron schedule without cronsim installed.
            RuntimeError: the scheduler is closed.
        """
        cron, every_s, zone = check_when(fn, cron, every, tz, missed)
        args, kwargs = tuple(args), dict(kwargs or {})
        key = schedule_key(fn, args, kwargs, cron=cron, every_s=every_s, tz=zone, missed=missed,
                           name=name)
        now = self._clock()
        last = self._stored_last_run(key)
        label = name or getattr(fn, "__qualname__", None) or f"schedule-{next(self._names)}"
        sched = Schedule(self, fn, args, kwargs, cron=cron, every_s=every_s,
                         tz=zone, missed=missed, first=now if last is None else last,
                         name=label, key=key)
        sched.last_run = last
        sched.next_run = sched.next_after(now if last is None else last)
        with self._cond:
            if self._closed:
                raise RuntimeError("the scheduler is closed (the engine shut down)")
            self._schedules.append(sched)
            if self._use_thread and self._thread is None:
                self._thread = threading.Thread(target=self._run, name="czmp-scheduler",
                                                daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return sched

    @property
    def closed(self) -> bool:
        """True once close() ran: add() raises RuntimeError."""
        return self._closed

    def cancel(self, sched: Schedule) -> bool:
        """Stop ``sched``; True if it was active."""
        with self._cond:
            if sched not in self._schedules:
                return False
            self._schedules.remove(sched)
            sched.next_run = None
            self._cond.notify_all()
        return True

    def schedules(self) -> list[Schedule]:
        """The active schedules."""
        with self._cond:
            return list(self._schedules)

    def tick(self, now: Optional[float] = None) -> list[tuple[Schedule, float]]:
        """Fire what is due at ``now`` (default: the clock); returns the (schedule, due time) fired."""
        if now is None:
            now = self._clock()
        fired: list[tuple[Schedule, float]] = []
        with self._cond:
            due = [s for s in self._schedules if s.next_run is not None and s.next_run <= now]
            plan = [(s, self._plan_locked(s, now)) for s in due]
        for sched, times in plan:
            for t in times:
                self._fire(sched, t)
                fired.append((sched, t))
        return fired

    def _plan_locked(self, sched: Schedule, now: float) -> list[float]:
        """The due times of ``sched`` to fire now, by its policy; advances next_run past now."""
        times: list[float] = []
        dropped = 0
        t = sched.next_run
        assert t is not None
        while t <= now:
            if len(times) < MAX_CATCH_UP:
                times.append(t)
            else:
                dropped += 1
            t = sched.next_after(t)
        sched.next_run = t
        if sched.missed == "catch_up":
            pick = times
        elif sched.missed == "once":
            pick = times[-1:]
        else:  # skip: only a run on time fires
            pick = [x for x in times[-1:] if now - x <= MISSED_GRACE_S]
        sched.skipped += dropped + len(times) - len(pick)
        return pick

    def _stored_last_run(self, key: str) -> Optional[float]:
        if self.store is None:
            return None
        try:
            return self.store.last_run(key)
        except Exception:  # noqa: BLE001 - an unreadable journal: start afresh, say so
            log.exception("schedule %s: its last run could not be read; it starts afresh", key)
            return None

    def _fire(self, sched: Schedule, due: float) -> None:
        sched.runs += 1
        sched.last_run = due
        try:
            sched.last_result = self._submit(sched, due)
            sched.last_error = None
        except ReferenceError:
            raise  # the engine is gone: the thread ends (see _run)
        except Exception as exc:  # noqa: BLE001 - one failed submission must not end the schedule
            sched.last_result = None
            sched.last_error = exc
            log.warning("schedule %s: the run due at %s was not submitted: %r", sched.name,
                        _dt.datetime.fromtimestamp(due, sched.tz).isoformat(), exc)
        if self.store is not None:
            # after the submission: a crash between the two fires this run again
            # at the restart (at-least-once, as the journal's tasks)
            try:
                self.store.save(sched.key, due)
            except Exception:  # noqa: BLE001 - the schedule goes on; a restart may repeat a run
                log.exception("schedule %s: its last run could not be journaled", sched.name)

    def close(self) -> None:
        """Stop the thread and every schedule (the engine is shutting down)."""
        with self._cond:
            self._closed = True
            for s in self._schedules:
                s.next_run = None
            self._schedules.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
            try:
                self.tick()
            except ReferenceError:  # the engine was dropped without shutdown()
                return
            except Exception:  # noqa: BLE001 - the thread must survive one bad schedule
                log.exception("the scheduler's tick failed")
            with self._cond:
                if self._closed:
                    return
                nexts = [s.next_run for s in self._schedules if s.next_run is not None]
                wait = MAX_SLEEP_S if not nexts else min(nexts) - self._clock()
                if wait > 0:
                    self._cond.wait(min(wait, MAX_SLEEP_S))
