"""Rate limits, unique jobs and schedules shared by every client of one server (issue 15).

Each test starts a TaskServer in this process and connects two or three
client engines to it (each a RemoteBackend connection, as N web workers
would); outcomes and counts are asserted, never speeds.
"""
from __future__ import annotations

import os
import pickle
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time

import pytest

import served_jobs
from catzilla_mp import BackgroundTasks
from catzilla_mp.backends.remote import PROTOCOL_VERSION
from catzilla_mp.errors import ScheduleConflictError
from catzilla_mp.server import TaskServer
from faultkit_deploy import wait_until

SERVER = dict(memory_pool_mb=8, queue_size=256, workers=2, min_workers=2,
              enable_auto_scaling=False)


@pytest.fixture
def sock_path():
    d = tempfile.mkdtemp(prefix="czmp-t-")  # short: a socket path is at most 107 bytes
    yield os.path.join(d, "run", "s.sock")
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def served(sock_path):
    """(server, [client engines]) of a fresh server; everything closed at teardown."""
    server = TaskServer(sock_path, **SERVER)
    clients: list[BackgroundTasks] = []

    def connect(n: int) -> list[BackgroundTasks]:
        made = [BackgroundTasks(server=sock_path) for _ in range(n)]
        clients.extend(made)
        return made

    yield server, connect
    for c in clients:
        c.shutdown()
    server.close()


def test_two_clients_share_one_rate_limit_on_the_server(served):
    server, connect = served
    a, b = connect(2)
    # Given two processes' engines submitting one task name at "10/s", 15 tasks each
    t0 = time.time()
    tasks = [e.add_task(served_jobs.stamp, i, rate_limit="10/s")
             for i in range(15) for e in (a, b)]
    starts = sorted(t.wait(60)[1] for t in tasks)
    # Then the 30 starts keep ONE limit: a task never starts before its reserved
    # time, and the server reserved at most 10 per second from the first arrival
    # (two per-process limits would let 20 start in the first second)
    assert sum(s < t0 + 0.95 for s in starts) <= 10, [round(s - t0, 2) for s in starts]
    assert sum(s < t0 + 1.95 for s in starts) <= 20, [round(s - t0, 2) for s in starts]
    # and the limit delays, never fails
    assert len(starts) == 30


def test_a_job_id_submitted_concurrently_by_two_clients_runs_once(served, tmp_path):
    server, connect = served
    a, b = connect(2)
    log = tmp_path / "runs.txt"
    barrier = threading.Barrier(8)
    got: list = []

    def submit(engine: BackgroundTasks) -> None:
        barrier.wait()
        got.append(engine.add_task(served_jobs.note, str(log), "ran", 0.5, job_id="report-42"))

    # When 8 threads of two processes submit one job_id at once
    threads = [threading.Thread(target=submit, args=(e,)) for e in (a, b) * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # Then every TaskResult is the first's (its id) and ends with its outcome
    assert len(got) == 8
    assert len({t.task_id for t in got}) == 1
    assert [t.wait(60) for t in got] == ["ran"] * 8
    # and the task ran once
    assert log.read_text().splitlines() == ["ran"]
    # once it ended the key is free again (no unique_for): a new submission runs
    again = b.add_task(served_jobs.note, str(log), "again", job_id="report-42")
    assert again.task_id != got[0].task_id and again.wait(60) == "again"


def test_a_job_held_on_the_server_is_found_by_every_client(served, tmp_path):
    server, connect = served
    a, b = connect(2)
    first = a.add_task(served_jobs.note, str(tmp_path / "r"), "x", 0.5, job_id="nightly")
    found = b.find_job("nightly")
    assert found is not None and found.task_id == first.task_id
    assert found.wait(60) == "x"
    assert b.find_job("no-such-job") is None


def test_unique_for_keeps_the_first_result_for_the_window_across_clients(served, tmp_path):
    server, connect = served
    a, b = connect(2)
    log = tmp_path / "runs.txt"
    first = a.add_task(served_jobs.note, str(log), "once", unique_for=600)
    assert first.wait(60) == "once"
    # finished, but within unique_for: the other process gets the first's result
    second = b.add_task(served_jobs.note, str(log), "once", unique_for=600)
    assert second.task_id == first.task_id and second.wait(60) == "once"
    assert log.read_text().splitlines() == ["once"]


def test_bad_workflow_options_with_server_are_refused_before_anything_is_sent(served):
    server, connect = served
    (a,) = connect(1)
    with pytest.raises(ValueError, match="rate_limit"):
        a.add_task(served_jobs.stamp, 1, rate_limit="ten per second")
    with pytest.raises(TypeError, match="job_id"):
        a.add_task(served_jobs.stamp, 1, job_id=42)
    with pytest.raises(ValueError, match="exactly one"):
        a.periodic(served_jobs.stamp, 1)
    assert server.stats()["clients"][0]["held"] == 0
    assert server.engine.schedules() == []


def test_a_schedule_registered_by_three_clients_fires_once_per_run_on_the_server(served,
                                                                                 tmp_path):
    server, connect = served
    clients = connect(3)
    log = tmp_path / "runs.txt"
    # Given three web workers registering the same periodic task (as each imports the app)
    handles = [c.periodic(served_jobs.note, str(log), "tick", every=0.2) for c in clients]
    assert len({h.key for h in handles}) == 1
    # Then the server runs one schedule, and no client runs one of its own
    assert len(server.engine.schedules()) == 1
    for c in clients:
        assert c._workflows.scheduler.schedules() == []
        assert c.schedules() == [handles[clients.index(c)]]
    info = handles[0].info()
    assert info["registered"] == 3
    wait_until(lambda: handles[0].info()["runs"] >= 3, timeout=60, what="three runs")
    # each run fired once: one line per run (none from a second or third firing)
    handles[0].cancel()
    wait_until(lambda: len(log.read_text().splitlines()) >= 3, timeout=60, what="runs written")
    runs = handles[1].info()["runs"]
    assert len(log.read_text().splitlines()) <= runs
    assert handles[1].info()["registered"] == 2 and not handles[0].active


def test_a_server_schedule_lives_while_a_registered_client_is_connected(served, tmp_path):
    server, connect = served
    a, b = connect(2)
    ha = a.periodic(served_jobs.note, str(tmp_path / "r"), "t", every=3600, name="hourly")
    b.periodic(served_jobs.note, str(tmp_path / "r"), "t", every=3600, name="hourly")
    assert ha.info()["registered"] == 2
    # When one registered client goes away the schedule stays
    b.shutdown()
    wait_until(lambda: ha.info()["registered"] == 1, timeout=30, what="b withdrawn")
    assert len(server.engine.schedules()) == 1
    # and when the last one cancels, the server stops it
    assert ha.cancel() is True
    assert ha.info() is None and server.engine.schedules() == []
    assert ha.cancel() is False


def test_a_name_registered_with_another_spec_is_refused(served, tmp_path):
    server, connect = served
    a, b = connect(2)
    a.periodic(served_jobs.note, str(tmp_path / "r"), "t", every=3600, name="report")
    with pytest.raises(ScheduleConflictError, match="report"):
        b.periodic(served_jobs.note, str(tmp_path / "r"), "t", every=60, name="report")
    assert b.schedules() == [] and len(server.engine.schedules()) == 1


def test_a_client_of_another_protocol_version_is_refused_naming_both(served, sock_path):
    server, connect = served
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(sock_path)
        data = pickle.dumps(("hello", PROTOCOL_VERSION - 1, os.getpid()))
        sock.sendall(struct.pack(">I", len(data)) + data)
        n = struct.unpack(">I", sock.recv(4))[0]
        buf = b""
        while len(buf) < n:
            buf += sock.recv(n - len(buf))
        reply = pickle.loads(buf)
    finally:
        sock.close()
    assert reply[0] == "refused"
    assert str(PROTOCOL_VERSION - 1) in reply[1] and str(PROTOCOL_VERSION) in reply[1]


def test_a_durable_server_restarted_under_its_clients_resumes_their_schedule(sock_path,
                                                                            tmp_path):
    journal = str(tmp_path / "journal.db")
    server = TaskServer(sock_path, durable=journal, **SERVER)
    client = BackgroundTasks(server=sock_path)
    try:
        handle = client.periodic(served_jobs.note, str(tmp_path / "r"), "t", every=0.3,
                                 name="often")
        wait_until(lambda: handle.info()["runs"] >= 1, timeout=60, what="a run")
        server.close()
        before_restart = time.time()
        # When the server restarts (systemd Restart=) on the same journal
        server = TaskServer(sock_path, durable=journal, **SERVER)
        # Then the client, reconnecting, registers its schedule again, and the
        # server's schedule continues from the journaled last run
        wait_until(lambda: server.engine.schedules(), timeout=60, what="re-registered")
        sched = server.engine.schedules()[0]
        assert sched.key == "often" and sched.last_run is not None
        # its grid starts at the journaled run, from before the restart (a fresh
        # schedule's would start at its registration, after it)
        assert sched._anchor < before_restart
        assert handle.info()["registered"] == 1
    finally:
        client.shutdown()
        server.close()


FORKED_CLIENT = r'''
import os, sys, time
import served_jobs
from catzilla_mp import BackgroundTasks

sock, log = sys.argv[1], sys.argv[2]
engine = BackgroundTasks(server=sock)
# as gunicorn --preload: the app (and its periodic) is set up in the master, then forked
engine.periodic(served_jobs.note, log, "tick", every=3600)
kids = []
for k in range(2):
    pid = os.fork()
    if pid == 0:
        # each worker imports the app again (without --preload): the same periodic
        h = engine.periodic(served_jobs.note, log, "tick", every=3600)
        t = engine.add_task(served_jobs.note, log, "job", 2.0, job_id="forked-job")
        ok = t.wait(60) == "job" and h.info()["registered"] >= 2
        print(f"CHILD {os.getpid()} {t.task_id} {ok}", flush=True)
        engine.shutdown()
        os._exit(0 if ok else 3)
    kids.append(pid)
codes = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in kids]
print("CODES", codes, flush=True)
engine.shutdown()
'''


def test_forked_clients_share_the_server_s_schedule_and_job_table(served, sock_path, spawn,
                                                                   tmp_path):
    server, connect = served
    log = tmp_path / "runs.txt"
    proc = spawn(FORKED_CLIENT, sock_path, str(log), stdout=subprocess.PIPE,
                 text=True)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "CODES [0, 0]" in out, out
    # both children got the same job's TaskResult id, and the job ran once
    ids = {line.split()[2] for line in out.splitlines() if line.startswith("CHILD")}
    assert len(ids) == 1, out
    assert log.read_text().splitlines().count("job") == 1
    # every registration is gone with its process: the server stopped the schedule
    wait_until(lambda: server.engine.schedules() == [], timeout=30, what="schedule stopped")


def test_a_dependant_whose_job_key_is_taken_on_release_ends_with_the_first_s_outcome(
        served, tmp_path):
    server, connect = served
    a, b = connect(2)
    log = tmp_path / "runs.txt"
    first = b.add_task(served_jobs.note, str(log), "first", 2.0, job_id="shared-key")
    parent = a.add_task(served_jobs.stamp, 1)
    # held in a's process until its parent completes; the key is claimed on release
    dependant = a.add_task(served_jobs.note, str(log), "second", job_id="shared-key",
                           depends_on=[parent])
    assert dependant.wait(60) == "first" and dependant.task_id != first.task_id
    assert first.wait(60) == "first"
    assert log.read_text().splitlines() == ["first"]
