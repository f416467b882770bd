"""Workers forked from a zygote (issue 18): replacements, zygote death, fallback, isolation.

The pytest process runs threads (the hang guard's), so engines made here get
a zygote the supervisor spawned; the apps started with ``spawn`` are
single-threaded, so theirs is forked from the app (zygote.fork_from_app).
"""
from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil
import pytest

import fault_jobs
from catzilla_mp.backends.process import zygote as zygote_mod
from catzilla_mp.segment_janitor import sweep_dead_segments
from faultkit import books_balance, wait_until, worker_pids


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _zygote(engine):
    return engine._backend.supervisor.zygote


def test_a_crashed_workers_replacement_is_forked_from_the_zygote_and_serves(make_engine):
    engine = make_engine(workers=2)
    wait_until(lambda: len(worker_pids(engine)) == 2, 30, "two workers serving")
    zpid = _zygote(engine).proc.pid
    old = set(worker_pids(engine))
    assert {psutil.Process(p).ppid() for p in old} == {zpid}
    victim = min(old)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(set(worker_pids(engine)) - old) == 1, 30, "a replacement serving")
    new = (set(worker_pids(engine)) - old).pop()
    assert psutil.Process(new).ppid() == zpid  # forked, not spawned
    pids = {engine.add_task(fault_jobs.pid_after, 0.01).wait(30) for _ in range(40)}
    assert new in pids and victim not in pids
    assert engine._backend.supervisor.crashes == 1
    books_balance(engine)


def test_a_killed_zygote_is_replaced_and_its_workers_replaced_with_it(make_engine):
    engine = make_engine(workers=2)
    wait_until(lambda: len(worker_pids(engine)) == 2, 30, "two workers serving")
    first = _zygote(engine).proc.pid
    old = set(worker_pids(engine))
    os.kill(first, signal.SIGKILL)
    # its workers die with it (PDEATHSIG); new ones come from a new zygote
    wait_until(lambda: not any(_alive(p) for p in old), 30, "the old workers gone")
    wait_until(lambda: len(set(worker_pids(engine)) - old) == 2, 30, "two new workers")
    second = _zygote(engine).proc.pid
    assert second != first and _alive(second)
    assert {psutil.Process(p).ppid() for p in worker_pids(engine)} == {second}
    assert engine.add_task(fault_jobs.triple, 5).wait(30) == 16
    books_balance(engine)


def test_workers_are_spawned_when_the_zygote_keeps_failing(make_engine, monkeypatch):
    def refuse(self, cfgs):
        raise zygote_mod.ZygoteError("refused for the test")

    monkeypatch.setattr(zygote_mod.Zygote, "fork_many", refuse)
    engine = make_engine(workers=2)
    wait_until(lambda: len(worker_pids(engine)) == 2, 60, "two workers serving")
    sup = engine._backend.supervisor
    assert psutil.Process(worker_pids(engine)[0]).ppid() == os.getpid()  # spawned by us
    assert engine.add_task(fault_jobs.triple, 2).wait(30) == 7
    for crashes in range(1, zygote_mod.ZYGOTE_FAILURES_FALLBACK + 1):
        os.kill(worker_pids(engine)[0], signal.SIGKILL)
        wait_until(lambda: len(worker_pids(engine)) == 2 and sup.crashes == crashes, 60,
                   "a spawned replacement")
    assert not sup.use_zygote  # after ZYGOTE_FAILURES_FALLBACK failures in a row
    assert {psutil.Process(p).ppid() for p in worker_pids(engine)} == {os.getpid()}
    assert engine.add_task(fault_jobs.triple, 3).wait(30) == 10


def test_start_method_spawn_starts_every_worker_as_a_child_of_the_app(make_engine):
    engine = make_engine(workers=2, start_method="spawn")
    wait_until(lambda: len(worker_pids(engine)) == 2, 60, "two workers serving")
    assert _zygote(engine) is None
    assert {psutil.Process(p).ppid() for p in worker_pids(engine)} == {os.getpid()}
    assert engine.add_task(fault_jobs.triple, 4).wait(30) == 13


def test_shutdown_stops_the_zygote_too(make_engine):
    before = {c.pid for c in psutil.Process().children(recursive=True)}  # e.g. a session's Ray
    engine = make_engine(workers=2)
    wait_until(lambda: len(worker_pids(engine)) == 2, 30, "two workers serving")
    zpid, pids = _zygote(engine).proc.pid, worker_pids(engine)
    engine.shutdown()
    assert not _alive(zpid) and not any(_alive(p) for p in pids)
    assert not {c.pid for c in psutil.Process().children(recursive=True)} - before


def test_start_method_must_be_a_known_one(make_engine):
    with pytest.raises(ValueError, match="forkserver"):
        make_engine(start_method="fork")


APP_DEATH = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
import fault_jobs
from catzilla_mp import BackgroundTasks
engine = BackgroundTasks(workers=2, memory_pool_mb=16, queue_size=64)
assert engine.add_task(fault_jobs.triple, 1).wait(60) == 4
sup = engine._backend.supervisor
while len([r for w, r in sup.snapshot() if r.pid == w.pid]) < 2:
    time.sleep(0.01)
print(sup.zygote.proc.pid, int(sup.zygote.forked_from_app),
      *[w.pid for w, r in sup.snapshot()], flush=True)
time.sleep(600)
"""


def test_the_zygote_forked_from_the_app_dies_with_the_app_and_its_workers_with_it(spawn):
    app = spawn(APP_DEATH, os.path.dirname(fault_jobs.__file__),
                stdout=subprocess.PIPE, text=True)
    line = app.stdout.readline().split()
    assert line, "the app did not start"
    zpid, forked, pids = int(line[0]), line[1] == "1", [int(p) for p in line[2:]]
    assert forked  # a single-threaded app: the zygote is a fork of it
    assert psutil.Process(zpid).ppid() == app.pid
    assert {psutil.Process(p).ppid() for p in pids} == {zpid}
    app.send_signal(signal.SIGKILL)
    app.wait()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in [zpid, *pids]) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _alive(zpid), "the zygote outlived its app"
    assert not any(_alive(p) for p in pids), "workers outlived their app"
    sweep_dead_segments()  # the dead app's segment, as its next engine would


ISOLATION = """
import atexit, os, signal, socket, sys, threading
sys.path.insert(0, sys.argv[1])
atexit.register(lambda: open(sys.argv[3], "a").write(f"app {os.getpid()}\\n"))
import fault_jobs
from catzilla_mp import BackgroundTasks
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
signal.signal(signal.SIGUSR2, lambda *a: None)
mode = sys.argv[2]
if mode == "threaded":
    stop = threading.Event()
    threading.Thread(target=stop.wait, daemon=True).start()
engine = BackgroundTasks(workers=1, memory_pool_mb=16, queue_size=64)
print(int(engine._backend.supervisor.zygote is not None
          and engine._backend.supervisor.zygote.forked_from_app), flush=True)
link = os.readlink(f"/proc/self/fd/{listener.fileno()}")
print(engine.add_task(fault_jobs.inherited, listener.fileno(), link).wait(60), flush=True)
engine.shutdown()
"""


@pytest.mark.parametrize("mode", ["single", "threaded"])
def test_workers_inherit_neither_the_apps_handlers_nor_its_sockets(spawn, mode, tmp_path):
    # Given an app with a listening socket, a SIGUSR2 handler and an exit hook
    exits = tmp_path / "exits"
    app = spawn(ISOLATION, os.path.dirname(fault_jobs.__file__), mode, str(exits),
                stdout=subprocess.PIPE, text=True)
    out, _ = app.communicate(timeout=120)
    forked, seen = out.split("\n")[:2]
    # a zygote is forked from the app only while the app has one thread
    assert forked == ("1" if mode == "single" else "0")
    # then a task sees the default handler and no socket at that descriptor
    assert seen == "(True, False)", out
    # and the app's exit hook ran once, in the app (not in its zygote or workers)
    assert exits.read_text() == f"app {app.pid}\n"


def test_exit_hooks_a_task_registers_run_when_its_worker_stops(make_engine, tmp_path):
    # as they do in a spawned interpreter: an engine a task built is shut down
    engine = make_engine(workers=1)
    marks = tmp_path / "marks"
    pid = engine.add_task(fault_jobs.register_exit_marker, str(marks)).wait(30)
    engine.shutdown()
    assert marks.read_text() == f"{pid}\n"


PREFORK = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
import fault_jobs
from catzilla_mp import BackgroundTasks
engine = BackgroundTasks(workers=1, memory_pool_mb=16, queue_size=64)
assert engine.add_task(fault_jobs.triple, 1).wait(60) == 4
zygote = engine._backend.supervisor.zygote
child = os.fork()  # as a pre-fork server does: the child holds a copy of every descriptor
if child == 0:
    time.sleep(60)
    os._exit(0)
engine.shutdown()
print(int(zygote.forked_from_app), zygote.proc.returncode, flush=True)
os.kill(child, 9)
os.waitpid(child, 0)
"""


def test_the_zygote_stops_when_told_even_if_a_forked_child_holds_its_socket(spawn):
    app = spawn(PREFORK, os.path.dirname(fault_jobs.__file__), stdout=subprocess.PIPE, text=True)
    out, _ = app.communicate(timeout=120)
    # exit code 0: it left on the stop message, not SIGKILLed after the grace period
    assert out.split() == ["1", "0"], out
