"""TaskServer and its clients in one test process (issue 14): fairness, limits, crashes, permissions."""
from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time

import pytest

import served_jobs
from catzilla_mp import BackgroundTasks, EngineBrokenError, QueueFullError, TaskStatus
from catzilla_mp.server import TaskServer
from faultkit_deploy import wait_until

SERVER = dict(memory_pool_mb=8, queue_size=256, workers=1, min_workers=1,
              enable_auto_scaling=False)


@pytest.fixture
def sock_path():
    d = tempfile.mkdtemp(prefix="czmp-t-")  # short: a socket path is at most 107 bytes
    yield os.path.join(d, "run", "s.sock")
    shutil.rmtree(d, ignore_errors=True)


def test_a_flooding_client_does_not_starve_another(sock_path):
    server = TaskServer(sock_path, **SERVER)
    flood = BackgroundTasks(server=sock_path)
    other = BackgroundTasks(server=sock_path)
    try:
        # Given one client with 40 tasks queued on a one-worker server
        many = [flood.add_task(served_jobs.slow_square, i, 0.05) for i in range(40)]
        wait_until(lambda: any(t.status is TaskStatus.RUNNING for t in many), timeout=60,
                   what="the flood running")
        # When another client submits one task
        mine = other.add_task(served_jobs.slow_square, 3, 0.0)
        assert mine.wait(60) == 9
        # Then it ran within a turn or two, not after the whole flood (FIFO would)
        finished_before = sum(t.done() for t in many)
        assert finished_before <= 10, finished_before
        assert [t.wait(60) for t in many] == [i * i for i in range(40)]
    finally:
        flood.shutdown()
        other.shutdown()
        server.close()


def test_a_client_over_its_limit_waits_then_gets_queue_full_and_others_still_submit(sock_path):
    server = TaskServer(sock_path, client_limit=2, **SERVER)
    greedy = BackgroundTasks(server=sock_path, queue_full_timeout=0.2)
    other = BackgroundTasks(server=sock_path)
    try:
        held = [greedy.add_task(served_jobs.slow_square, i, 1.0) for i in range(2)]
        with pytest.raises(QueueFullError, match="limit per client"):
            greedy.add_task(served_jobs.slow_square, 9, 0.0)
        assert other.add_task(served_jobs.slow_square, 4, 0.0).wait(60) == 16
        assert [t.wait(60) for t in held] == [0, 1]
        # room again once its tasks finished
        assert greedy.add_task(served_jobs.slow_square, 5, 0.0).wait(60) == 25
    finally:
        greedy.shutdown()
        other.shutdown()
        server.close()


def test_a_killed_client_s_queued_tasks_are_dropped_and_the_others_go_on(spawn, sock_path):
    server = TaskServer(sock_path, **SERVER)
    other = BackgroundTasks(server=sock_path)
    try:
        code = ("import sys, time, served_jobs\n"
                "from catzilla_mp import BackgroundTasks\n"
                "e = BackgroundTasks(server=sys.argv[1])\n"
                "ts = [e.add_task(served_jobs.slow_square, i, 0.2) for i in range(30)]\n"
                "print('SUBMITTED', flush=True)\n"
                "time.sleep(600)\n")
        child = spawn(code, sock_path, stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "SUBMITTED"
        wait_until(lambda: any(c["held"] == 30 for c in server.stats()["clients"]), timeout=60,
                   what="the child's tasks on the server")
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        # its queued tasks are dropped at once: the server's queue empties long
        # before 30 x 0.2 s of work could have run
        wait_until(lambda: len(server.stats()["clients"]) == 1, timeout=60,
                   what="the dead client forgotten")
        assert server.stats()["queued"] == 0
        assert other.add_task(served_jobs.slow_square, 6, 0.0).wait(60) == 36
    finally:
        other.shutdown()
        server.close()


def test_a_client_whose_server_goes_away_fails_its_tasks_with_engine_broken(sock_path,
                                                                            monkeypatch):
    from catzilla_mp.backends import remote

    monkeypatch.setattr(remote, "RECONNECT_S", 0.5)  # no new server comes
    server = TaskServer(sock_path, **SERVER)
    client = BackgroundTasks(server=sock_path)
    try:
        waiting = client.add_task(served_jobs.slow_square, 2, 30.0)
        server.close(timeout=0)
        with pytest.raises(EngineBrokenError):
            waiting.wait(60)
        with pytest.raises(EngineBrokenError):
            client.add_task(served_jobs.slow_square, 1, 0.0)
    finally:
        client.shutdown()
        server.close()


def test_the_socket_is_private_and_a_shared_directory_or_second_server_is_refused(sock_path):
    server = TaskServer(sock_path, **SERVER)
    try:
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(sock_path)).st_mode) == 0o700
        with pytest.raises(OSError, match="already answers"):
            TaskServer(sock_path, **SERVER)
    finally:
        server.close()
    os.chmod(os.path.dirname(sock_path), 0o755)
    with pytest.raises(PermissionError, match="closed to others"):
        TaskServer(sock_path, **SERVER)


def test_a_client_finds_no_server_with_a_clear_error(sock_path):
    with pytest.raises(EngineBrokenError, match="no catzilla-mp server answers"):
        BackgroundTasks(server=sock_path)
    with pytest.raises(ValueError, match="durable= belongs to the server"):
        BackgroundTasks(server=sock_path, durable=sock_path + ".db")


def test_a_durable_server_keeps_a_killed_task_for_its_restart(sock_path):
    journal = os.path.join(os.path.dirname(os.path.dirname(sock_path)), "j.db")
    server = TaskServer(sock_path, durable=journal, **SERVER)
    client = BackgroundTasks(server=sock_path)
    try:
        t = client.add_task(served_jobs.slow_square, 8, 0.5, delay_ms=2_000)
        tid = t.task_id
    finally:
        client.shutdown(timeout=0)  # the client goes: a durable server keeps its task
        server.close(timeout=0)  # the delayed task is not due: it stays in the journal
    server = TaskServer(sock_path, durable=journal, **SERVER)
    try:
        assert server.engine.get_task_result(tid).wait(60) == 64
        # and a new client finds it by the id its first client was given
        client = BackgroundTasks(server=sock_path)
        assert client.get_task_result(tid).wait(60) == 64
        client.shutdown()
    finally:
        server.close()


def test_a_client_reconnects_to_a_restarted_durable_server_and_gets_its_outcomes(sock_path):
    # Given a client with a task running and one delayed on a durable server
    journal = os.path.join(os.path.dirname(os.path.dirname(sock_path)), "j.db")
    server = TaskServer(sock_path, durable=journal, **SERVER)
    client = BackgroundTasks(server=sock_path)
    try:
        running = client.add_task(served_jobs.slow_square, 3, 1.0)
        delayed = client.add_task(served_jobs.slow_square, 4, 0.0, delay_ms=1_500)
        wait_until(lambda: running.status is TaskStatus.RUNNING, timeout=60,
                   what="the task running")
        # When the server stops and a new one starts on the same socket and journal
        server.close(timeout=0)
        server = TaskServer(sock_path, durable=journal, **SERVER)
        # Then the client's own TaskResults complete: nothing was lost
        assert running.wait(60) == 9
        assert delayed.wait(60) == 16
        assert client.add_task(served_jobs.slow_square, 5, 0.0).wait(60) == 25
    finally:
        client.shutdown()
        server.close()


def test_a_restarted_server_without_a_journal_fails_the_clients_lost_tasks(sock_path):
    server = TaskServer(sock_path, **SERVER)
    client = BackgroundTasks(server=sock_path)
    try:
        lost = client.add_task(served_jobs.slow_square, 3, 0.0, delay_ms=60_000)
        server.close(timeout=0)
        server = TaskServer(sock_path, **SERVER)
        with pytest.raises(EngineBrokenError, match="lost when the catzilla-mp server restarted"):
            lost.wait(60)
        assert client.add_task(served_jobs.slow_square, 5, 0.0).wait(60) == 25
    finally:
        client.shutdown()
        server.close()


def test_a_lookup_from_another_process_carries_the_submitters_owner_for_the_web_routes(
        sock_path):
    server = TaskServer(sock_path, **SERVER)
    a = BackgroundTasks(server=sock_path)
    b = BackgroundTasks(server=sock_path)
    try:
        t = a.add_task(served_jobs.slow_square, 2, 0.0)
        t.meta = {"owner": "session:abc", "request": {"id": "r1"}}  # as the routes tag it
        found = b.get_task_result(t.task_id)
        assert found.meta == t.meta
        assert found.wait(60) == 4
    finally:
        a.shutdown()
        b.shutdown()
        server.close()


def test_a_forked_web_worker_whose_first_call_is_a_lookup_finds_the_task(sock_path):
    """gunicorn --preload: the engine is made in the master and a worker's first request
    may be a status lookup. The old code asked through the master's inherited
    connection, whose answers no thread of the child reads: UnknownTaskError (a 404
    in the CI run of tests/deploy/test_one_engine.py)."""
    server = TaskServer(sock_path, **SERVER)
    engine = BackgroundTasks(server=sock_path)
    submitter = BackgroundTasks(server=sock_path)
    try:
        task = submitter.add_task(served_jobs.slow_square, 6, 0.0)
        assert task.wait(60) == 36
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the web worker: its engine was made before the fork
            code = 1
            try:
                found = engine.get_task_result(task.task_id)
                code = 0 if found.wait(30) == 36 else 2
                engine.shutdown()
            finally:
                os.write(w, bytes([code]))
                os._exit(0)
        os.close(w)
        answer = os.read(r, 1)
        os.close(r)
        os.waitpid(pid, 0)
        assert answer == b"\x00"
    finally:
        engine.shutdown()
        submitter.shutdown()
        server.close()
