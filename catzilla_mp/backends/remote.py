"""RemoteBackend: the app process as a client of a ``catzilla-mp serve`` engine (one per server).

Several app processes (gunicorn / uvicorn workers, several Catzilla processes)
share one pool: one server process owns the engine and its workers
(catzilla_mp/server.py), every app process runs an engine whose backend is
this class (``BackgroundTasks(server=SOCKET)``). The app's engine keeps its
whole API: the TaskResult table, futures, callbacks, awaits, retention and
the status routes are local; only the attempts run remotely:

    app process (any of N)                         |  catzilla-mp serve
                                                   |
    add_task ─► lifecycle ─► RemoteBackend.dispatch ─ "submit" ─►  per-client queues
                                 │  (waits for room: the        |   └─ fair-share dispatcher
                                 │   server's per-client limit) |        (round robin, priority)
                                 ▼                              |        ─► engine.add_task
    TaskResult ◄─ host.finish ◄─ reader thread ◄─ "done" ──────┼── add_callback of the task
             ◄─ RUNNING ◄──────── reader thread ◄─ "running" ───┼── poller
    get_task_result(id of another process) ─ "watch" ─────────►  the owner's task: status now,
                                 ◄──── "done" when it ends ───┘   outcome to every watcher

Wire format: frames of a 4-byte big-endian length then a pickle (cloudpickle
for functions pickle cannot take), over a Unix stream socket that only the
user may reach (a 0600 socket in a 0700 directory); both sides check the
peer's uid (SO_PEERCRED). A pickle from the peer is trusted as a pickle from
the same user is (SECURITY.md).

Retries, back-off, delays and timeouts run on the server (its lifecycle);
this backend sees only final outcomes, plus a "running" note so that the
status reads RUNNING. live_progress is not forwarded (None).
"""
from __future__ import annotations

import collections
import itertools
import logging
import os
import pickle
import socket
import struct
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Optional

from .. import serialization
from ..errors import EngineBrokenError, EngineClosedError, QueueFullError, SerializationError
from ..records import TaskPriority, TaskStatus

if TYPE_CHECKING:
    from ..lifecycle.host import TaskHost
    from ..results import TaskResult

log = logging.getLogger("catzilla_mp")

_HEADER = struct.Struct(">I")
#: Largest frame accepted: a task's call or outcome beyond it is refused.
MAX_FRAME = 1 << 31
#: How long a request (cancel, watch, stats) waits for the server's answer.
REQUEST_TIMEOUT_S = 30.0
#: Finished tasks of other processes remembered here (get_task_result of a watched id).
WATCHED_KEEP = 10_000
#: 2: a submit entry carries a 10th field (shared workflow options: the rate
#: limit and job key the server applies), and "schedule"/"unschedule"/
#: "schedule_info"/"job" requests. A client of another version is refused at
#: its hello, with both versions named.
PROTOCOL_VERSION = 2
#: How long a client tries to connect again after its server went away (a restart).
RECONNECT_S = 30.0
RECONNECT_PAUSE_S = 0.1


def send_frame(sock: socket.socket, lock: threading.Lock, obj: Any) -> None:
    """Pickle ``obj`` and send it as one frame (SerializationError: nothing was sent)."""
    data = serialization.dumps(obj)
    with lock:
        sock.sendall(_HEADER.pack(len(data)) + data)


def recv_frame(sock: socket.socket) -> Any:
    """The next frame, unpickled; EOFError when the peer closed the connection."""
    n = _HEADER.unpack(_recv_exact(sock, _HEADER.size))[0]
    if n > MAX_FRAME:
        raise ConnectionError(f"frame of {n} bytes is beyond {MAX_FRAME}")
    return pickle.loads(_recv_exact(sock, n))


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError("the peer closed the connection")
        got += k
    return bytes(buf)


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def outcome_message(tid: str, task: "TaskResult", value: Any) -> tuple:
    """The "done" frame of a finished task (server side), its value pickled apart."""
    ok = task.status is TaskStatus.COMPLETED
    try:
        blob = serialization.dumps(value)
    except Exception as exc:  # noqa: BLE001 - the outcome becomes the error
        ok, blob = False, serialization.dumps(SerializationError(
            f"the task's {'result' if ok else 'exception'} cannot be sent to the app: {exc}"))
    return ("done", tid, ok, blob, task.status.name, task.attempt, task.started_at,
            task.completed_at, task.exec_ms, task.worker_id)


def _connect(address: str, send_lock: threading.Lock) -> tuple[socket.socket, tuple]:
    """Connect and say hello; (socket, the server's welcome).

    Raises:
        EngineBrokenError: nobody answers, the server is another user's, or it refused us.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(address)
        uid = peer_uid(sock)
        if uid != os.getuid():
            raise EngineBrokenError(f"the server at {address} runs as uid {uid}, not "
                                    f"{os.getuid()}: refused (SECURITY.md)")
        send_frame(sock, send_lock, ("hello", PROTOCOL_VERSION, os.getpid()))
        welcome = recv_frame(sock)
    except (OSError, EOFError) as exc:
        sock.close()
        raise EngineBrokenError(f"no catzilla-mp server answers at {address}: {exc}") from exc
    except BaseException:
        sock.close()
        raise
    if welcome[0] != "welcome":
        sock.close()
        raise EngineBrokenError(f"the server at {address} refused this client: {welcome[1]}")
    return sock, welcome


class RemoteBackend:
    """A Backend whose attempts run in a ``catzilla-mp serve`` process (see the module docstring).

    Args:
        host: the engine's TaskHost.
        address: the server's Unix socket path.
    Raises:
        EngineBrokenError: no server answers at ``address``, or it runs as another user.
    """

    def __init__(self, host: "TaskHost", address: str) -> None:
        self.host = host
        self.address = address
        self._send_lock = threading.Lock()
        sock, welcome = _connect(address, self._send_lock)
        self.sock = sock
        info = welcome[1]
        #: what the server told us: its pid, workers, this client's limit of tasks in flight
        self.server_info: dict = info
        self.limit = int(info["client_limit"])
        # the server answers each submission once it is indexed (and journaled, if
        # durable): when add_task returns, any process finds the task by its id
        # (a round trip per add_task; add_tasks sends its batch in one)
        self._ack = bool(info.get("ack"))
        self._tasks: dict[str, "TaskResult"] = {}  # ours, in flight
        self._watched: collections.OrderedDict[str, "TaskResult"] = collections.OrderedDict()
        self._room = threading.Condition()
        self._in_flight = 0
        self._rids = itertools.count(1)
        self._replies: dict[int, list] = {}
        self._reply_cond = threading.Condition()
        self._closing = False
        self._gone: Optional[BaseException] = None
        self._rewatch: dict[int, str] = {}  # request id -> task id, after a reconnection
        self._schedules: dict[str, tuple] = {}  # key -> registration (again after a reconnection)
        self._ignored: set[int] = set()  # request ids whose answer nobody waits for
        # our tasks while the engine keeps them: their meta answers other processes' lookups
        self._own: "weakref.WeakValueDictionary[str, TaskResult]" = \
            weakref.WeakValueDictionary()
        self._reader = threading.Thread(target=self._read_loop, name="czmp-remote-reader",
                                        daemon=True)
        self._reader.start()

    # -- submitting -------------------------------------------------------

    #: rate limits, job ids and schedules are applied by the server (workflows/core.py)
    shares_workflows = True

    @staticmethod
    def _entry(task: "TaskResult", fn: Callable, args: tuple, kwargs: dict,
               shared: Optional[dict] = None) -> tuple:
        return (task.task_id, fn, args, kwargs, task.priority.value, task.delay_ms,
                task.max_retries, task.timeout_ms, task.opts, shared)

    def _reserve(self, n: int) -> int:
        """Wait for room for up to ``n`` tasks (the server's per-client limit); returns how many."""
        deadline = time.monotonic() + self.host.queue_wait_s()
        with self._room:
            while True:
                if self._gone is not None:
                    raise EngineBrokenError(f"the catzilla-mp server went away: {self._gone}")
                if self._closing:
                    raise EngineClosedError("the engine is shut down; it takes no new tasks")
                room = self.limit - self._in_flight
                if room > 0:
                    take = min(room, n)
                    self._in_flight += take
                    return take
                left = deadline - time.monotonic()
                if left <= 0:
                    raise QueueFullError(
                        f"this process has {self._in_flight} tasks in flight on the server, "
                        f"its limit per client ({self.limit}); the task was not queued")
                self._room.wait(left)

    def _unreserve(self, n: int) -> None:
        with self._room:
            self._in_flight -= n
            self._room.notify_all()

    def dispatch(self, task: "TaskResult", fn: Callable, args: tuple, kwargs: dict) -> None:
        """Send the task to the server (after waiting for room under the per-client limit).

        Raises:
            QueueFullError, SerializationError, EngineClosedError, EngineBrokenError:
            the task was not sent.
        """
        self._reserve(1)
        self._sent([task], 1, lambda: self._send_submit([self._entry(task, fn, args, kwargs)]))

    def dispatch_many(self, tasks: list["TaskResult"], fn: Callable, calls: list[tuple],
                      done: list[int]) -> None:
        """Send many tasks, in frames as large as the room under the limit allows."""
        while done[0] < len(tasks):
            take = self._reserve(len(tasks) - done[0])
            chunk = tasks[done[0]:done[0] + take]
            first = done[0]
            self._sent(chunk, take, lambda: self._send_submit(
                [self._entry(t, fn, c, {}) for t, c in zip(chunk, calls[first:])]))
            done[0] += take

    def _sent(self, tasks: list["TaskResult"], reserved: int, send: Callable[[], Any]) -> Any:
        """Index ``tasks`` as this client's and ``send()`` them; all undone if it raises.

        Returns:
            What ``send`` returned.
        Raises:
            EngineBrokenError: the connection failed (the server went away);
            anything else ``send`` raised, as it was.
        """
        for t in tasks:
            self._tasks[t.task_id] = t
            self._own[t.task_id] = t
        try:
            return send()
        except BaseException as exc:
            for t in tasks:
                self._tasks.pop(t.task_id, None)
            self._unreserve(reserved)
            if isinstance(exc, OSError):
                raise EngineBrokenError(f"the catzilla-mp server went away: {exc}") from exc
            raise

    def dispatch_shared(self, task: "TaskResult", fn: Callable, args: tuple, kwargs: dict,
                        shared: dict) -> Optional[str]:
        """dispatch() with the options the server applies for every process: ``shared`` holds
        ``rate_limit`` ((name, RateLimit) or None) and ``job`` ((key, unique_for) or None).

        Returns:
            None once queued; the id of the task holding the job key on the
            server if it is taken (this task was not queued).
        Raises:
            As dispatch.
        """
        self._reserve(1)
        # always a request: the answer says whether the job key was free
        taken = self._sent([task], 1, lambda: self._request(
            "submit", [self._entry(task, fn, args, kwargs, shared)]))
        first = taken.get(task.task_id) if isinstance(taken, dict) else None
        if first is not None:
            self._tasks.pop(task.task_id, None)
            self._own.pop(task.task_id, None)
            self._unreserve(1)
        return first

    def job_holder(self, key: Any) -> Optional[str]:
        """The id of the task holding job ``key`` on the server now, or None."""
        return self._request("job", key)

    # -- schedules (one per key on the server, workflows/core.py's SharedSchedule) ---

    def register_schedule(self, key: str, fn: Callable, args: tuple, kwargs: dict,
                          spec: dict) -> None:
        """Register this process for the server's schedule ``key`` (made if new).

        Raises:
            ScheduleConflictError: the key is registered with another spec (errors.py).
            TypeError, ValueError: the server refused the spec.
            SerializationError: ``fn`` or its arguments cannot be sent.
            EngineBrokenError: the server does not answer.
        """
        payload = (key, fn, args, kwargs, spec)
        answer = self._request("schedule", *payload)
        if isinstance(answer, BaseException):
            raise answer
        # kept to register again with a restarted server (see _reconnect)
        self._schedules[key] = payload

    def unregister_schedule(self, key: str) -> bool:
        """Withdraw this process's registration of ``key``; True if it was registered."""
        self._schedules.pop(key, None)
        try:
            return bool(self._request("unschedule", key))
        except (EngineBrokenError, OSError):
            return False

    def schedule_info(self, key: str) -> Optional[dict]:
        """The server's schedule ``key``: next_run, last_run, runs, skipped, registered."""
        return self._request("schedule_info", key)

    def _send_submit(self, entries: list[tuple]) -> None:
        if self._ack:
            self._request("submit", entries)
        else:
            send_frame(self.sock, self._send_lock, ("submit", entries))

    # -- requests -----------------------------------------------------------

    def _request(self, kind: str, *payload: Any) -> Any:
        rid = next(self._rids)
        send_frame(self.sock, self._send_lock, ("req", rid, kind, payload))
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        with self._reply_cond:
            while rid not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self._gone is not None:
                    raise EngineBrokenError(f"the catzilla-mp server did not answer {kind!r}")
                self._reply_cond.wait(left)
            return self._replies.pop(rid)

    def cancel(self, task: "TaskResult") -> bool:
        try:
            withdrawn = bool(self._request("cancel", task.task_id, False))
        except (EngineBrokenError, OSError):
            return False
        if withdrawn and self._tasks.pop(task.task_id, None) is not None:
            self._unreserve(1)
        return withdrawn

    def terminate(self, task: "TaskResult") -> bool:
        try:
            return bool(self._request("cancel", task.task_id, True))
        except (EngineBrokenError, OSError):
            return False

    def find_task(self, engine: Any, task_id: str) -> Optional["TaskResult"]:
        """A task another process of the server submitted, as a TaskResult here, or None.

        The TaskResult follows the task: the server sends its outcome when it
        ends (``wait``, callbacks and awaits work on it).
        """
        from ..results import TaskResult

        found = self._watched.get(task_id)
        if found is not None:
            return found
        # registered before asking: the outcome may come before the answer
        task = TaskResult(task_id, engine)
        with self._reply_cond:
            self._watched[task_id] = task
            while len(self._watched) > WATCHED_KEEP:
                self._watched.popitem(last=False)
        try:
            info = self._request("watch", task_id)
        except (EngineBrokenError, OSError):
            info = None
        if info is None:
            self._watched.pop(task_id, None)
            return None
        (status, priority, max_retries, timeout_ms, attempt, created_at, started_at, meta,
         final) = info
        task.priority, task.max_retries, task.timeout_ms = \
            TaskPriority.parse(priority), max_retries, timeout_ms
        task.created_at = created_at
        task.meta = meta  # the submitter's: its request and owner (the web routes' check)
        if final is not None:
            self._on_done(final)
            return task
        with self.host.lock:
            if not task.done():
                task.attempt, task.started_at = attempt, started_at
                task.status = TaskStatus[status]
        return task

    # -- the reader thread ------------------------------------------------------

    def _read_loop(self) -> None:
        while True:
            try:
                self._read_until_gone()
            except BaseException as exc:  # noqa: BLE001 - EOF, a reset: the server is gone
                if self._closing:
                    return
                if self._reconnect():
                    continue
                self._gone = exc
                with self._room:
                    self._room.notify_all()
                with self._reply_cond:
                    self._reply_cond.notify_all()
                err = ConnectionError(f"the catzilla-mp server at {self.address} closed the "
                                      f"connection ({exc!r}) and none answered again within "
                                      f"{RECONNECT_S:g} s")
                self.host.thread_died("czmp-remote-reader", err)
                return

    def _read_until_gone(self) -> None:
        while True:
            msg = recv_frame(self.sock)
            kind = msg[0]
            if kind == "done":
                self._on_done(msg)
            elif kind == "running":
                self._on_running(msg)
            elif kind == "ask_meta":  # another process looks our task up: who owns it?
                own = self._own.get(msg[2])
                send_frame(self.sock, self._send_lock,
                           ("meta", msg[1], own.meta if own is not None else None))
            elif kind == "resp":
                if msg[1] in self._ignored:
                    self._ignored.discard(msg[1])
                    if isinstance(msg[2], BaseException):
                        log.warning("the restarted server refused a schedule: %r", msg[2])
                    continue
                tid = self._rewatch.pop(msg[1], None)
                if tid is not None:
                    self._on_rewatched(tid, msg[2])
                    continue
                with self._reply_cond:
                    self._replies[msg[1]] = msg[2]
                    self._reply_cond.notify_all()

    def _reconnect(self) -> bool:
        """The server went away: connect again (a restarted server, systemd Restart=), and ask
        it about every task of ours in flight. False if none answers within RECONNECT_S."""
        deadline = time.monotonic() + RECONNECT_S
        old = self.sock
        while not self._closing:
            try:
                sock, welcome = _connect(self.address, self._send_lock)
                break
            except EngineBrokenError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(RECONNECT_PAUSE_S)
        else:
            return False
        old.close()
        with self._send_lock:
            self.sock = sock
        self.limit = int(welcome[1]["client_limit"])
        self._ack = bool(welcome[1].get("ack"))
        log.warning("reconnected to the catzilla-mp server at %s; asking about %d tasks",
                    self.address, len(self._tasks) + len(self._watched))
        # answers come to this (the reader) thread: sent now, handled in _on_rewatched
        for tid in list(self._tasks) + [t for t, w in self._watched.items() if not w.done()]:
            rid = next(self._rids)
            self._rewatch[rid] = tid
            send_frame(self.sock, self._send_lock, ("req", rid, "watch", (tid,)))
        for payload in list(self._schedules.values()):  # our schedules, registered again
            rid = next(self._rids)
            self._ignored.add(rid)
            send_frame(self.sock, self._send_lock, ("req", rid, "schedule", payload))
        return True

    def _on_rewatched(self, tid: str, info: Optional[tuple]) -> None:
        """The restarted server's answer about a task of ours: wait on, settle, or fail it."""
        if info is not None:
            if info[-1] is not None:
                self._on_done(info[-1])
            return  # the server watches it for us: "done" comes when it ends
        err = EngineBrokenError(f"task {tid} was lost when the catzilla-mp server restarted "
                                "(run it with --durable to keep tasks across restarts)")
        task = self._tasks.pop(tid, None)
        if task is not None:
            self._unreserve(1)
            self.host.finish(task, False, err, TaskStatus.FAILED)
            return
        watched = self._watched.get(tid)
        if watched is not None and not watched.done():
            watched._finish(False, err, TaskStatus.FAILED)

    def _on_done(self, msg: tuple) -> None:
        (_, tid, ok, blob, status, attempt, started_at, completed_at, exec_ms, worker) = msg
        try:
            value = pickle.loads(blob)
        except BaseException as exc:  # noqa: BLE001 - this task fails, not the reader
            ok, value = False, SerializationError(
                f"cannot read task {tid}'s outcome: {exc!r}")
        task = self._tasks.pop(tid, None)
        if task is not None:
            self._unreserve(1)
            task.attempt, task.started_at, task.exec_ms, task.worker_id = \
                attempt, started_at, exec_ms, worker
            self.host.finish(task, ok, value, TaskStatus[status])
            return
        watched = self._watched.get(tid)
        if watched is not None and not watched.done():
            watched.attempt, watched.started_at, watched.exec_ms = attempt, started_at, exec_ms
            watched.completed_at = completed_at
            watched._finish(ok, value, TaskStatus[status])

    def _on_running(self, msg: tuple) -> None:
        _, tid, started_at, worker = msg
        task = self._tasks.get(tid) or self._watched.get(tid)
        if task is None:
            return
        with self.host.lock:
            if not task.done():
                task.status = TaskStatus.RUNNING
                task.started_at = started_at
                task.worker_id = worker

    # -- observation ---------------------------------------------------------

    def observe(self, task: "TaskResult") -> None:
        """Nothing to read: the server pushes "running" and "done"."""

    def is_running(self, task: "TaskResult") -> bool:
        return not task.done() and task.status is TaskStatus.RUNNING

    def live_progress(self, task: "TaskResult") -> Optional[tuple[float, str]]:
        return None

    def help_collect(self, task: "TaskResult", timeout: Optional[float]) -> None:
        """Outcomes come on the reader thread: nothing to help with."""

    def queue_depths(self) -> list[int]:
        """This process's tasks in flight, as NORMAL (the server's queues are its own)."""
        return [0, 0, self._in_flight, 0]

    def worker_records(self) -> list:
        return []  # the workers are the server's (count them there)

    def in_flight_memory(self) -> tuple[int, int]:
        return 0, 0

    def server_stats(self) -> dict:
        """The server's view: its pid, worker pids, clients and per-client counts."""
        return self._request("stats")

    def close(self, abandon: Callable[["TaskResult"], None]) -> None:
        """Say goodbye (the server cancels what of ours has not started) and abandon the rest."""
        if self._closing:
            return
        self._closing = True
        try:
            send_frame(self.sock, self._send_lock, ("bye",))
        except Exception:  # noqa: BLE001 - the server may be gone already
            pass
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._reader.join(5.0)
        self.sock.close()
        with self._room:
            self._room.notify_all()
        for task in self.host.unfinished():
            abandon(task)

