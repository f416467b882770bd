"""The supervisor: one app-side thread that owns the worker processes.

Every tick it
  * reaps workers that exited (any cause) and hands their slots back: DONE
    ones are collected, RUNNING ones retried or failed (backend.py);
  * starts workers until the target count is reached (replacements too);
  * enforces timeouts from each worker record's ``deadline_ns``: SIGUSR1 at
    the deadline (the worker raises TaskTimeoutError inside the task), SIGKILL
    after ``timeout_grace_ms`` if the task is still running;
  * scales between min_workers and max_workers on queue pressure and idleness;
  * recycles workers over ``worker_memory_limit_mb`` (psutil RSS);
  * repairs ring cells that a dead process left mid-operation.

All workers are started from this thread, and only from it: a worker asks
the kernel for SIGKILL when the thread that forked it ends (PR_SET_PDEATHSIG
follows the thread, not the process), so this thread must live exactly as
long as the engine. With start_method="forkserver" (the default) the workers
are forked from a zygote (zygote.py): the one the engine forked from the app
in its constructor, or else one this thread spawns (and so the zygote dies
with this thread); the workers die with the zygote.

Between passes the thread sleeps in poll() on every worker's exit (a pidfd,
or the zygote's socket, which carries its workers' exit codes) and on a wake
pipe that stop() writes: a crash is handled, and its replacement started, as
soon as it happens, and shutdown does not wait for a tick (issue 18).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from ... import _core
from ..._native import lib
from .zygote import ZYGOTE_FAILURES_FALLBACK, Zygote, ZygoteError, wait_readable

if TYPE_CHECKING:
    import psutil

    from ...lifecycle.host import TaskHost

log = logging.getLogger("catzilla_mp")

#: Seconds between supervisor passes: bounds how late a timeout, a crash or
#: a scaling need is noticed; each pass costs a few syscalls per worker.
TICK_S = 0.1
#: Seconds between ring repairs and memory checks (each scans a little).
SLOW_TICK_S = 1.0
#: Queued tasks per live worker above which the pool grows by one.
SCALE_UP_PRESSURE = 2
#: Seconds a stopping worker gets to exit before SIGKILL at shutdown.
STOP_GRACE_S = 2.0
#: A worker that exits before it serves (it cannot attach, its interpreter
#: fails) is replaced after a back-off doubling from START_BACKOFF_S up to
#: START_BACKOFF_CAP_S; after START_FAILURES_BROKEN such exits in a row with
#: no worker serving, the engine is broken (EngineBrokenError, issue 11.4).
START_BACKOFF_S = 0.1
START_BACKOFF_CAP_S = 5.0
START_FAILURES_BROKEN = 6
#: How long a hard-timeout kill waits for the worker to stop (SIGSTOP) before
#: it re-checks which task the worker runs.
STOP_CHECK_S = 1.0


@dataclass
class WorkerProcess:
    index: int
    popen: subprocess.Popen
    started: float
    last_active: float
    seen_tasks: int = 0
    soft_sent_for: int = 0          # deadline_ns we sent SIGUSR1 for
    killed_for_timeout: bool = False
    stopping: bool = False          # asked to exit (scale-down, recycling)
    cancels: dict = field(default_factory=dict)  # slot -> TaskResult killed for cancel(force=True)
    ps: Optional[psutil.Process] = field(default=None, repr=False)
    pidfd: int = -1                 # a spawned worker's pidfd (readable once it exits)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def waitable(self) -> int:
        """A file descriptor that becomes readable when this worker exits (-1: none)."""
        return self.pidfd if self.pidfd >= 0 else getattr(self.popen, "fileno", lambda: -1)()


class Supervisor:
    """Owns the worker processes of one ProcessBackend.

    ``backend`` is the ProcessBackend that made it (the layer above, within
    this package): the supervisor calls its crash and exit handlers
    (on_done, on_crash, on_stopped_running, free_dead_worker_externals) and
    reaches the lifecycle only through ``backend.host`` (a TaskHost).
    """

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.host: "TaskHost" = backend.host
        self.seg = backend.seg
        o = self.host.options
        self.options = o
        self.target = o.workers
        self.procs: dict[int, WorkerProcess] = {}
        self.free_indices = list(range(o.max_workers - 1, -1, -1))
        self.cookies = _core.new_repair_cookies()
        self.spawned = 0
        self.crashes = 0
        self._stop = threading.Event()
        self._closing = False
        self._last_slow = 0.0
        self._lock = threading.Lock()
        self._env = _worker_env()
        self.start_failures = 0        # workers in a row that exited before serving
        self._next_spawn = 0.0         # monotonic time before which no worker is started
        # stop() writes a byte here to end the sleep between passes at once
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # the zygote the engine forked from the app before it started threads,
        # if it could (engine._fork_zygote); else one is spawned when needed
        self.zygote: Optional[Zygote] = getattr(self.host, "worker_zygote", None)
        if self.zygote is not None:
            self.host.worker_zygote = None  # ours now: stopped with the workers
        self.use_zygote = o.start_method == "forkserver"
        self.zygote_failures = 0       # zygotes in a row that failed to fork a worker
        self._thread = threading.Thread(target=self._guarded_run, name="czmp-supervisor",
                                        daemon=True)
        self._thread.start()

    # -- main loop ------------------------------------------------------------

    def _guarded_run(self) -> None:
        # inside the mapping gate for its whole life: close() unmaps after it
        if not self.backend.gate.enter():
            return
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - the engine is broken: waiters must know
            self.host.thread_died(self._thread.name, exc)
            raise
        finally:
            self.backend.gate.exit()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except BaseException:  # noqa: BLE001 - the supervisor must outlive any one bug (sys.exit in a listener too)
                log.exception("supervisor pass failed")
            self._sleep(TICK_S)
        try:
            self._shutdown_workers()
        finally:
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _sleep(self, timeout: float) -> None:
        """Until a worker exits, stop() is called, or ``timeout`` seconds pass."""
        fds = {self._wake_r}
        for w in list(self.procs.values()):
            fd = w.waitable()
            if fd >= 0:
                fds.add(fd)
        if self.zygote is not None and self.zygote.alive:
            fds.add(self.zygote.fileno())
        ready = wait_readable(fds, timeout)
        if self._wake_r in ready:
            try:
                os.read(self._wake_r, 512)
            except BlockingIOError:
                pass

    def _tick(self) -> None:
        if self.zygote is not None:
            self.zygote.drain()  # exit reports; also notices a dead zygote
        self._reap()
        now = time.monotonic()
        self._enforce_timeouts()
        if self.options.enable_auto_scaling:
            self._scale(now)
        if now - self._last_slow >= SLOW_TICK_S:
            self._last_slow = now
            lib.czmp_rings_repair(self.seg.raw, self.cookies)
            self._recycle_by_memory()
        if time.monotonic() >= self._next_spawn:
            wanted = min(self.target - len(self._live()), len(self.free_indices))
            if wanted > 0:
                self._spawn(wanted)

    def _live(self) -> list[WorkerProcess]:
        return [w for w in self.procs.values() if not w.stopping]

    # -- spawning and reaping -------------------------------------------------------

    def _spawn(self, count: int = 1) -> None:
        """Start ``count`` workers: all asked of the zygote at once, else spawned."""
        cfgs = [self._worker_cfg(self.free_indices.pop()) for _ in range(count)]
        popens = self._fork(cfgs) if self.use_zygote else [None] * count
        for cfg, popen in zip(cfgs, popens):
            self._start(cfg, popen)

    def _worker_cfg(self, index: int) -> dict:
        """Reset worker record ``index`` for a new incarnation; the new worker's config."""
        rec = self.seg.worker(index)
        rec.pid = 0
        rec.state = lib.CZMP_WORKER_STARTING
        rec.incarnation += 1
        rec.tasks_done = rec.tasks_failed = rec.busy_ns = 0
        rec.current_slot = 0
        rec.deadline_ns = 0
        rec.progress = -1.0
        o = self.options
        cfg = {
            "segment": self.seg.name, "index": index, "parent": os.getpid(),
            "threads": o.threads_per_worker, "max_payload_bytes": o.max_payload_bytes,
            "default_timeout_ms": 30000, "max_tasks": o.max_tasks_per_worker,
            "niceness": o.worker_niceness, "max_external_bytes": o.max_external_bytes,
            **self.host.worker_extras,  # compat: logs, initializer (the engine's worker setup)
        }
        return cfg

    def _start(self, cfg: dict, popen: Optional[Any]) -> None:
        """Register a forked worker, or spawn one (``popen`` None)."""
        index = cfg["index"]
        pidfd = -1
        if popen is None:
            popen = subprocess.Popen(
                [sys.executable, "-m", "catzilla_mp.workers", json.dumps(cfg)],
                env=self._env, stdin=subprocess.DEVNULL, close_fds=True,
                # each worker leads a process group of its own, so that killing it
                # kills what its tasks started too (issue 11.7; see _signal)
                process_group=0)
            try:
                pidfd = os.pidfd_open(popen.pid)
            except OSError:
                pidfd = -1  # (Linux < 5.3) noticed on the next tick instead
        now = time.monotonic()
        with self._lock:
            self.procs[index] = WorkerProcess(index, popen, now, now, pidfd=pidfd)
        self.spawned += 1
        log.info("worker %d started (pid %d)", index, popen.pid,
                 extra={"event": "worker_started", "worker": index, "pid": popen.pid})

    def _fork(self, cfgs: list[dict]) -> list[Optional[Any]]:
        """Workers forked by the zygote (started here if need be); None entries: spawn those."""
        forked: list[Optional[Any]] = []
        try:
            if self.zygote is None or not self.zygote.alive:
                if self.zygote is not None:
                    self.zygote.stop(0)  # reap the dead one
                self.zygote = Zygote(self._env)
                self.zygote.start()
            forked = self.zygote.fork_many(cfgs)
        except (ZygoteError, OSError) as exc:
            self.zygote_failures += 1
            if self.zygote is not None:
                self.zygote.kill()
            fallback = self.zygote_failures >= ZYGOTE_FAILURES_FALLBACK
            log.warning("worker zygote failed (%s)%s", exc,
                        "; starting workers as fresh interpreters from now on" if fallback
                        else "; starting this worker as a fresh interpreter",
                        extra={"event": "zygote_failed", "failures": self.zygote_failures})
            if fallback:
                self.use_zygote = False
            return [None] * len(cfgs)
        self.zygote_failures = 0
        return forked

    def _reap(self) -> None:
        for w in list(self.procs.values()):
            code = w.popen.poll()
            if code is not None:
                self._on_exit(w, code)

    def _on_exit(self, w: WorkerProcess, code: int) -> None:
        if w.pidfd >= 0:
            os.close(w.pidfd)
            w.pidfd = -1
        if code != 0:
            _kill_group(w)  # what its tasks started must not outlive it
            self.backend.free_dead_worker_externals(w.index)  # the reap forgets them
        served = self.seg.worker(w.index).pid == w.pid
        running, done = self.seg.reap(w.index, self.cookies)
        with self._lock:
            del self.procs[w.index]
        self.free_indices.append(w.index)
        if self._closing and not running:
            log.info("worker %d (pid %d) stopped", w.index, w.pid,
                     extra={"event": "worker_stopped", "worker": w.index, "pid": w.pid,
                            "exit_code": code})
        elif code != 0 or running:
            self.crashes += 1
            log.warning("worker %d (pid %d) %s with %d task(s) running", w.index, w.pid,
                        _describe(code), len(running),
                        extra={"event": "worker_crashed", "worker": w.index, "pid": w.pid,
                               "exit_code": code, "tasks_running": len(running)})
        else:
            log.info("worker %d (pid %d) exited", w.index, w.pid,
                     extra={"event": "worker_exited", "worker": w.index, "pid": w.pid,
                            "exit_code": code})
        if not self._closing and not w.stopping:
            self._count_start(w, code, served)
        for idx in done:
            self.backend.on_done(idx)
        if self._closing:
            for idx in running:  # the engine abandons them: as started, not as never run
                self.backend.on_stopped_running(idx)
            return
        for idx in running:
            self.backend.on_crash(idx, code, w.pid, w.killed_for_timeout,
                                  cancelled=w.cancels.get(idx), killed_by_app=bool(w.cancels))

    def _count_start(self, w: WorkerProcess, code: int, served: bool) -> None:
        """Back off from workers that cannot start; declare the engine broken if none can."""
        if served or code == 0:
            self.start_failures = 0
            self._next_spawn = 0.0
            return
        self.start_failures += 1
        delay = min(START_BACKOFF_CAP_S, START_BACKOFF_S * 2 ** (self.start_failures - 1))
        self._next_spawn = time.monotonic() + delay
        log.warning("worker %d (pid %d) %s before it served (%d in a row); next start in %.1f s",
                    w.index, w.pid, _describe(code), self.start_failures, delay,
                    extra={"event": "worker_start_failed", "worker": w.index, "pid": w.pid,
                           "exit_code": code})
        if self.start_failures == START_FAILURES_BROKEN:
            from ...errors import WorkerCrashedError

            cause = WorkerCrashedError(
                f"{self.start_failures} worker processes in a row {_describe(code)} before "
                f"serving (segment {self.seg.name}); see the app's stderr for their error", code)
            self.host.thread_died("worker start", cause)

    # -- cancelling a running task ------------------------------------------------

    def kill_for_cancel(self, index: int, idx: int, task: object, state: int) -> bool:
        """SIGKILL worker ``index`` so that ``task`` (in slot ``idx``) stops; False if it is gone.

        ``state`` is the slot's state word the caller saw (RUNNING, owned by
        ``index``): it is checked again under the lock that guards the
        process table, so a worker that replaced the owner at the same index
        is never the one killed (issue 20.4). The reap then fails ``task`` as
        cancelled; anything else the worker was running is re-queued without
        using an attempt (it did nothing wrong).
        """
        with self._lock:
            w = self.procs.get(index)
            if w is None or lib.czmp_slot_state(self.seg.raw, idx) != state:
                return False
            if self.seg.worker(index).pid != w.pid:
                return False  # not serving yet: it cannot be running the task
            w.cancels[idx] = task
        log.info("worker %d (pid %d): killing it to cancel the task it runs", index, w.pid,
                 extra={"event": "worker_killed_for_cancel", "worker": index, "pid": w.pid})
        _signal(w, signal.SIGKILL)
        return True

    # -- timeouts ----------------------------------------------------------------

    def _enforce_timeouts(self) -> None:
        now = lib.czmp_now_ns()
        grace = self.options.timeout_grace_ms * 1_000_000
        for w in list(self.procs.values()):
            deadline = self.seg.worker(w.index).deadline_ns
            if not deadline or now < deadline:
                continue
            if w.soft_sent_for != deadline:
                w.soft_sent_for = deadline
                log.info("worker %d (pid %d): a task is past its timeout; interrupting it",
                         w.index, w.pid, extra={"event": "task_timeout_signalled",
                                                "worker": w.index, "pid": w.pid})
                _signal(w, signal.SIGUSR1)
            elif now >= deadline + grace and not w.killed_for_timeout:
                self._kill_for_timeout(w, deadline)

    def _kill_for_timeout(self, w: WorkerProcess, deadline: int) -> None:
        """SIGKILL a worker whose task ignored its soft timeout -- if it still runs that task.

        Reading the deadline and killing are two steps: the task may finish
        in between and the worker start its next one, which the kill would
        then cut short and the reap re-run -- executed twice with
        max_retries=0 (issue 20.4). So the worker is stopped first (SIGSTOP),
        and killed only if its record still shows the same deadline;
        otherwise it continues.
        """
        rec = self.seg.worker(w.index)
        _signal(w, signal.SIGSTOP)
        _wait_stopped(w.pid, STOP_CHECK_S)
        if rec.deadline_ns != deadline:
            _signal(w, signal.SIGCONT)
            return
        w.killed_for_timeout = True
        log.warning("worker %d (pid %d): task past its timeout ignored the "
                    "TaskTimeoutError; killing the worker", w.index, w.pid,
                    extra={"event": "worker_killed_for_timeout", "worker": w.index,
                           "pid": w.pid})
        _signal(w, signal.SIGKILL)

    # -- scaling and recycling ----------------------------------------------------------

    def _scale(self, now: float) -> None:
        o = self.options
        live = self._live()
        queued = sum(self.seg.queue_depths())
        if queued > SCALE_UP_PRESSURE * max(1, len(live)) and self.target < o.max_workers:
            self.target += 1
            log.info("scaling up to %d workers (%d tasks queued)", self.target, queued,
                     extra={"event": "scale_up", "workers": self.target, "queued": queued})
            return
        for w in live:
            rec = self.seg.worker(w.index)
            seen = rec.tasks_done + rec.tasks_failed
            if seen != w.seen_tasks or rec.current_slot:
                w.seen_tasks, w.last_active = seen, now
        if self.target <= o.min_workers or queued:
            return
        idle = [w for w in live if now - w.last_active >= o.scale_down_idle_s]
        if idle:
            self.target -= 1
            victim = max(idle, key=lambda w: w.index)
            victim.stopping = True
            log.info("scaling down to %d workers (worker %d idle)", self.target, victim.index,
                     extra={"event": "scale_down", "workers": self.target, "worker": victim.index,
                            "pid": victim.pid})
            _signal(victim, signal.SIGTERM)

    def _recycle_by_memory(self) -> None:
        limit = self.options.worker_memory_limit_mb << 20
        if not limit:
            return
        import psutil  # here, not at the top: only a memory limit needs it (start-up)
        for w in self._live():
            try:
                if w.ps is None:
                    w.ps = psutil.Process(w.pid)
                rss = w.ps.memory_info().rss
            except psutil.Error:
                continue
            if rss > limit:
                w.stopping = True
                log.info("recycling worker %d (pid %d): RSS %d MiB over the %d MiB limit",
                         w.index, w.pid, rss >> 20, limit >> 20,
                         extra={"event": "worker_recycled", "worker": w.index, "pid": w.pid,
                                "rss_bytes": rss})
                _signal(w, signal.SIGTERM)

    # -- observation ------------------------------------------------------

    def snapshot(self) -> list[tuple[WorkerProcess, object]]:
        """(process, record) for every worker process alive now."""
        with self._lock:
            procs = list(self.procs.values())
        return [(w, self.seg.worker(w.index)) for w in procs]

    # -- shutdown --------------------------------------------------------------

    def stop(self) -> None:
        """Stop every worker (the segment's shutdown flag is already set) and end the thread."""
        self._closing = True
        self._stop.set()
        try:
            os.write(self._wake_w, b"x")  # end its sleep now, not at the next tick
        except OSError:
            pass  # the pipe is full (it is awake anyway) or closed (it has ended)
        self._thread.join(timeout=STOP_GRACE_S + 10)

    def _shutdown_workers(self) -> None:
        """SIGTERM every worker, wait for their exits (no polling), SIGKILL stragglers."""
        for w in list(self.procs.values()):
            _signal(w, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while True:
            if self.zygote is not None:
                self.zygote.drain()
            self._reap()
            left = deadline - time.monotonic()
            if not self.procs or left <= 0:
                break
            self._sleep(min(left, TICK_S))
        for w in list(self.procs.values()):
            _signal(w, signal.SIGKILL)
            w.popen.wait()
        self._reap()
        if self.zygote is not None:
            self.zygote.stop(STOP_GRACE_S)


def _wait_stopped(pid: int, timeout: float) -> bool:
    """Wait until every thread of ``pid`` is stopped (state T in /proc); False on timeout or exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            states = set()
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                    stat = f.read()
                end = stat.rfind(b")")
                states.add(stat[end + 2:end + 3])
        except OSError:
            return False
        if states & {b"Z", b"X"}:
            return False
        if states <= {b"T", b"t"}:
            return True
        time.sleep(0.0005)
    return False


def _signal(w: WorkerProcess, sig: int) -> None:
    if sig == signal.SIGKILL:
        _kill_group(w)
    try:
        w.popen.send_signal(sig)
    except ProcessLookupError:
        pass


def _kill_group(w: WorkerProcess) -> None:
    """SIGKILL the worker's process group: the worker and every process its tasks started.

    The group outlives its leader while a member lives, so a dead worker's
    group can still be killed; and its id cannot be reused while a member lives.
    """
    try:
        os.killpg(w.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _describe(code: int) -> str:
    return describe_exit(code)


def describe_exit(code: int) -> str:
    """A worker's exit code in words: "killed by SIGKILL", "exited with code 3"."""
    if code is None:
        return "unknown exit"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exited with code {code}"


def _worker_env() -> dict[str, str]:
    """The app's environment, with its sys.path, so workers import what the app imports."""
    env = dict(os.environ)
    paths = [p if p else os.getcwd() for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env
