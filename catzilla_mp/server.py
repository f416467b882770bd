"""TaskServer: one engine for every process of a web server (``catzilla-mp serve``, issue 14).

The server owns one BackgroundTasks engine (its worker pool, optionally its
durable journal) and serves app processes over a Unix socket; each app
process's engine uses backends/remote.py:

    app process A ─┐ "submit" ─►  _Client A: queue per priority ─┐
    app process B ─┼──────────►  _Client B: queue per priority ─┼─► dispatcher: highest priority
    app process C ─┘             ...                            ─┘   first, clients in turn,
         ▲                                                           at most `window` in the engine
         │ "done" (to the submitter and to every watcher)               │
         └──────────── add_callback of the engine's TaskResult ◄────────┘ engine.add_task

Per-client accounting: each client has at most ``client_limit`` tasks queued
or running here (its app's add_task waits for room, then QueueFullError), and
the dispatcher hands the engine at most ``window`` (2 x workers) tasks at a
time, taking the clients in turn: a client that floods fills its own queue,
not the engine's, and another client's next task is handed over within one
turn. A client that disconnects (its process died) has its queued tasks
dropped, its tasks in the engine that have not started cancelled; those
running finish and their outcomes go only to other processes watching them.

Lookups: every task submitted by any client is indexed by its id (the id the
app made), so ``get_task_result(id)`` in any app process finds it ("watch"):
its status now, and its outcome when it ends. Finished tasks are kept for
lookups up to ``keep_finished`` of them.

Shared workflows (workflows/core.py): a submission may carry a rate limit
and a job key, and a client may register schedules; the server applies them
once for all its clients:

  * rate_limit: the server's limiter of the task's name reserves its start
    when the "submit" arrives, and the task is handed to the engine that much
    later (delay_ms). One limiter, one clock: N clients share one limit.
  * job_id / unique_for: the server's job table, under the same lock as the
    index, takes the key for the first task; a later submission of the key
    while it is held is not queued, and the answer names the first task (the
    client returns a TaskResult of that id, which follows its outcome).
  * schedules: one Schedule in the server's engine per key, however many
    clients register it; it lives while at least one registered client is
    connected (a client that disconnects or cancels withdraws its
    registration; the last one out stops it). With --durable its last run is
    journaled, so a restarted server continues from it.

Security: the socket's directory is created 0700 (an existing one must be
the user's and closed to others), the socket 0600, and every connection's
peer uid is checked (SO_PEERCRED): same uid only (SECURITY.md).
"""
from __future__ import annotations

import collections
import logging
import os
import socket
import stat
import threading
import time
from typing import Any, Optional

from .backends.remote import PROTOCOL_VERSION, outcome_message, peer_uid, recv_frame, send_frame
from .engine import BackgroundTasks
from .errors import QueueFullError, ScheduleConflictError
from .records import TaskPriority, TaskStatus
from .results import cancelled_error
from .workflows import ratelimit

log = logging.getLogger("catzilla_mp")

#: How often the dispatcher looks for tasks that started (the "running" notes).
POLL_S = 0.05
#: Tasks in the engine per worker (queued there or running): enough to keep the
#: workers busy between two turns of the dispatcher, short enough for fairness.
WINDOW_PER_WORKER = 2
#: How long a lookup waits for the submitting process to say who owns the task.
META_WAIT_S = 2.0
#: Expired job keys dropped per new key (bounds the job table without a sweep).
PRUNE_JOBS_PER_CLAIM = 8
_PENDING = object()


class _Entry:
    """One client task, from its "submit" to its outcome (kept for lookups after)."""

    __slots__ = ("tid", "owner", "spec", "task", "watchers", "final", "counted", "running_sent",
                 "created_at", "job")

    def __init__(self, tid: str, owner: "_Client", spec: tuple) -> None:
        self.tid = tid
        self.owner: Optional[_Client] = owner
        self.spec: Optional[tuple] = spec
        self.task: Any = None  # the engine's TaskResult once handed over
        self.watchers: list[_Client] = []
        self.final: Optional[tuple] = None  # the "done" frame once finished
        self.counted = False  # counts in the dispatcher's window
        self.running_sent = False
        self.created_at = time.time()
        self.job: Any = None  # the job key it holds (job_id / unique_for), or None


class _SharedSchedule:
    """A schedule of the server's engine and the clients registered for it."""

    def __init__(self, schedule: Any, signature: tuple) -> None:
        self.schedule = schedule
        self.signature = signature  # what a second registration of the key must match
        self.clients: set[int] = set()


class _Client:
    """One connected app process."""

    def __init__(self, cid: int, sock: socket.socket) -> None:
        self.cid = cid
        self.sock = sock
        self.send_lock = threading.Lock()
        self.queues: list[collections.deque] = [collections.deque() for _ in TaskStatus]
        self.held = 0  # tasks queued here or in the engine, not final
        self.pid = 0
        self.alive = True

    def send(self, msg: tuple) -> None:
        if not self.alive:
            return
        try:
            send_frame(self.sock, self.send_lock, msg)
        except OSError:
            self.alive = False


class TaskServer:
    """The engine of a whole web server, shared by its app processes over a Unix socket.

    Args:
        socket_path: where to listen (its directory is created 0700 if missing).
        client_limit: tasks one client may have here, queued or running
            (default: half the engine's queue_size).
        keep_finished_lookups: finished tasks kept for lookups by id.
        **engine_options: BackgroundTasks' options (workers, durable, ...).
    Raises:
        OSError: the directory is another user's or open to others, or a
            server already answers at ``socket_path``.
    """

    def __init__(self, socket_path: str, *, client_limit: Optional[int] = None,
                 keep_finished_lookups: int = 100_000, **engine_options: Any) -> None:
        self.path = os.path.abspath(socket_path)
        self._listener = _listen(self.path)
        try:
            self.engine = BackgroundTasks(**engine_options)
        except BaseException:
            self._listener.close()
            os.unlink(self.path)
            raise
        o = self.engine.options
        self.client_limit = client_limit or max(1, o.queue_size // 2)
        self.window = max(1, WINDOW_PER_WORKER * o.max_workers * o.threads_per_worker)
        self._keep = keep_finished_lookups
        # a durable server keeps a vanished client's tasks: they run, their outcome is journaled
        self._durable = engine_options.get("durable") is not None
        if self._durable:
            # a task must be in the journal once its client was told it is queued: a
            # durable server hands every task to the engine at once (fair share is
            # then the per-client limit only; see docs/deploy.md)
            self.window = 1 << 30
        self._cond = threading.Condition()
        self._clients: dict[int, _Client] = {}
        self._order: list[int] = []  # client ids in turn order
        self._turn = 0
        self._queued = 0
        self._in_engine = 0
        self._index: dict[str, _Entry] = {}
        self._finished: collections.deque[str] = collections.deque()
        self._watching_running: dict[str, _Entry] = {}
        self._next_cid = 0
        self._next_query = 0
        self._meta_answers: dict[int, Any] = {}
        # shared workflows: one limiter per task name, one job table, one schedule per key
        self._limits = ratelimit.RateLimits()
        self._jobs: collections.OrderedDict[Any, tuple[_Entry, Optional[float]]] = \
            collections.OrderedDict()
        self._schedules: dict[str, _SharedSchedule] = {}
        self._closed = False
        self._threads = [threading.Thread(target=self._accept_loop, name="czmp-serve-accept",
                                          daemon=True),
                         threading.Thread(target=self._dispatch_loop, name="czmp-serve-dispatch",
                                          daemon=True)]
        for t in self._threads:
            t.start()

    # -- connections ----------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            try:
                uid = peer_uid(sock)
            except OSError:
                sock.close()
                continue
            if uid != os.getuid():
                log.warning("refused a client of uid %d on %s", uid, self.path)
                sock.close()
                continue
            with self._cond:
                self._next_cid += 1
                client = _Client(self._next_cid, sock)
            threading.Thread(target=self._client_loop, args=(client,),
                             name=f"czmp-serve-client-{client.cid}", daemon=True).start()

    def _client_loop(self, client: _Client) -> None:
        try:
            hello = recv_frame(client.sock)
            if hello[0] != "hello" or hello[1] != PROTOCOL_VERSION:
                client.send(("refused", f"protocol {hello[1]!r}, this server speaks "
                                        f"{PROTOCOL_VERSION}"))
                return
            client.pid = hello[2]
            with self._cond:
                self._clients[client.cid] = client
                self._order.append(client.cid)
            o = self.engine.options
            client.send(("welcome", {"pid": os.getpid(), "workers": o.max_workers,
                                     "client_limit": self.client_limit,
                                     "ack": True}))
            while True:
                msg = recv_frame(client.sock)
                kind = msg[0]
                if kind == "submit":
                    self._submit(client, msg[1])
                elif kind == "req":
                    _, rid, what, payload = msg
                    client.send(("resp", rid, self._answer(client, what, payload)))
                elif kind == "meta":  # a submitter's answer to _ask_meta
                    with self._cond:
                        if msg[1] in self._meta_answers:
                            self._meta_answers[msg[1]] = msg[2]
                            self._cond.notify_all()
                elif kind == "bye":
                    return
        except (EOFError, OSError):
            pass
        except Exception:  # noqa: BLE001 - one client's garbage ends its connection only
            log.exception("client %d (pid %d): bad message; disconnected", client.cid, client.pid)
        finally:
            self._disconnect(client)

    def _disconnect(self, client: _Client) -> None:
        client.alive = False
        try:
            client.sock.close()
        except OSError:
            pass
        cancel = []
        self._withdraw_schedules(client.cid)
        with self._cond:
            if self._clients.pop(client.cid, None) is None:
                return
            self._order.remove(client.cid)
            if self._closed or self._durable:
                # the server is closing (its tasks stay journaled if durable), or a
                # durable server keeps what the client left: its tasks still run
                # (a durable server queues nothing of its own: see __init__)
                for entry in self._index.values():
                    if entry.owner is client:
                        entry.owner = None
                        client.held = 0
                    if client in entry.watchers:
                        entry.watchers.remove(client)
                return
            for q in client.queues:
                while q:
                    entry = q.popleft()
                    self._queued -= 1
                    self._finish_unsent(entry, "CANCELLED")
            for entry in self._index.values():
                if entry.owner is client:
                    entry.owner = None
                    if entry.task is not None and entry.final is None:
                        cancel.append(entry.task)
                if client in entry.watchers:
                    entry.watchers.remove(client)
        for task in cancel:
            task.cancel()  # not started: withdrawn; running: finishes, outcome to watchers

    # -- submissions and the fair-share dispatcher --------------------------------------

    def _submit(self, client: _Client, specs: list) -> dict:
        """Index and queue a client's tasks; returns {task id: first task id} for the tasks
        not queued because another task holds their job key."""
        if not isinstance(specs, list):
            raise ValueError(f"a submit carries a list of entries, not {type(specs).__name__}")
        for spec in specs:  # all checked before any is indexed: a bad frame changes nothing
            _check_spec(spec)
        direct = []
        taken: dict[str, str] = {}
        with self._cond:
            for spec in specs:
                tid = spec[0]
                shared = spec[9]
                entry = _Entry(tid, client, spec)
                if shared is not None and shared.get("job") is not None:
                    first = self._claim_job_locked(entry, *shared["job"])
                    if first is not None:
                        taken[tid] = first.tid
                        continue
                self._index[tid] = entry
                client.held += 1
                if client.held > self.client_limit:  # the client waits for room: a safety net
                    err = QueueFullError(f"this client has {client.held - 1} tasks on the "
                                         f"server, its limit ({self.client_limit}); not queued")
                    self._finish_unsent(entry, "FAILED", err)
                    continue
                if shared is not None and shared.get("rate_limit") is not None:
                    name, limit = shared["rate_limit"]
                    # reserved on arrival, in arrival order, on the server's clock
                    delay_s = self._limits.limiter(name, limit).reserve()
                    if delay_s > 0:
                        entry.spec = spec = spec[:5] + (
                            spec[5] + int(delay_s * 1000 + 0.999),) + spec[6:]
                if spec[5] or self._durable:  # delayed: parked in the engine, outside the window
                    direct.append(entry)
                else:
                    client.queues[spec[4]].append(entry)
                    self._queued += 1
            self._cond.notify_all()
        for entry in direct:
            self._hand_over(entry)
        return taken

    def _claim_job_locked(self, entry: _Entry, key: Any, unique_for: Optional[float],
                          ) -> Optional[_Entry]:
        """Take ``key`` for ``entry``; or the entry holding it (then ``entry`` is a duplicate)."""
        now = time.monotonic()
        held = self._jobs.get(key)
        if held is not None and self._job_live(held, now):
            return held[0]
        entry.job = key
        self._jobs[key] = (entry, None if unique_for is None else now + float(unique_for))
        self._jobs.move_to_end(key)
        for _ in range(PRUNE_JOBS_PER_CLAIM):
            oldest_key, oldest = next(iter(self._jobs.items()))
            if self._job_live(oldest, now):
                break
            del self._jobs[oldest_key]
        return None

    @staticmethod
    def _job_live(held: tuple, now: float) -> bool:
        entry, until = held
        return entry.final is None or (until is not None and now < until)

    def _job_holder(self, key: Any) -> Optional[str]:
        with self._cond:
            held = self._jobs.get(key)
            return held[0].tid if held is not None and self._job_live(held, time.monotonic()) \
                else None

    def _dispatch_loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (self._in_engine >= self.window or not self._queued):
                    if not self._cond.wait(POLL_S):
                        break
                if self._closed:
                    return
                entry = self._next_locked() if self._in_engine < self.window else None
                if entry is not None:
                    entry.counted = True
                    self._in_engine += 1
            if entry is not None:
                self._hand_over(entry)
            else:
                self._note_running()

    def _next_locked(self) -> Optional[_Entry]:
        """The next task: the highest priority queued, clients in turn within it."""
        order = self._order
        if not order or not self._queued:
            return None
        for prio in range(4):
            for k in range(len(order)):
                client = self._clients[order[(self._turn + k) % len(order)]]
                q = client.queues[prio]
                if q:
                    self._turn = (self._turn + k + 1) % len(order)
                    self._queued -= 1
                    return q.popleft()
        return None

    def _hand_over(self, entry: _Entry) -> None:
        tid, fn, args, kwargs, prio, delay_ms, max_retries, timeout_ms, opts = entry.spec[:9]
        try:
            # under the client's id: every process, and the journal after a restart, know it
            task = self.engine.add_task_with_id(tid, fn, args, kwargs, priority=prio,
                                                delay_ms=delay_ms, max_retries=max_retries,
                                                timeout_ms=timeout_ms, options=opts)
        except Exception as exc:  # noqa: BLE001 - this task fails, the server goes on
            with self._cond:
                if entry.counted:
                    entry.counted = False
                    self._in_engine -= 1
                self._finish_unsent(entry, "FAILED", exc)
            return
        with self._cond:
            entry.task = task
            entry.spec = None  # the arguments are the engine's now
            self._watching_running[tid] = entry
        task.add_callback(lambda value, entry=entry: self._on_final(entry, value))

    def _on_final(self, entry: _Entry, value: Any) -> None:
        msg = outcome_message(entry.tid, entry.task, value)
        with self._cond:
            self._settle_locked(entry, msg)
            targets = self._targets_locked(entry)
            self._cond.notify_all()
        for c in targets:
            c.send(msg)

    def _finish_unsent(self, entry: _Entry, status: str, err: Optional[BaseException] = None,
                       ) -> None:
        """Settle a task that never reached the engine (the lock is held)."""
        from . import serialization

        if err is None:
            err = cancelled_error(_Shim(entry.tid))
        elif entry.job is not None and self._jobs.get(entry.job, (None,))[0] is entry:
            del self._jobs[entry.job]  # never queued: its key is free (as in one engine)
            entry.job = None
        msg = ("done", entry.tid, False, serialization.dumps(err), status, 0, None, time.time(),
               None, None)
        self._settle_locked(entry, msg)
        for c in self._targets_locked(entry):
            c.send(msg)

    def _settle_locked(self, entry: _Entry, msg: tuple) -> None:
        entry.final = msg
        entry.spec = None
        if entry.job is not None:
            held = self._jobs.get(entry.job)
            if held is not None and held[0] is entry and held[1] is None:
                del self._jobs[entry.job]  # without unique_for the key is free once it ends
        self._watching_running.pop(entry.tid, None)
        if entry.counted:
            entry.counted = False
            self._in_engine -= 1
        if entry.owner is not None:
            entry.owner.held -= 1
        self._finished.append(entry.tid)
        while len(self._finished) > self._keep:
            self._index.pop(self._finished.popleft(), None)

    def _targets_locked(self, entry: _Entry) -> list[_Client]:
        targets = list(entry.watchers)
        entry.watchers.clear()
        if entry.owner is not None:
            targets.append(entry.owner)
        return targets

    def _note_running(self) -> None:
        with self._cond:
            watching = list(self._watching_running.values())
        for entry in watching:
            task = entry.task
            if entry.running_sent or task is None or task.status is not TaskStatus.RUNNING:
                continue
            entry.running_sent = True
            msg = ("running", entry.tid, task.started_at, task.worker_id)
            with self._cond:
                targets = ([entry.owner] if entry.owner is not None else []) + entry.watchers
            for c in targets:
                c.send(msg)

    # -- requests ---------------------------------------------------------------------

    def _answer(self, client: _Client, what: str, payload: tuple) -> Any:
        if what == "submit":  # answered once indexed (and journaled, if durable)
            return self._submit(client, payload[0])
        if what == "job":
            return self._job_holder(payload[0])
        if what == "schedule":
            return self._register_schedule(client, *payload)
        if what == "unschedule":
            return self._unregister_schedule(client.cid, payload[0])
        if what == "schedule_info":
            return self._schedule_info(payload[0])
        if what == "watch":
            return self._watch(client, payload[0])
        if what == "cancel":
            return self._cancel(client, *payload)
        if what == "stats":
            return self.stats()
        return None

    def _watch(self, client: _Client, tid: str) -> Optional[tuple]:
        with self._cond:
            entry = self._index.get(tid)
        if entry is None:
            entry = self._adopt(tid)  # resumed from the journal, or finished before a restart
            if entry is None:
                return None
        with self._cond:
            task = entry.task
            if entry.final is None and client not in entry.watchers and entry.owner is not client:
                entry.watchers.append(client)
            spec = entry.spec
            if task is not None:
                head = (task.status.name, task.priority.value, task.max_retries, task.timeout_ms,
                        task.attempt, entry.created_at, task.started_at)
            else:
                head = ("PENDING", spec[4] if spec else 2, spec[6] if spec else 0,
                        spec[7] if spec else 0, 0, entry.created_at, None)
            owner = entry.owner
        # the web routes' owner check needs the task's meta, which its submitter
        # recorded after submitting: ask the submitter (not under the lock)
        meta = self._ask_meta(owner, tid) if owner is not None and owner is not client else None
        return head + (meta, entry.final)

    def _ask_meta(self, owner: _Client, tid: str) -> Any:
        with self._cond:
            self._next_query += 1
            qid = self._next_query
            self._meta_answers[qid] = _PENDING
        owner.send(("ask_meta", qid, tid))
        deadline = time.monotonic() + META_WAIT_S
        with self._cond:
            while self._meta_answers.get(qid) is _PENDING and owner.alive:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            meta = self._meta_answers.pop(qid, None)
        return None if meta is _PENDING else meta

    def _adopt(self, tid: str) -> Optional[_Entry]:
        """An entry for a task the engine knows and the index does not (durable restarts)."""
        try:
            task = self.engine.get_task_result(tid)
        except (KeyError, ValueError):
            return None
        entry = _Entry(tid, None, None)  # type: ignore[arg-type]
        entry.task = task
        with self._cond:
            found = self._index.setdefault(tid, entry)
        if found is entry:
            task.add_callback(lambda value, entry=entry: self._on_final(entry, value))
        return found

    def _cancel(self, client: _Client, tid: str, force: bool) -> bool:
        with self._cond:
            entry = self._index.get(tid)
            if entry is None or entry.final is not None or entry.owner is not client:
                return False
            task = entry.task
            if task is None:
                for q in client.queues:
                    if entry in q:
                        q.remove(entry)
                        self._queued -= 1
                        break
                entry.owner = None  # the client settles it itself
                client.held -= 1
                self._finish_unsent(entry, "CANCELLED")
                return True
        return task.cancel(force=force)

    # -- schedules (one per key, shared by the clients registering it) ------------------

    def _register_schedule(self, client: _Client, key: str, fn: Any, args: tuple, kwargs: dict,
                           spec: dict) -> Optional[BaseException]:
        """Register ``client`` for schedule ``key``, made in the engine if new; None, or the
        error the client raises (nothing was registered)."""
        target = getattr(fn, "__func__", fn)
        signature = (spec["cron"], spec["every"], str(spec["tz"]), spec["missed"],
                     getattr(target, "__module__", None), getattr(target, "__qualname__", None))
        with self._cond:
            if self._closed:
                return RuntimeError("the catzilla-mp server is shutting down")
            shared = self._schedules.get(key)
            if shared is None:
                try:
                    # name=key: the engine's key, so --durable journals its last run under it
                    sched = self.engine.periodic(fn, *args, cron=spec["cron"],
                                                 every=spec["every"], tz=spec["tz"],
                                                 missed=spec["missed"], name=key, **kwargs)
                except Exception as exc:  # noqa: BLE001 - the client's input: it raises it
                    return exc
                shared = self._schedules[key] = _SharedSchedule(sched, signature)
            elif shared.signature != signature:
                return ScheduleConflictError(
                    f"schedule {key!r} is registered on the server as {shared.signature[:4]} "
                    f"running {shared.signature[4]}.{shared.signature[5]}, not as "
                    f"{signature[:4]} running {signature[4]}.{signature[5]}: give another name=")
            shared.clients.add(client.cid)
            log.info("schedule %s: registered by client %d (pid %d), %d registered", key,
                     client.cid, client.pid, len(shared.clients))
        return None

    def _unregister_schedule(self, cid: int, key: str) -> bool:
        with self._cond:
            shared = self._schedules.get(key)
            if shared is None or cid not in shared.clients:
                return False
            shared.clients.discard(cid)
            if not shared.clients:
                del self._schedules[key]
            else:
                shared = None
        if shared is not None:
            shared.schedule.cancel()  # the last registration: no more runs
        return True

    def _withdraw_schedules(self, cid: int) -> None:
        with self._cond:
            keys = [k for k, sh in self._schedules.items() if cid in sh.clients]
        for key in keys:
            self._unregister_schedule(cid, key)

    def _schedule_info(self, key: str) -> Optional[dict]:
        with self._cond:
            shared = self._schedules.get(key)
            if shared is None:
                return None
            sched = shared.schedule
            return {"key": key, "next_run": sched.next_run, "last_run": sched.last_run,
                    "runs": sched.runs, "skipped": sched.skipped,
                    "registered": len(shared.clients)}

    def stats(self) -> dict:
        """The server's pid, its workers' pids, and each client's pid and tasks held."""
        backend = self.engine.backend
        workers = [w.pid for w, _ in backend.worker_records()] if backend is not None else []
        with self._cond:
            return {"pid": os.getpid(), "worker_pids": workers, "in_engine": self._in_engine,
                    "queued": self._queued,
                    "clients": [{"pid": c.pid, "held": c.held} for c in self._clients.values()]}

    # -- lifetime ---------------------------------------------------------------------

    def serve_forever(self, stop: Optional[threading.Event] = None) -> None:
        """Serve until ``stop`` is set (or forever), then close."""
        stop = stop or threading.Event()
        try:
            stop.wait()
        finally:
            self.close()

    def close(self, timeout: Optional[float] = None) -> None:
        """Stop taking clients and tasks; shut the engine down (durable tasks stay journaled)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            clients = list(self._clients.values())
            self._cond.notify_all()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        for c in clients:
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(5.0)
        self.engine.shutdown(timeout=self.engine.options.shutdown_timeout
                             if timeout is None else timeout)


class _Shim:
    """What cancelled_error reads of a task: its id."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id


def _check_spec(spec: Any) -> None:
    """A submit entry as RemoteBackend._entry makes it, or ValueError.

    The fields the server itself uses (id, priority, delay, shared options)
    are checked here; the engine checks the rest when it takes the task, and
    fails that task alone if they are wrong.
    """
    if not isinstance(spec, tuple) or len(spec) != 10:
        raise ValueError(f"a submit entry is a tuple of 10 fields, not {type(spec).__name__} "
                         f"of {len(spec) if isinstance(spec, tuple) else '?'}")
    tid, _fn, args, kwargs, prio, delay_ms = spec[:6]
    if type(tid) is not str or type(args) is not tuple or not isinstance(kwargs, dict):
        raise ValueError("a submit entry's task id, args or kwargs is of the wrong type")
    if type(prio) is not int or not 0 <= prio < len(TaskPriority):
        raise ValueError(f"a submit entry's priority {prio!r} is not 0..{len(TaskPriority) - 1}")
    if type(delay_ms) is not int or delay_ms < 0:
        raise ValueError(f"a submit entry's delay {delay_ms!r} is not a count of milliseconds")
    if spec[9] is not None and not isinstance(spec[9], dict):
        raise ValueError("a submit entry's shared options are not a dict")


def _listen(path: str) -> socket.socket:
    """Bind ``path`` in a private directory; refuse if a server already answers there."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    st = os.stat(directory)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(f"{directory}: the socket's directory must be yours and closed to "
                              f"others (mode {stat.S_IMODE(st.st_mode):o}, uid {st.st_uid}); "
                              "see SECURITY.md")
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # a dead server's: ours to reuse
        else:
            raise OSError(f"a catzilla-mp server already answers at {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock
