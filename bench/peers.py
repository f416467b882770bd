"""One adapter per task engine the benchmark compares, behind one small interface.

Every workload in ``bench.workloads`` talks to an engine only through :class:`Peer`:

    start()                               create the pool / engine with ``workers`` workers
    submit(fn, *args, priority, on_done)  one task; ``on_done()`` runs (any thread) when it ends
    wait(handle, timeout)                 its value, or raise (TimeoutError after ``timeout``)
    submit_batch(fn, arg_tuples)          the library's own "many tasks in one call" (chunksize 1)
    wait_batch(handle, timeout)           list of values
    shutdown()

Peers are the libraries a Python web app would otherwise use. Each keeps its defaults
(start method, queues) except the worker count, so a figure is what a user gets out of the
box. A peer whose module is not installed is skipped with a note (``Peer.missing()``).
Priorities are honoured only by engines that have them (catzilla_mp, Catzilla); the others
run every task FIFO, which is exactly what the mixed workload is meant to show.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Iterable, Optional

PRIORITIES = ("critical", "high", "normal", "low")

#: Queue bound for Catzilla, whose full queue drops tasks: large enough that no workload here
#: fills it (ProcessPoolExecutor's queue is unbounded; catzilla_mp's waits when full).
QUEUE_SIZE = 262_144


class Peer:
    """An engine under test. Subclasses set ``name``/``label``/``module`` and the methods."""

    name = ""          #: key in results files and on the command line
    label = ""         #: what tables and charts print
    module = ""        #: importable module that must exist for the peer to run
    distribution = ""  #: PyPI name, for the version recorded in the results
    priorities = False  #: True when the engine really orders tasks by priority
    note = ""          #: one line on how this peer is driven, printed under the table

    def __init__(self, workers: int = 2) -> None:
        self.workers = workers

    @classmethod
    def missing(cls) -> Optional[str]:
        """None if the peer can run here, else why not."""
        try:
            importlib.import_module(cls.module)
        except Exception as exc:  # ImportError, or a broken install
            return f"{cls.module} not importable ({type(exc).__name__}: {exc})"
        return None

    @classmethod
    def version(cls) -> str:
        if not cls.distribution:
            import platform
            return "python " + platform.python_version()
        from importlib import metadata
        try:
            return metadata.version(cls.distribution)
        except metadata.PackageNotFoundError:
            return "?"

    def start(self) -> None:
        raise NotImplementedError

    def submit(self, fn: Callable, *args: Any, priority: str = "normal",
               on_done: Optional[Callable[[], None]] = None) -> Any:
        raise NotImplementedError

    def wait(self, handle: Any, timeout: float) -> Any:
        raise NotImplementedError

    def submit_batch(self, fn: Callable, arg_tuples: list) -> Any:
        raise NotImplementedError

    def wait_batch(self, handle: Any, timeout: float) -> list:
        raise NotImplementedError

    def shutdown(self) -> None:
        raise NotImplementedError


class _FuturePeer(Peer):
    """Engines whose submit returns a ``concurrent.futures.Future``."""

    def wait(self, handle, timeout):
        return handle.result(timeout=timeout)

    @staticmethod
    def _hook(fut, on_done):
        if on_done is not None:
            fut.add_done_callback(lambda _f: on_done())
        return fut


class CatzillaMP(_FuturePeer):
    name, label, module, distribution = "catzilla_mp", "catzilla_mp", "catzilla_mp", "catzilla-mp"
    priorities = True
    note = "BackgroundTasks(mode='process'); batch = add_tasks(); waits through TaskResult.wait()"

    @classmethod
    def missing(cls):
        why = super().missing()
        if why is None:
            import catzilla_mp
            if not hasattr(catzilla_mp, "BackgroundTasks"):
                return "catzilla_mp has no BackgroundTasks yet (engine not built)"
        return why

    def start(self):
        from catzilla_mp import BackgroundTasks
        # Fixed size: auto-scaling would make the worker count, not the engine, the variable.
        # queue_size holds the largest burst here (20,000 no-ops), as ProcessPoolExecutor's
        # unbounded queue does: a full table makes add_task wait for the workers, and the
        # submission rate would measure their drain rate. (It costs ~12 MiB more shared
        # memory than the default 10,000, pre-faulted at start: ~0.1 s.)
        self.engine = BackgroundTasks(workers=self.workers, min_workers=self.workers,
                                      max_workers=self.workers, enable_auto_scaling=False,
                                      queue_size=32_768, mode="process")

    def submit(self, fn, *args, priority="normal", on_done=None):
        r = self.engine.add_task(fn, *args, priority=priority)
        if on_done is not None:
            r.future.add_done_callback(lambda _f: on_done())
        return r

    def wait(self, handle, timeout):
        return handle.wait(timeout=timeout)

    def submit_batch(self, fn, arg_tuples):
        return self.engine.add_tasks(fn, arg_tuples)

    def wait_batch(self, handle, timeout):
        import time
        end = time.perf_counter() + timeout
        return [r.wait(timeout=max(0.0, end - time.perf_counter())) for r in handle]

    def shutdown(self):
        self.engine.shutdown(wait_for_completion=True, timeout=30.0)


class ProcessPool(_FuturePeer):
    name, label, module = "ppe", "ProcessPoolExecutor", "concurrent.futures"
    note = "concurrent.futures.ProcessPoolExecutor (default start method); batch = map(chunksize=1)"

    def start(self):
        from concurrent.futures import ProcessPoolExecutor
        self.pool = ProcessPoolExecutor(max_workers=self.workers)

    def submit(self, fn, *args, priority="normal", on_done=None):
        return self._hook(self.pool.submit(fn, *args), on_done)

    def submit_batch(self, fn, arg_tuples):
        # Executor.map submits every item before returning; its timeout counts from here.
        return self.pool.map(fn, *zip(*arg_tuples), timeout=600)

    def wait_batch(self, handle, timeout):
        return list(handle)

    def shutdown(self):
        self.pool.shutdown(wait=True)


class MultiprocessingPool(Peer):
    name, label, module = "mp_pool", "multiprocessing.Pool", "multiprocessing.pool"
    note = ("multiprocessing.Pool (default start method); apply_async; batch = "
            "starmap_async(chunksize=1), which returns before its task-handler thread has "
            "queued the tasks, so its batch submission rate is the call's, not the queueing's")

    def start(self):
        import multiprocessing
        self.pool = multiprocessing.Pool(self.workers)

    def submit(self, fn, *args, priority="normal", on_done=None):
        if on_done is None:
            return self.pool.apply_async(fn, args)
        return self.pool.apply_async(fn, args, callback=lambda _v: on_done(),
                                     error_callback=lambda _e: on_done())

    def wait(self, handle, timeout):
        return handle.get(timeout)

    def submit_batch(self, fn, arg_tuples):
        return self.pool.starmap_async(fn, arg_tuples, chunksize=1)

    def wait_batch(self, handle, timeout):
        return handle.get(timeout)

    def shutdown(self):
        self.pool.close()
        self.pool.join()


class Loky(ProcessPool):
    name, label, module, distribution = "loky", "loky", "loky", "loky"
    note = "loky.ProcessPoolExecutor (its own spawn-style start); batch = map(chunksize=1)"

    def start(self):
        import loky
        self.pool = loky.ProcessPoolExecutor(max_workers=self.workers)


class Pebble(_FuturePeer):
    name, label, module, distribution = "pebble", "pebble", "pebble", "pebble"
    note = "pebble.ProcessPool (default start method); schedule(); batch = map(chunksize=1)"

    def start(self):
        import pebble
        self.pool = pebble.ProcessPool(max_workers=self.workers)

    def submit(self, fn, *args, priority="normal", on_done=None):
        return self._hook(self.pool.schedule(fn, args=args), on_done)

    def submit_batch(self, fn, arg_tuples):
        return self.pool.map(fn, *zip(*arg_tuples), chunksize=1)

    def wait_batch(self, handle, timeout):
        return list(handle.result(timeout=timeout))

    def shutdown(self):
        self.pool.close()
        self.pool.join(timeout=30)


class Catzilla(_FuturePeer):
    """The Catzilla framework's own background tasks (PyPI catzilla 0.2.3): threads in the app.

    Two of its bugs shape this adapter, and the figures should be read with them in mind:
    ``TaskResult.wait()`` never returns (it polls ``_completed``, which nothing ever sets),
    and a full priority queue drops the task silently (the error goes into a future that
    ``TaskResult`` never exposes). So we reach past the public API to ``result._result``,
    the ``concurrent.futures.Future`` its worker threads complete, and treat a missing one
    as the drop it is. Its queues are sized so nothing drops here. It has no batch call,
    so a batch is a loop of ``add_task``. Its workers are threads sleeping 1 ms between
    polls, under the app's GIL.
    """

    name, label, module, distribution = "catzilla", "Catzilla 0.2.3 (threads)", \
        "catzilla.background_tasks", "catzilla"
    priorities = True
    note = ("catzilla.background_tasks.BackgroundTasks (threads); results read from "
            "TaskResult._result because its wait() never returns; batch = add_task loop")

    def start(self):
        from catzilla.background_tasks import BackgroundTasks, TaskPriority
        self._prio = {p: TaskPriority[p.upper()] for p in PRIORITIES}
        # Its per-priority queues hold queue_size//4 (NORMAL //2) tasks; size it so none drops.
        self.engine = BackgroundTasks(workers=self.workers, min_workers=self.workers,
                                      max_workers=self.workers, enable_auto_scaling=False,
                                      queue_size=4 * QUEUE_SIZE)

    def submit(self, fn, *args, priority="normal", on_done=None):
        # Its PriorityQueue orders (timestamp_us, fn, args, kwargs, future) tuples: two tasks
        # submitted in the same microsecond compare args and then kwargs dicts (TypeError).
        # Workloads pass a distinct task index as the first argument, which settles the order.
        r = self.engine.add_task(fn, *args, priority=self._prio[priority])
        fut = r._result
        if fut is None:
            raise RuntimeError("Catzilla dropped the task: its priority queue was full")
        return self._hook(fut, on_done)

    def submit_batch(self, fn, arg_tuples):
        return [self.submit(fn, *a) for a in arg_tuples]

    def wait_batch(self, handle, timeout):
        import time
        end = time.perf_counter() + timeout
        return [f.result(timeout=max(0.0, end - time.perf_counter())) for f in handle]

    def shutdown(self):
        self.engine.shutdown(wait_for_completion=True, timeout=30.0)


#: Every peer, catzilla_mp first: the order of columns and of the A B A B interleaving.
ALL: tuple = (CatzillaMP, ProcessPool, MultiprocessingPool, Loky, Pebble, Catzilla)
BY_NAME = {p.name: p for p in ALL}


def select(names: Optional[Iterable[str]] = None) -> list:
    """Peer classes named (all by default), in ``ALL`` order; unknown names raise ValueError."""
    if not names:
        return list(ALL)
    names = list(names)
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise ValueError(f"unknown peer(s) {unknown}; choose from {sorted(BY_NAME)}")
    return [p for p in ALL if p.name in names]
