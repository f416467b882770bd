"""One engine per server (issue 14): gunicorn / uvicorn app processes share one `catzilla-mp serve` pool.

Each test starts a real `catzilla-mp serve` and a real multi-process web
server whose app processes are its clients (tests/deploy/served_app.py), then
checks: one pool (the serve process's workers are the only engine workers;
the web processes have none), every answer comes back to the process that
asked, and a task submitted through one process is found from the others.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import psutil
import pytest

from faultkit_deploy import free_port, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))


def _get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=90) as r:
        return json.loads(r.read())


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([HERE] + [p for p in sys.path if p]))


def _stop(proc: subprocess.Popen, log) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.seek(0)
    out = log.read()
    log.close()
    return out


def _start_serve(tmp_path, workers: int = 2):
    sock = str(tmp_path / "czmp" / "serve.sock")
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from catzilla_mp.cli import main; sys.exit(main())",
         "serve", "--socket", sock, "--workers", str(workers), "--queue-size", "256",
         "--memory-pool-mb", "16"], env=_env(), stdout=log, stderr=subprocess.STDOUT)
    wait_until(lambda: os.path.exists(sock) or proc.poll() is not None, timeout=120,
               what="catzilla-mp serve listening", step=0.05)
    assert proc.poll() is None, "catzilla-mp serve exited"
    return proc, sock, log


def _engine_workers(pid: int) -> set[int]:
    """Engine worker processes under ``pid``: they run catzilla_mp and start no process of
    their own (the zygote the workers are forked from is their parent, not a worker)."""
    out = set()
    for p in psutil.Process(pid).children(recursive=True):
        try:
            if "catzilla" in " ".join(p.cmdline()) and not p.children():
                out.add(p.pid)
        except psutil.Error:
            pass
    return out


def _check_one_pool(web_pid: int, serve_pid: int, answers: list[dict], workers: int) -> None:
    pool = _engine_workers(serve_pid)
    assert len(pool) == workers, pool
    assert {a["worker"] for a in answers} <= pool
    # the web server's processes start no engine workers of their own
    web = psutil.Process(web_pid)
    for p in [web] + web.children(recursive=True):
        assert not _engine_workers(p.pid), p


def _exercise(port: int, web_pid: int, serve_pid: int, web_procs: int) -> None:
    answers: list[dict] = []
    lock = threading.Lock()

    def client(start: int) -> None:
        for n in range(start, 60, 6):
            a = _get(port, f"/run?n={n}")
            with lock:
                answers.append(a)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a["n"] for a in answers) == list(range(60))
    assert all(a["value"] == a["n"] ** 2 for a in answers)  # each answer to its asker
    _check_one_pool(web_pid, serve_pid, answers, 2)
    # a task submitted through one process is found through the others
    sub = _get(port, "/submit?n=7")
    seen = set()
    deadline = time.monotonic() + 120
    while len(seen) < min(2, web_procs) and time.monotonic() < deadline:
        r = _get(port, f"/result?id={sub['id']}")
        assert r["value"] == 49 and r["status"] == "COMPLETED"
        seen.add(r["pid"])
    assert len(seen) >= 2, "every lookup landed on one process"
    assert seen - {sub["pid"]}  # found from a process other than the submitter


def _serve_web(cmd: list[str], tmp_path, sock: str):
    port = free_port()
    log = open(tmp_path / "web.log", "w+")
    proc = subprocess.Popen(cmd + ["--bind" if "gunicorn" in cmd else "--port",
                                   f"127.0.0.1:{port}" if "gunicorn" in cmd else str(port)],
                            cwd=HERE, env=dict(_env(), CZMP_SERVER=sock), stdout=log,
                            stderr=subprocess.STDOUT)

    def up() -> bool:
        try:
            _get(port, "/run?n=1")
            return True
        except OSError:
            assert proc.poll() is None, "the web server exited"
            return False

    wait_until(up, timeout=120, what="the web server answering", step=0.2)
    return proc, port, log


@pytest.mark.timeout_guard(300)
@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_gunicorn_workers_share_one_serve_pool_and_find_each_others_tasks(tmp_path, preload):
    pytest.importorskip("gunicorn")
    serve, sock, slog = _start_serve(tmp_path)
    web = wlog = None
    try:
        cmd = [sys.executable, "-m", "gunicorn", "-w", "3", "--graceful-timeout", "20"]
        web, port, wlog = _serve_web(cmd + (["--preload"] if preload else []) +
                                     ["served_app:app"], tmp_path, sock)
        _exercise(port, web.pid, serve.pid, 3)
    finally:
        wout = _stop(web, wlog) if web is not None else ""
        sout = _stop(serve, slog)
    assert web.returncode == 0, wout[-3000:]
    assert serve.returncode == 0, sout[-3000:]
    assert not os.path.exists(sock)


@pytest.mark.timeout_guard(300)
def test_uvicorn_workers_share_one_serve_pool_and_await_their_own_results(tmp_path):
    pytest.importorskip("uvicorn")
    serve, sock, slog = _start_serve(tmp_path)
    web = wlog = None
    try:
        cmd = [sys.executable, "-m", "uvicorn", "--workers", "2", "--host", "127.0.0.1",
               "served_app:asgi"]
        web, port, wlog = _serve_web(cmd, tmp_path, sock)
        _exercise(port, web.pid, serve.pid, 2)
    finally:
        wout = _stop(web, wlog) if web is not None else ""
        sout = _stop(serve, slog)
    assert serve.returncode == 0, sout[-3000:]
    assert not os.path.exists(sock)
