"""Joining a Ray cluster started apart from the app, with Ray 2.60's token authentication.

The head runs on 127.0.0.1 with its own temporary directory and ports, and a
token of this test's (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN); the app joins it
from a subprocess (a process holds one Ray connection, and this one may hold
the session's local Ray). Everything the head started is killed at the end,
found by the token in its environment: ``ray stop`` would stop every Ray on
the host.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import psutil
import pytest

DRIVER = r"""
import json, sys
import ray
from catzilla_mp import BackgroundTasks, TaskTimeoutError
import ray_jobs as jobs

with BackgroundTasks(mode="ray", address=sys.argv[1], workers=1, queue_size=64) as engine:
    values = [r.wait(120) for r in engine.add_tasks(jobs.square, range(20))]
    late = engine.add_task(jobs.add, 1, 2, delay_ms=200, priority="critical").wait(120)
    try:
        engine.add_task(jobs.pid_then_block, sys.argv[2], 60, timeout_ms=1500).wait(120)
        timed_out = False
    except TaskTimeoutError:
        timed_out = True
    gcs = ray.get_runtime_context().gcs_address
print(json.dumps({"values": values, "late": late, "timed_out": timed_out, "gcs": gcs,
                  "after": ray.is_initialized()}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ours(token: str) -> list[psutil.Process]:
    """Every process the head started: they carry its token in their environment (Ray's
    workers leave the head's process group, and outlive a killed raylet for a while)."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("RAY_AUTH_TOKEN") == token:
                found.append(p)
        except psutil.Error:
            pass
    return found


def _stop(head: subprocess.Popen, token: str, temp_dir: str) -> None:
    """Stop the head's processes, never another Ray on the host (``ray stop`` would)."""
    # no graceful stop: nothing of this cluster is worth keeping, and killing is quick
    try:
        os.killpg(head.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 30
    while True:
        procs = [p for p in _ours(token) if p.pid != os.getpid()]
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        gone, alive = psutil.wait_procs(procs, timeout=5)
        if not alive or time.monotonic() > deadline:
            break
    if head.poll() is None:
        head.kill()
    head.wait()
    shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_listening(port: int, head: subprocess.Popen, log, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert head.poll() is None, log.read_text()[-3000:]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, "ray start never listened"
            time.sleep(0.2)


@pytest.mark.timeout_guard(240)
def test_an_engine_joins_a_cluster_started_by_ray_start_with_a_token(tmp_path):
    pytest.importorskip("ray")
    ray_cli = shutil.which("ray") or os.path.join(os.path.dirname(sys.executable), "ray")
    temp_dir = tempfile.mkdtemp(prefix="czmp-rc-")  # short: Ray's socket paths must fit
    port = _free_port()
    token = secrets.token_hex(16)
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token,
               PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "head.log"
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
         f"--temp-dir={temp_dir}", "--num-cpus=1", "--include-dashboard=false",
         "--disable-usage-stats",
         f"--dashboard-agent-listen-port={_free_port()}", f"--metrics-export-port={_free_port()}",
         f"--runtime-env-agent-port={_free_port()}"],
        env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_listening(port, head, log)
        address = f"127.0.0.1:{port}"
        run = subprocess.run([sys.executable, "-c", DRIVER, address, str(tmp_path / "pid")],
                             env=env, capture_output=True, text=True, timeout=150)
        assert run.returncode == 0, run.stderr[-3000:]
        out = json.loads(run.stdout.strip().splitlines()[-1])
        assert out["values"] == [i * i for i in range(20)] and out["late"] == 3
        assert out["timed_out"] is True
        assert out["gcs"].endswith(f":{port}")  # the cluster we started, not a Ray of its own
        assert out["after"] is False  # the engine's shutdown left the cluster
    finally:
        _stop(head, token, temp_dir)
