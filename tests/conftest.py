"""Fixtures every test gets: nothing may be left behind, nothing may hang.

Two guards, both autouse and generic (native, engine and fault tests alike):

* ``leak_guard`` snapshots the /dev/shm entries of our naming schemes and
  this process's children before a test; afterwards it removes and kills
  whatever the test added and FAILS the test that added it. The cleanup runs
  even when the test itself failed, so one bad test cannot poison the rest.
* ``hang_guard`` arms a watchdog per test (default ``CZMP_TEST_TIMEOUT``
  seconds, or ``@pytest.mark.timeout_guard(seconds)``). When it fires it dumps
  every thread's traceback (faulthandler), SIGKILLs the children and
  interrupts the main thread; if the main thread is stuck in C and does not
  come back within a grace period, it cleans /dev/shm and exits the run. If
  even the watchdog thread cannot run (a C call holding the GIL spins), a
  faulthandler C-level timer dumps tracebacks and exits the run.

Helpers for tests that spawn processes are at the bottom (``spawn_python``).
"""
from __future__ import annotations

import _thread
import faulthandler
import os
import subprocess
import sys
import threading
import time

import psutil
import pytest

#: Per-test watchdog, in seconds; generous because CI machines are noisy.
DEFAULT_TIMEOUT = float(os.environ.get("CZMP_TEST_TIMEOUT", "180"))
#: Time the interrupted main thread gets to unwind before the run is ended.
GRACE_S = 15.0
#: /dev/shm name prefixes that belong to us (segments, side segments, engines).
SHM_PREFIXES = ("czmp", "catzilla")
SHM_DIR = "/dev/shm"


def pytest_configure(config):
    config.addinivalue_line("markers", "timeout_guard(seconds): per-test watchdog override")
    config.addinivalue_line("markers", "slow: large sizes, skipped unless CZMP_STRESS_ITEMS is set")
    config.addinivalue_line("markers", "modes(*modes): run an engine test in these modes "
                            "(process, thread, ray); tests/engine/conftest.py")


def shm_entries() -> set[str]:
    """Our entries in /dev/shm right now.

    An entry named for a live process outside this test process's tree is
    someone else's (another test run, a benchmark, an app on this machine):
    never counted, never removed.
    """
    try:
        names = {n for n in os.listdir(SHM_DIR) if n.startswith(SHM_PREFIXES)}
    except FileNotFoundError:
        return set()
    return {n for n in names if not _foreign(n)}


def _foreign(name: str) -> bool:
    from catzilla_mp.segment_janitor import owner_alive, parse_segment_name

    parsed = parse_segment_name(name)
    if parsed is None or not owner_alive(parsed):
        return False
    if parsed.pid == os.getpid():
        return False
    try:
        return parsed.pid not in {c.pid for c in psutil.Process().children(recursive=True)}
    except psutil.Error:
        return True


def _helper_pids() -> set[int]:
    """Long-lived helpers multiprocessing starts on demand: not a test's leak."""
    pids = set()
    try:
        from multiprocessing import resource_tracker
        pid = getattr(resource_tracker._resource_tracker, "_pid", None)
        if pid:
            pids.add(pid)
    except Exception:
        pass
    try:
        from multiprocessing import forkserver
        pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
        if pid:
            pids.add(pid)
    except Exception:
        pass
    return pids | _ray_pids()


#: Processes of the session's local Ray (ray_session): they and their
#: descendants (Ray starts and replaces its workers under its raylet, e.g.
#: after a task's worker is killed) belong to the session, not to a test.
_RAY_ROOTS: set[int] = set()


def _ray_pids() -> set[int]:
    pids = set()
    for pid in list(_RAY_ROOTS):
        try:
            pids.add(pid)
            pids.update(c.pid for c in psutil.Process(pid).children(recursive=True))
        except psutil.Error:
            pass
    return pids


def live_children() -> dict[int, psutil.Process]:
    """Children (recursive) that are still running; zombies are reaped here."""
    out = {}
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                try:
                    os.waitpid(child.pid, os.WNOHANG)
                except ChildProcessError:
                    pass
                continue
            out[child.pid] = child
        except psutil.NoSuchProcess:
            pass
    return out


def kill_children(pids) -> None:
    """SIGKILL the given children and wait for them, ignoring the gone."""
    procs = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            p.kill()
            procs.append(p)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=5)
    for p in procs:
        try:
            os.waitpid(p.pid, os.WNOHANG)
        except (ChildProcessError, OSError):
            pass


def remove_shm(names) -> None:
    for n in names:
        try:
            os.unlink(os.path.join(SHM_DIR, n))
        except FileNotFoundError:
            pass


@pytest.fixture(autouse=True)
def leak_guard(request):
    shm_before = shm_entries()
    kids_before = set(live_children())
    yield
    # children first: a live child may still be creating segments
    deadline = time.monotonic() + 2.0
    while True:
        extra_kids = set(live_children()) - kids_before - _helper_pids()
        if not extra_kids or time.monotonic() > deadline:
            break
        time.sleep(0.05)  # a child that is exiting right now is not a leak
    if extra_kids:
        kill_children(extra_kids)
    extra_shm = shm_entries() - shm_before
    remove_shm(extra_shm)
    problems = []
    if extra_kids:
        problems.append(f"child processes left running (killed now): {sorted(extra_kids)}")
    if extra_shm:
        problems.append(f"/dev/shm entries left behind (removed now): {sorted(extra_shm)}")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


def _real_stderr(config) -> int:
    """An fd on the terminal/CI log even while pytest captures fd 2.

    A hang report written to the captured stderr is lost when the run is
    ended with os._exit; pytest's faulthandler plugin keeps a dup of the
    original stderr, so use that (private API, hence the fallbacks).
    """
    try:
        from _pytest import faulthandler as pfh
        for key in ("fault_handler_original_stderr_fd_key", "fault_handler_stderr_fd_key"):
            if hasattr(pfh, key) and getattr(pfh, key) in config.stash:
                return config.stash[getattr(pfh, key)]
    except Exception:
        pass
    return sys.__stderr__.fileno()


@pytest.fixture(autouse=True)
def hang_guard(request):
    marker = request.node.get_closest_marker("timeout_guard")
    timeout = float(marker.args[0]) if marker else DEFAULT_TIMEOUT
    shm_before = shm_entries()
    done = threading.Event()
    err_fd = _real_stderr(request.config)

    def say(text: str) -> None:
        os.write(err_fd, text.encode())

    def watchdog():
        if done.wait(timeout):
            return
        say(f"\n*** {request.node.nodeid}: no progress after {timeout:.0f}s; "
            "tracebacks follow, children are killed ***\n")
        faulthandler.dump_traceback(file=err_fd, all_threads=True)
        kill_children(set(live_children()) - _helper_pids())
        _thread.interrupt_main()
        if done.wait(GRACE_S):
            return
        # stuck in C: nothing in Python will unwind, so clean up and end the run
        remove_shm(shm_entries() - shm_before)
        say("*** main thread did not unwind; ending the test run ***\n")
        os._exit(3)

    t = threading.Thread(target=watchdog, name="czmp-hang-guard", daemon=True)
    t.start()
    # Backstop for a hang with the GIL held (a C call that keeps it and never
    # returns): the thread above cannot run then, but faulthandler's watchdog
    # is a C thread. It dumps the tracebacks and ends the run, so CI fails
    # instead of hanging; children die with their parent (PDEATHSIG) or stay
    # for the next janitor sweep.
    faulthandler.dump_traceback_later(timeout + GRACE_S + 10, exit=True, file=err_fd)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        done.set()
        t.join()


# ---- helpers for tests that start processes -------------------------------

def spawn_python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    """Start ``python -c code args...`` with this interpreter and environment.

    The child sees the same sys.path (PYTHONPATH carries it), so it imports the
    same build of catzilla_mp, sanitized or not.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, **kwargs)


@pytest.fixture
def spawn():
    """``spawn(code, *args, **popen_kw)`` -> Popen; every child is killed at teardown."""
    procs: list[subprocess.Popen] = []

    def start(code: str, *args: str, **kwargs) -> subprocess.Popen:
        p = spawn_python(code, *args, **kwargs)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
        for stream in (p.stdout, p.stderr, p.stdin):
            if stream:
                stream.close()


# ---- engines ----------------------------------------------------------------

@pytest.fixture(scope="session")
def ray_session():
    """A local Ray (2 CPUs, its own temporary directory) for the whole run; engines of
    mode="ray" made meanwhile share it. Skipped where Ray is not installed."""
    pytest.importorskip("ray")
    from catzilla_mp.backends import ray as ray_backend

    before = set(live_children())
    ray_backend.connect("local", num_cpus=2)
    _RAY_ROOTS.update(set(live_children()) - before)
    try:
        yield ray_backend
    finally:
        ray_backend.disconnect()
        _RAY_ROOTS.clear()


@pytest.fixture
def engine_defaults() -> dict:
    """Options of the engines make_engine builds; a test directory overrides this fixture."""
    return dict(workers=2, memory_pool_mb=16, queue_size=512)


@pytest.fixture
def make_engine(engine_defaults):
    """``make_engine(**options)``: test-sized engines, every one shut down after the test."""
    from catzilla_mp import BackgroundTasks

    engines = []

    def make(**options):
        engine = BackgroundTasks(**{**engine_defaults, **options})
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.shutdown(wait_for_completion=False, timeout=5)
