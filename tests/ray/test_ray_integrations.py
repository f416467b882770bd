"""The ASGI and Catzilla integrations, unchanged, on mode="ray" (issue 16)."""
from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request

import pytest

import ray_jobs as jobs


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.read().decode()


@pytest.fixture
def serve():
    """``serve(asgi_app) -> base URL``: uvicorn in a thread of this process."""
    uvicorn = pytest.importorskip("uvicorn")
    servers = []

    def start(app) -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(app, log_level="warning", lifespan="off",
                                timeout_graceful_shutdown=2)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        servers.append((server, thread, sock))
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    yield start
    for server, thread, sock in servers:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def test_the_asgi_integration_serves_status_metrics_and_dashboard_on_ray(ray_session, serve):
    pytest.importorskip("starlette")
    from starlette.applications import Starlette

    from catzilla_mp.integrations.asgi import AsgiTasks

    tasks = AsgiTasks(mode="ray", workers=1, queue_size=64)
    tasks.start()
    try:
        app = Starlette()
        tasks.install(app)
        base = serve(app)
        done = [tasks.add_task(jobs.square, i) for i in range(4)]
        assert [t.wait(60) for t in done] == [0, 1, 4, 9]
        status = json.loads(_get(f"{base}/tasks/{done[2].task_id}"))
        assert status["task_id"] == done[2].task_id and status["status"] == "COMPLETED"
        metrics = _get(base + "/metrics")
        assert 'catzilla_mp_tasks_completed_total{priority="normal",task="square"} 4.0' in metrics
        with urllib.request.urlopen(base + "/tasks/dashboard/events", timeout=30) as stream:
            line = stream.readline().decode()
            while not line.startswith("data: "):
                line = stream.readline().decode()
        snap = json.loads(line[6:])
        assert snap["engine"]["mode"] == "ray" and snap["totals"]["completed"] == 4
        assert len(snap["workers"]) == 1  # one Ray task in flight at most
    finally:
        tasks.shutdown(wait_for_completion=False, timeout=5)


def test_catzilla_s_task_api_works_unchanged_on_ray(ray_session):
    pytest.importorskip("catzilla")
    from catzilla_mp import Catzilla, TaskPriority
    from catzilla_mp.records import EngineStats

    app = Catzilla(production=True, show_banner=False, log_requests=False)
    app.enable_background_tasks(workers=1, min_workers=1, mode="ray")
    try:
        r = app.add_task(pow, 2, 10, priority=TaskPriority.HIGH, delay_ms=50, max_retries=0,
                         timeout_ms=30000, compile_to_c=None)
        assert r.wait(timeout=60) == 1024
        assert app.get_task_result(r.task_id) is r
        app.task(priority=TaskPriority.LOW, max_retries=0)(jobs.square)
        assert app.add_task(jobs.square, 21).wait(timeout=60) == 441
        stats = app.get_task_stats()
        assert isinstance(stats, EngineStats) and stats.total_tasks_processed == 2
    finally:
        app.disable_background_tasks()
