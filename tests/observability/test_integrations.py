"""The dashboard and /metrics as the ASGI integration (AsgiTasks.install) serves them."""
from __future__ import annotations

import json
import urllib.request

import pytest

import obs_jobs
from obs_helpers import page_pids, text, wait_until, worker_pids

pytest.importorskip("starlette")
from starlette.applications import Starlette  # noqa: E402

from catzilla_mp.integrations.asgi import AsgiTasks  # noqa: E402


def get(url: str):
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.headers, resp.read().decode()


@pytest.fixture
def asgi_tasks():
    tasks = AsgiTasks(workers=2, min_workers=1, memory_pool_mb=16, queue_size=256,
                      enable_auto_scaling=False)
    tasks.start()   # what the lifespan does; the serve fixture runs uvicorn without one
    yield tasks
    tasks.shutdown(wait_for_completion=False, timeout=5)


def test_asgi_install_serves_dashboard_metrics_and_keeps_the_status_routes(asgi_tasks, serve):
    app = Starlette()
    asgi_tasks.install(app)
    base = serve(app)
    engine = asgi_tasks.engine
    done = [asgi_tasks.add_task(obs_jobs.square, i) for i in range(6)]
    for t in done:
        t.wait(30)

    headers, page = get(base + "/tasks/dashboard")
    assert headers["Content-Type"].startswith("text/html") and 'data-base="/tasks/dashboard"' in page
    for path in ("/metrics", "/tasks/metrics"):   # counted from the engine's start
        _, metrics = get(base + path)
        assert 'catzilla_mp_tasks_completed_total{priority="normal",task="square"} 6.0' in metrics
    detail = json.loads(get(f"{base}/tasks/dashboard/task/{done[0].task_id}")[1])
    assert detail["result"] == "0" and detail["status"] == "completed"
    # the integration's own routes are untouched
    status = json.loads(get(f"{base}/tasks/{done[1].task_id}")[1])
    assert status["task_id"] == done[1].task_id
    # the stream: its first event is the engine now
    with urllib.request.urlopen(base + "/tasks/dashboard/events", timeout=30) as stream:
        line = stream.readline().decode()
        while not line.startswith("data: "):
            line = stream.readline().decode()
    snap = json.loads(line[6:])
    assert snap["totals"]["completed"] == 6
    assert [w["pid"] for w in snap["workers"]] == worker_pids(engine)


@pytest.mark.timeout_guard(240)
def test_asgi_dashboard_in_a_real_browser(asgi_tasks, serve, browser):
    app = Starlette()
    asgi_tasks.install(app)
    base = serve(app)
    for t in [asgi_tasks.add_task(obs_jobs.square, i) for i in range(9)]:
        t.wait(30)
    browser.get(base + "/tasks/dashboard")
    wait_until(lambda: text(browser, "total-completed") == "9", what="9 completed on the page")
    assert page_pids(browser) == worker_pids(asgi_tasks.engine)
    for t in [asgi_tasks.add_task(obs_jobs.square, i) for i in range(3)]:
        t.wait(30)
    wait_until(lambda: text(browser, "total-completed") == "12", what="page updated to 12")
    assert [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")] == []
