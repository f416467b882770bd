"""The dashboard in a real headless browser (Debian's chromium + chromium-driver, selenium).

The page is served by dashboard_routes() in a Starlette app under uvicorn;
the engine lives in this test process, so each number on the page is checked
against what the engine itself did. Skipped when chromium or selenium is
missing. CZMP_SAVE_SCREENSHOT=1 saves the screenshot as docs/dashboard.png
(the README's picture); otherwise it goes to the test's tmp dir.
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import time
import urllib.request

import pytest

import obs_jobs
from catzilla_mp import TaskPriority
from catzilla_mp.observability import instrument
from obs_helpers import click, field, page_pids, text, text_of, updates, wait_until, worker_pids

starlette = pytest.importorskip("starlette.applications")
from catzilla_mp.observability.asgi import dashboard_routes  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]


def make_app(engine, prefix="/tasks", debug=False):
    return starlette.Starlette(routes=dashboard_routes(engine, prefix=prefix, debug=debug))


# -- without a browser: the routes themselves ------------------------------------

def test_routes_serve_page_stream_task_detail_and_metrics(make_engine, serve):
    engine = make_engine(workers=1)
    instrument(engine)
    r = engine.add_task(obs_jobs.square, 7)
    assert r.wait(30) == 49
    base = serve(make_app(engine))

    page = urllib.request.urlopen(base + "/tasks/dashboard", timeout=10)
    html = page.read().decode()
    assert page.headers["Content-Type"].startswith("text/html")
    assert 'data-base="/tasks/dashboard"' in html
    assert "/*__JS__*/" not in html and "EventSource" in html   # script inlined
    assert "http://" not in html and "https://" not in html     # nothing from the network

    detail = json.load(urllib.request.urlopen(f"{base}/tasks/dashboard/task/{r.task_id}", timeout=10))
    assert detail["status"] == "completed" and detail["result"] == "49" and detail["name"] == "square"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(base + "/tasks/dashboard/task/nope", timeout=10)
    assert err.value.code == 404

    metrics = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    assert 'catzilla_mp_tasks_completed_total{priority="normal",task="square"} 1.0' in metrics

    stream = urllib.request.urlopen(base + "/tasks/dashboard/events", timeout=10)
    assert stream.headers["Content-Type"].startswith("text/event-stream")
    events = []
    while len(events) < 2:
        line = stream.readline().decode()
        if line.startswith("data: "):
            events.append(json.loads(line[6:]))
    stream.close()
    assert events[0]["series_reset"] is True and events[1]["series_reset"] is False
    assert events[0]["totals"]["completed"] == 1
    assert [w["pid"] for w in events[0]["workers"]] == worker_pids(engine)


# -- in the browser --------------------------------------------------------------

@pytest.mark.timeout_guard(240)
def test_dashboard_shows_a_live_engine_in_a_real_browser(make_engine, serve, browser, tmp_path):
    # Given an engine that ran a known workload: 12 squares, 3 failures
    engine = make_engine(workers=2, max_workers=2)
    instrument(engine)
    done = [engine.add_task(obs_jobs.square, i) for i in range(12)]
    failed = [engine.add_task(obs_jobs.fail, f"bad input {i}", max_retries=0) for i in range(3)]
    for t in done:
        t.wait(30)
    for t in failed:
        with pytest.raises(ValueError):
            t.wait(30)
    base = serve(make_app(engine, debug=True))  # debug: the failure's traceback is shown

    # When the dashboard is opened
    browser.get(base + "/tasks/dashboard")
    wait_until(lambda: updates(browser) >= 1, what="first snapshot rendered")

    # Then it shows those numbers, the live workers and the failures
    wait_until(lambda: text(browser, "total-completed") == "12", what="12 completed on the page")
    assert text(browser, "total-failed") == "3"
    assert text(browser, "total-submitted") == "15"
    assert page_pids(browser) == worker_pids(engine)
    failures = text(browser, "failures-body")
    assert failures.count("ValueError") == 3 and "bad input 2" in failures
    assert text(browser, "q-normal-n") == "0"

    # And it updates as tasks complete, and shows what a worker is running
    gate = tmp_path / "release"
    holder = engine.add_task(obs_jobs.wait_for_file, str(gate), priority=TaskPriority.HIGH)
    more = [engine.add_task(obs_jobs.square, i) for i in range(5)]
    for t in more:
        t.wait(30)
    wait_until(lambda: text(browser, "total-completed") == "17", what="17 completed on the page")
    current = f'#workers-body a[data-task-id="{holder.task_id}"]'
    wait_until(lambda: "wait_for_file" in (text_of(browser, current) or ""), what="running task shown")

    # a click on it opens its detail
    click(browser, current)
    wait_until(lambda: browser.find_element("id", "detail").is_displayed(), what="detail panel")
    wait_until(lambda: field(browser, "status") == "running", what="detail says running")
    assert field(browser, "task") == "wait_for_file"
    click(browser, "#detail-close")

    # When an idle worker is killed, the page shows its replacement, not a ghost
    busy_index = holder.get_stats().worker_id
    victim = next(p for p, _ in engine._backend.supervisor.snapshot() if p.index != busy_index)
    os.kill(victim.pid, signal.SIGKILL)
    wait_until(lambda: len(worker_pids(engine)) == 2 and victim.pid not in worker_pids(engine),
               what="killed worker replaced")
    wait_until(lambda: page_pids(browser) == worker_pids(engine), what="page shows the new pid")
    assert victim.pid not in page_pids(browser)

    # And a failure's detail shows its error type and message on click
    click(browser, f'#failures-body a[data-task-id="{failed[0].task_id}"]')
    wait_until(lambda: field(browser, "error").startswith("ValueError: bad input 0"), what="failure detail")
    assert "raise ValueError(message)" in text(browser, "detail-error")

    # some traffic for the charts (more when making the README's picture), then the picture
    gate.write_text("go")
    assert holder.wait(30) == "released"
    saving = bool(os.environ.get("CZMP_SAVE_SCREENSHOT"))
    completed, failed_n = 18, 3
    # a steady stream of short tasks (longer when making the README's picture),
    # with a task that fails after one retry now and then
    for r in range(120 if saving else 12):
        size = 6 + (r * 7) % 11
        batch = [engine.add_task(obs_jobs.nap, 0.002 * ((i + r) % 13),
                                 priority=TaskPriority.HIGH if i % 5 == 0 else TaskPriority.NORMAL)
                 for i in range(size)]
        flaky = [engine.add_task(obs_jobs.fail, f"round {r}: upstream said 503", max_retries=1,
                                 priority="low") for _ in range(r % 25 == 7)]
        for t in batch:
            t.wait(30)
        for t in flaky:
            with pytest.raises(ValueError):
                t.wait(30)
        completed, failed_n = completed + size, failed_n + len(flaky)
        time.sleep(0.2)  # pacing for the charts, not a synchronisation
    wait_until(lambda: text(browser, "total-completed") == f"{completed:,}", what="all completions shown")
    assert text(browser, "total-failed") == str(failed_n)
    click(browser, "#detail-close")
    shot = REPO / "docs" / "dashboard.png" if saving else tmp_path / "dashboard.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000

    # And the page logged no errors at all
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
