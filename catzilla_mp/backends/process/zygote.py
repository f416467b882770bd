"""The zygote: a preloaded process that forks the engine's workers on request (issue 18).

Starting a worker as a fresh interpreter (``python -m catzilla_mp.workers``)
costs ~60 ms on a quiet machine and 0.2-0.5 s on a busy one: the interpreter
starts, runs site, imports the package. With ``start_method="forkserver"``
(the default) the workers come from a zygote, a process that has imported
everything a worker needs and forks a worker per request: a worker serves a
few milliseconds after it is asked for, and so does the replacement of a
crashed one.

    app                                      zygote (one thread)               worker
    ───                                      ───────────────────               ──────
    engine constructor: fork_from_app() ───► (or, app threaded: supervisor
                                              spawns python -m ...zygote)
                                             drop the app's state, preload
    supervisor: fork_many(cfgs) ── {"fork": cfg} ─► os.fork() ─────────────────► worker.main(cfg)
       ForkedWorker ◄── {"forked": pid} + its pidfd (SCM_RIGHTS) ┘                 ...
    supervisor wakes ◄── {"exit": pid, "code": c} ── waitpid (pidfd readable)   os._exit(code)

Where the zygote comes from (the default, chosen by measurement, see
docs/deploy.md): forked from the app when the app has ONE thread at the
engine's construction (counted by the kernel, /proc/self/task), which is
before the engine starts threads of its own. Then no lock can be held by a
thread the child lacks, no interpreter starts at all, and workers inherit
the app's imports, task modules included (python -m bench --quick, A/B on
the 2-core VM: first result 64 ms vs 398 ms with a fresh interpreter per
worker, a killed worker's replacement serving 12 ms vs 92 ms). The child drops what is the app's (signal
handlers, inherited descriptors, stdio buffers, logging handlers,
half-imported modules; _become_zygote). When the app already runs threads, a
fork could copy a lock some thread holds (logging's, an allocator's) into a
child where it never comes free, so the supervisor spawns a fresh interpreter
as the zygote instead: safe, and it pays one interpreter start per engine,
in parallel with the rest of start-up. Either way the zygote is
single-threaded, so each fork of it is safe.

Lifetimes (a worker never outlives its app, tests/faults):
  * the zygote asks for SIGKILL when the thread that started it ends
    (PR_SET_PDEATHSIG: the supervisor thread, or for a fork the app's main
    thread; a fork from another thread skips it), checks that its parent is
    the app, and exits on EOF of its socket or when it finds itself
    re-parented (checked every PARENT_CHECK_S);
  * a worker asks for SIGKILL when the zygote dies, and its heartbeat thread
    exits the process if it is re-parented: app gone -> zygote gone ->
    workers gone.
  * the zygote reaps its children and reports each exit code; if the zygote
    dies, its workers die with it and the app sees their pidfds readable
    (exit code unknown: reported as SIGKILL, which PDEATHSIG sent); the
    supervisor then starts a new zygote, or falls back to spawning workers
    after ZYGOTE_FAILURES_FALLBACK zygotes in a row failed.

Messages are JSON, one per SOCK_SEQPACKET packet (boundaries kept, no framing).
Only the supervisor thread talks to the zygote; ForkedWorker.send_signal may be
called from any thread (it uses the pidfd, never the socket).
"""
from __future__ import annotations

import errno
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Optional

#: Seconds the app waits for the zygote to answer a fork request (its first
#: answer includes its own start-up). Past that the zygote is killed and the
#: worker started the old way.
ZYGOTE_REPLY_S = 20.0
#: Zygotes in a row that died or failed before the supervisor stops using one
#: and spawns every worker as a fresh interpreter instead.
ZYGOTE_FAILURES_FALLBACK = 3
#: Seconds the zygote sleeps in select() between checks that its app lives
#: (EOF on the socket usually tells it at once).
PARENT_CHECK_S = 0.5
#: Largest request the zygote reads (a worker config with an initializer's
#: pickle inside; a larger one fails to send, and that worker is spawned).
MAX_MESSAGE = 1 << 22
#: Largest reply the app reads (the zygote's replies are a few dozen bytes).
REPLY_BYTES = 4096


class ZygoteError(Exception):
    """The zygote could not fork a worker (it died, hung or refused); spawn instead."""


class Zygote:
    """App side: one zygote process and the socket to it. Supervisor thread only."""

    def __init__(self, env: dict) -> None:
        self._env = env
        self.proc: Optional[subprocess.Popen] = None
        self.sock: Optional[socket.socket] = None
        #: exit codes the zygote reported, by pid, until a ForkedWorker takes them
        self.exits: dict[int, int] = {}
        self.alive = False
        #: True: forked from the app by fork_from_app(), not spawned
        self.forked_from_app = False

    def start(self) -> None:
        """Spawn the zygote; returns at once (it says "ready" in its first packet).

        Must run on the supervisor thread: the zygote dies with the thread
        that spawned it. Raises OSError if the process cannot be started.
        """
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", __name__, str(theirs.fileno()), str(os.getpid())],
                env=self._env, stdin=subprocess.DEVNULL, close_fds=True,
                pass_fds=(theirs.fileno(),), process_group=0)
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        self.sock = mine
        self.alive = True

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def fork(self, cfg: dict) -> "ForkedWorker":
        """Ask for a worker with ``cfg``; the ForkedWorker once it is forked.

        Raises:
            ZygoteError: the zygote is dead, hung (ZYGOTE_REPLY_S) or refused.
        """
        return self.fork_many([cfg])[0]

    def fork_many(self, cfgs: list[dict]) -> list["ForkedWorker"]:
        """Ask for a worker per config, all requests first (the zygote forks them back to back).

        Raises:
            ZygoteError: as fork(); workers forked before the failure die with
                the zygote, which is then killed.
        """
        if not self.alive:
            raise ZygoteError("the zygote is not running")
        for cfg in cfgs:
            try:
                self.sock.send(json.dumps({"fork": cfg}).encode())
            except OSError as exc:
                self.kill()
                if exc.errno == errno.EMSGSIZE:  # a config larger than a packet
                    raise ZygoteError(f"the worker config does not fit a packet: {exc}") from None
                raise ZygoteError(f"the zygote is gone: {exc}") from None
        try:
            return [self._await_forked() for _ in cfgs]
        except ZygoteError:
            self.kill()
            raise

    def _await_forked(self) -> "ForkedWorker":
        deadline = time.monotonic() + ZYGOTE_REPLY_S
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not wait_readable([self.sock.fileno()], left):
                raise ZygoteError(f"the zygote did not answer within {ZYGOTE_REPLY_S:.0f} s")
            msg, fds = self._recv()
            if msg is None:
                raise ZygoteError("the zygote died"
                                  + (f" ({_exit_of(self.proc)})" if self.proc else ""))
            if "forked" in msg and fds:
                return ForkedWorker(self, msg["forked"], fds[0])
            if "error" in msg:
                raise ZygoteError(f"the zygote could not fork: {msg['error']}")

    def drain(self) -> None:
        """Take every message waiting (exit reports) without blocking."""
        while self.alive:
            if not wait_readable([self.sock.fileno()], 0):
                return
            if self._recv()[0] is None:
                return

    def _recv(self) -> tuple[Optional[dict], list[int]]:
        """One message (exit reports recorded on the way); (None, []) once the zygote is gone."""
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, REPLY_BYTES, 1)
        except OSError:
            data, fds = b"", []
        if not data:
            for fd in fds:
                os.close(fd)
            self._dead()
            return None, []
        msg = json.loads(data)
        if "exit" in msg:
            self.exits[msg["exit"]] = msg["code"]
        return msg, fds

    def _dead(self) -> None:
        self.alive = False
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def kill(self) -> None:
        """End the zygote now (SIGKILL); its workers die with it."""
        self._dead()
        if self.proc is not None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
            self.proc.wait()

    def stop(self, timeout: float) -> None:
        """Tell the zygote to exit and reap it; SIGKILL after ``timeout``.

        Told, not only hung up on: a process the app forked (a pre-fork
        server's workers) holds a copy of our end, so closing ours is no EOF.
        """
        if self.alive:
            try:
                self.sock.send(b'{"stop": true}')
            except OSError:
                pass
        self._dead()
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


class _ForkedProcess:
    """A zygote forked from the app: the parts of subprocess.Popen that Zygote uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: Optional[int] = None

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else (an app's os.wait())
                self.returncode = -signal.SIGKILL
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"zygote {self.pid}", timeout)
            time.sleep(0.001)
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def fork_from_app() -> Optional[Zygote]:
    """A zygote forked from this process now, if that is safe; else None.

    Safe means this process has one thread (counted by the kernel, so C
    threads count too): no other thread can hold a lock the child would
    inherit held. The engine calls this first thing in its constructor,
    before it starts threads of its own. The child keeps the app's imported
    modules (task functions resolve without an import) and drops the rest of
    the app: signal handlers, inherited descriptors, stdio buffers, logging
    handlers, modules caught half-imported (see _become_zygote).
    """
    if not _single_threaded():
        return None
    try:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    except OSError:
        return None
    app = os.getpid()
    # PDEATHSIG follows the forking thread: only the main thread lives as
    # long as the app; from another thread the zygote relies on EOF and on
    # its re-parenting check alone
    deathsig = threading.current_thread() is threading.main_thread()
    try:
        pid = os.fork()
    except OSError:
        mine.close()
        theirs.close()
        return None
    if pid == 0:  # pragma: no cover - the zygote (covered by the tests' workers)
        code = 1
        try:
            mine.close()
            code = _become_zygote(theirs, app, deathsig)
        finally:
            os._exit(code)
    theirs.close()
    z = Zygote({})
    z.proc = _ForkedProcess(pid)  # type: ignore[assignment]
    z.sock = mine
    z.alive = True
    z.forked_from_app = True
    return z


def _single_threaded() -> bool:
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def _become_zygote(sock: socket.socket, app: int, deathsig: bool) -> int:
    """In a child forked from the app: drop what is the app's, preload, serve."""
    from ..._native import lib
    if deathsig and lib.czmp_process_die_with_parent(app) != 0:
        return 3
    if os.getppid() != app:
        return 3
    # the app's signal handling is not ours: defaults, nothing blocked, no
    # wakeup fd (an event loop's), SIGINT ignored as in every worker
    try:
        signal.set_wakeup_fd(-1)
    except (ValueError, OSError):
        pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for sig in signal.valid_signals():
        try:
            if callable(signal.getsignal(sig)) or sig == signal.SIGCHLD:
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):
            pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _neutralize_fds(keep={sock.fileno()})
    # stdio buffers may hold the app's unwritten output: fresh objects, so
    # that a worker's flush never writes it a second time
    for name in ("stdout", "stderr"):
        old = getattr(sys, name)
        try:
            new = open(old.fileno(), "w", buffering=1, closefd=False,
                       encoding=getattr(old, "encoding", None) or "utf-8",
                       errors=getattr(old, "errors", None) or "backslashreplace")
        except (AttributeError, OSError, ValueError):
            continue
        setattr(sys, name, new)
        setattr(sys, f"__{name}__", new)
    # nor the app's exit hooks (its engine's shutdown, its pid files...)
    import atexit
    atexit._clear()
    # a fresh interpreter has no logging handlers; workers add their own
    import logging
    for logger in [logging.getLogger()] + [
            lg for lg in logging.Logger.manager.loggerDict.values()
            if isinstance(lg, logging.Logger)]:
        logger.handlers = []
    # modules the app was still importing when it made the engine (the
    # engine built at module level) are incomplete here: a worker imports
    # them afresh, as a spawned one would
    for name, mod in list(sys.modules.items()):
        spec = getattr(mod, "__spec__", None)
        if spec is not None and getattr(spec, "_initializing", False):
            del sys.modules[name]
    from . import worker  # noqa: F401 - preload
    return serve(sock, app)


def _neutralize_fds(keep: set) -> None:
    """Point every inherited descriptor (stdin, >= 3, not in ``keep``) at /dev/null.

    Not closed: Python objects of the app still name those numbers, and one
    closed by a collection later must not close a descriptor of ours that
    took the number. /dev/null releases the app's files and sockets (a
    listening socket must not stay open in its workers).
    """
    try:
        fds = [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        return
    null = os.open(os.devnull, os.O_RDWR)
    for fd in fds:
        if (fd >= 3 or fd == 0) and fd not in keep and fd != null:
            try:
                os.dup2(null, fd, inheritable=False)
            except OSError:
                pass
    os.close(null)


class ForkedWorker:
    """A worker forked by the zygote, with the parts of subprocess.Popen the supervisor uses.

    Signals go through the worker's pidfd, so a signal can never reach a
    process that took over a recycled pid; the exit code comes from the
    zygote (the worker's parent), or is reported as SIGKILL if the zygote
    died (its workers were killed with it).
    """

    def __init__(self, zygote: Zygote, pid: int, pidfd: int) -> None:
        self.zygote = zygote
        self.pid = pid
        self.pidfd = pidfd
        self.returncode: Optional[int] = None
        self._lock = threading.Lock()  # send_signal (any thread) vs closing the pidfd

    def fileno(self) -> int:
        """What the supervisor waits on for this worker's exit."""
        z = self.zygote
        return z.fileno() if z.alive else self.pidfd

    def poll(self) -> Optional[int]:
        if self.returncode is not None:
            return self.returncode
        z = self.zygote
        z.drain()
        code = z.exits.pop(self.pid, None)
        if code is None and not z.alive and _readable(self.pidfd):
            code = -signal.SIGKILL  # killed with its zygote; nobody left to say how
        if code is not None:
            with self._lock:
                self.returncode = code
                os.close(self.pidfd)
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout)
            wait_readable([self.fileno()], min(0.05, left) if left else 0.05)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        with self._lock:
            if self.returncode is not None:
                return
            try:
                signal.pidfd_send_signal(self.pidfd, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _readable(fd: int) -> bool:
    return bool(wait_readable([fd], 0))


def wait_readable(fds, timeout: Optional[float]) -> set:
    """The descriptors of ``fds`` readable (or hung up, or invalid) within ``timeout`` s.

    poll(), not select(): an app with a thousand connections open hands out
    descriptors above FD_SETSIZE, which select() refuses.
    """
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
    return {fd for fd, _ in poller.poll(ms)}


def _exit_of(proc: subprocess.Popen) -> str:
    code = proc.poll()
    return "still running" if code is None else f"exit code {code}"


# ------------------------------------------------------------------ zygote side

def _send(sock: socket.socket, msg: dict, fds: tuple = ()) -> None:
    data = json.dumps(msg).encode()
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def _child(sock: socket.socket, pidfds: dict, cfg: dict) -> None:
    """In the forked worker: drop the zygote's fds, run the worker, exit without finalizing."""
    code = 1
    try:
        sock.close()
        for fd in pidfds:
            os.close(fd)
        try:
            os.setpgid(0, 0)  # its own group, as process_group=0 gives a spawned worker
        except OSError:
            pass
        from . import worker
        code = worker.main([json.dumps(cfg)])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - a worker that cannot start says why, then exits
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        # The exit hooks registered in this worker's life run, as in a spawned
        # worker (an engine a task built shuts down and removes its segment);
        # the app's were dropped in the zygote (_become_zygote). Then, as
        # multiprocessing's forked children do, no interpreter finalization:
        # the zygote's state is not ours to tear down, and it took ~50 ms.
        try:
            import atexit
            atexit._run_exitfuncs()
        except BaseException:  # noqa: BLE001 - the exit goes on
            pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:  # noqa: BLE001
                pass
        os._exit(code if isinstance(code, int) else 1)


def serve(sock: socket.socket, parent: int) -> int:
    """The zygote's loop: fork on request, reap and report, end with the app."""
    pidfds: dict[int, int] = {}  # pidfd -> pid of a live child
    _send(sock, {"ready": os.getpid()})
    while True:
        ready = wait_readable([sock.fileno(), *pidfds], PARENT_CHECK_S)
        if os.getppid() != parent:
            return 0  # the app is gone (re-parented): our workers go with us
        for fd in ready:
            if fd == sock.fileno():
                continue
            pid = pidfds.pop(fd)
            os.close(fd)
            _, status = os.waitpid(pid, 0)
            _send(sock, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})
        if sock.fileno() not in ready:
            continue
        try:
            data = sock.recv(MAX_MESSAGE)
        except ConnectionError:
            data = b""
        if not data:
            return 0  # the app closed its end: shutdown, or the app died
        msg = json.loads(data)
        if "stop" in msg:
            return 0
        cfg = msg["fork"]
        cfg["parent"] = os.getpid()  # the worker's parent is the zygote
        try:
            pid = os.fork()
        except OSError as exc:
            _send(sock, {"error": str(exc)})
            continue
        if pid == 0:
            _child(sock, pidfds, cfg)
        try:
            os.setpgid(pid, pid)  # as the child does: whichever runs first
        except OSError:
            pass
        fd = os.pidfd_open(pid)
        pidfds[fd] = pid
        _send(sock, {"forked": pid}, (fd,))


def main(argv: list[str]) -> int:
    sock_fd, parent = int(argv[0]), int(argv[1])
    from ..._native import lib
    # die with the supervisor thread that spawned us (PDEATHSIG), and never
    # start serving for an app that is already gone
    if lib.czmp_process_die_with_parent(parent) != 0:
        return 3
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the app's to handle
    sock = socket.socket(fileno=sock_fd)
    # Preload: everything a worker imports, so that a fork starts serving at once.
    from . import worker  # noqa: F401
    if threading.active_count() != 1:  # pragma: no cover - an import started a thread
        print("catzilla_mp zygote: an import started a thread; not forking", file=sys.stderr)
        return 4
    return serve(sock, parent)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
