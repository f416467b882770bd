"""An engine made before a fork (issue 11.1): every forked child gets an engine of its own.

The child's copy of the engine shares nothing with the parent's: on first
use it starts its own segment and workers; tasks the parent submitted before
the fork fail in the child with EngineBrokenError (their results go to the
parent). Tested with plain os.fork() and with a real `gunicorn --preload -w 3`.
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import urllib.request

import psutil
import pytest

import deploy_jobs
from catzilla_mp import EngineBrokenError, TaskStatus
from faultkit_deploy import free_port, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))


def _child(engine, inherited, w) -> None:
    """In the forked child: use the inherited engine, report through the pipe, never return."""
    code = 1
    try:
        results = [engine.add_task(deploy_jobs.whoami, i) for i in range(40)]
        values = [r.wait(30) for r in results]
        try:
            inherited.wait(10)
            inherited_error = None
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            inherited_error = type(exc).__name__
        report = {"right": all(v == i * i for i, (v, _) in enumerate(values)),
                  "workers": sorted({pid for _, pid in values}),
                  "segment": engine._backend.seg.name, "inherited": inherited_error}
        engine.shutdown()
        report["segment_left"] = os.path.exists(f"/dev/shm/{report['segment']}")
        os.write(w, json.dumps(report).encode())
        code = 0
    except BaseException as exc:  # noqa: BLE001
        os.write(w, json.dumps({"error": repr(exc)}).encode())
    finally:
        os._exit(code)


def _read_report(r, timeout: float) -> dict:
    chunks = []
    while True:
        ready, _, _ = select.select([r], [], [], timeout)
        if not ready:
            raise AssertionError(f"the child reported nothing within {timeout} s")
        data = os.read(r, 65536)
        if not data:
            return json.loads(b"".join(chunks) or b"{}")
        chunks.append(data)


def test_an_engine_made_before_os_fork_is_a_new_engine_in_the_child(make_engine, tmp_path):
    """Issue 11.1: parent and child shared one engine's slots, rings and collector:
    the parent got results wrong, the child's tasks hung."""
    engine = make_engine()
    go = str(tmp_path / "go")
    inherited = engine.add_task(deploy_jobs.wait_for_file, go)
    wait_until(lambda: inherited.get_stats().status is TaskStatus.RUNNING,
               what="the parent's task running")
    parent_workers = {w.pid for w, _ in engine._backend.supervisor.snapshot()}
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _child(engine, inherited, w)
    os.close(w)
    try:
        mine = [engine.add_task(deploy_jobs.whoami, i) for i in range(40)]
        open(go, "w").close()
        report = _read_report(r, 90)
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    assert "error" not in report, report
    assert os.waitstatus_to_exitcode(status) == 0
    assert report["right"] and report["inherited"] == EngineBrokenError.__name__
    assert not set(report["workers"]) & parent_workers, "the child used the parent's workers"
    assert report["segment"] != engine._backend.seg.name and not report["segment_left"]
    assert [t.wait(30)[0] for t in mine] == [i * i for i in range(40)]
    assert inherited.wait(30) >= 0  # the parent's own task is the parent's


def _get(port: int, n: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/?n={n}", timeout=60) as resp:
        return json.loads(resp.read())


def _descendants(ignore: frozenset = frozenset()) -> list[psutil.Process]:
    """Our live descendants but those in ``ignore`` (alive before the test: a session's Ray)."""
    out = []
    for p in psutil.Process().children(recursive=True):
        if p.pid in ignore:
            continue
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.timeout_guard(300)
def test_gunicorn_preload_with_three_workers_answers_every_request_right(tmp_path):
    """Issue 11.1, with a real `gunicorn --preload -w 3` app (tests/deploy/gunicorn_app.py):
    each web worker gets an engine of its own, every answer is right, and a
    SIGTERM to the master leaves no process and no segment behind."""
    before = frozenset(p.pid for p in _descendants())
    pytest.importorskip("gunicorn")
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE] + [p for p in sys.path if p]))
    log = open(tmp_path / "gunicorn.log", "w+")
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--preload", "-w", "3", "-b", f"127.0.0.1:{port}",
         "--graceful-timeout", "20", "gunicorn_app:app"],
        cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def up():
            try:
                _get(port, 1)
                return True
            except OSError:
                assert server.poll() is None, "gunicorn exited"
                return False
        wait_until(up, timeout=120, what="gunicorn answering", step=0.2)
        answers: list[dict] = []
        lock = threading.Lock()

        def client(start: int) -> None:
            for n in range(start, 120, 6):
                a = _get(port, n)
                with lock:
                    answers.append(a)
        threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(answers) == 120
        wrong = [a for a in answers if a["value"] != a["n"] ** 2]
        assert not wrong, wrong[:5]
        # an engine per web worker: no engine worker served two web workers
        by_server: dict[int, set] = {}
        for a in answers:
            by_server.setdefault(a["server"], set()).add((a["worker"], a["segment"]))
        seen: set = set()
        for pairs in by_server.values():
            assert not pairs & seen
            seen |= pairs
        assert server.pid not in by_server
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.seek(0)
        output = log.read()
        log.close()
    assert server.returncode == 0, output[-3000:]
    wait_until(lambda: not _descendants(before), timeout=30, what="every process gone")
    segments = {seg for pairs in by_server.values() for _, seg in pairs}
    assert not [n for n in os.listdir("/dev/shm") if n in segments or str(server.pid) in n]
