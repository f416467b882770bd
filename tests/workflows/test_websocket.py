"""WebSocket live updates in the ASGI integration, against real uvicorn with a real client (websockets).

The access rules are the SSE routes': a task's socket answers its owner (the
session cookie set by the submitting request) or whom ``authorize`` allows;
the dashboard's, loopback clients without a proxy header, or ``authorize``.
"""
from __future__ import annotations

import json
import socket
import threading
import time

import pytest

import wf_jobs as jobs

pytest.importorskip("starlette")
websockets_sync = pytest.importorskip("websockets.sync.client")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402
from websockets.exceptions import InvalidStatus  # noqa: E402

from catzilla_mp.integrations.asgi import AsgiTasks  # noqa: E402

WAIT = 30
#: what a client behind a reverse proxy sends: not a local client any more
PROXIED = {"X-Forwarded-For": "203.0.113.9"}
GATES: dict[str, threading.Event] = {}


def _gated(name: str):
    return jobs.wait_for(GATES[name], name)


@pytest.fixture
def serve():
    """``serve(asgi_app) -> (http base, ws base)``: uvicorn in a thread, stopped at teardown."""
    servers = []

    def start(app):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
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
        return f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"

    yield start
    for server, thread, sock in servers:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _app(**options):
    tasks = AsgiTasks(mode="thread", workers=2, memory_pool_mb=16, queue_size=64, **options)
    tasks.start()

    async def submit(request: Request):
        gate = request.query_params.get("gate")
        job_id = request.query_params.get("job_id")
        if job_id:
            task = tasks.add_task(jobs.sleep_then, 0.2, job_id, job_id=job_id)
        elif gate:
            GATES[gate] = threading.Event()
            task = tasks.add_task(_gated, gate)
        else:
            task = tasks.add_task(jobs.add, 20, 22)
        return JSONResponse({"task_id": task.task_id})

    app = Starlette(routes=[Route("/submit", submit, methods=["POST"])])
    tasks.install(app)
    return tasks, app


@pytest.fixture
def app_factory():
    made = []

    def make(**options):
        tasks, app = _app(**options)
        made.append(tasks)
        return tasks, app

    yield make
    for tasks in made:
        tasks.shutdown(wait_for_completion=False, timeout=5)


def _frames(ws, until_end=True, limit=100) -> list[dict]:
    out = []
    for _ in range(limit):
        out.append(json.loads(ws.recv(timeout=WAIT)))
        if until_end and out[-1]["event"] == "end":
            break
    return out


def test_a_task_socket_streams_its_owner_the_status_changes_then_the_end(app_factory, serve):
    _, app = app_factory()
    http, ws_base = serve(app)
    with httpx.Client(base_url=http) as owner:
        task_id = owner.post("/submit", params={"gate": "t1"}).json()["task_id"]
        cookie = "; ".join(f"{k}={v}" for k, v in owner.cookies.items())
    with websockets_sync.connect(f"{ws_base}/tasks/{task_id}/ws",
                                 additional_headers={**PROXIED, "Cookie": cookie}) as ws:
        first = json.loads(ws.recv(timeout=WAIT))
        assert first["event"] == "status" and first["data"]["task_id"] == task_id
        assert first["data"]["done"] is False
        GATES["t1"].set()
        frames = [first] + _frames(ws)
        # the socket is closed normally after the end
        with pytest.raises(Exception):
            ws.recv(timeout=WAIT)
    end = frames[-1]
    assert end["event"] == "end" and end["data"]["status"] == "COMPLETED"
    assert end["data"]["result"] == "t1"
    assert [f["event"] for f in frames].count("end") == 1


def test_a_task_socket_refuses_another_session_as_if_the_task_did_not_exist(app_factory, serve):
    _, app = app_factory()
    http, ws_base = serve(app)
    with httpx.Client(base_url=http) as owner:
        task_id = owner.post("/submit").json()["task_id"]
    # a client behind a proxy is not local (local clients may observe everything)
    with pytest.raises(InvalidStatus) as info:   # no cookie: not the owner
        websockets_sync.connect(f"{ws_base}/tasks/{task_id}/ws", open_timeout=WAIT,
                                additional_headers=PROXIED)
    assert info.value.response.status_code == 404
    with pytest.raises(InvalidStatus) as forged:
        websockets_sync.connect(f"{ws_base}/tasks/{task_id}/ws", open_timeout=WAIT,
                                additional_headers={**PROXIED,
                                                    "Cookie": "czmp_owner=forged.00ff"})
    assert forged.value.response.status_code == 404
    with pytest.raises(InvalidStatus) as unknown:
        websockets_sync.connect(f"{ws_base}/tasks/task_nope/ws", open_timeout=WAIT)
    assert unknown.value.response.status_code == 404
    # while a local client may observe, as on GET /tasks/{id}/events
    with websockets_sync.connect(f"{ws_base}/tasks/{task_id}/ws") as ws:
        assert _frames(ws)[-1]["data"]["result"] == 42


def test_the_authorize_hook_opens_every_task_socket_to_whom_it_allows(app_factory, serve):
    _, app = app_factory(authorize=lambda request: request.headers.get("x-admin") == "yes")
    http, ws_base = serve(app)
    with httpx.Client(base_url=http) as someone:
        task_id = someone.post("/submit").json()["task_id"]
    with pytest.raises(InvalidStatus) as info:
        websockets_sync.connect(f"{ws_base}/tasks/{task_id}/ws", open_timeout=WAIT,
                                additional_headers=PROXIED)
    assert info.value.response.status_code == 404
    with websockets_sync.connect(f"{ws_base}/tasks/{task_id}/ws",
                                 additional_headers={**PROXIED, "X-Admin": "yes"}) as ws:
        frames = _frames(ws)
    assert frames[-1]["event"] == "end" and frames[-1]["data"]["result"] == 42


def test_the_dashboard_socket_sends_snapshots_to_local_clients_only(app_factory, serve):
    tasks, app = app_factory()
    http, ws_base = serve(app)
    tasks.add_task(jobs.add, 1).wait(WAIT)
    with websockets_sync.connect(f"{ws_base}/tasks/dashboard/ws") as ws:
        first = json.loads(ws.recv(timeout=WAIT))
        second = json.loads(ws.recv(timeout=WAIT))
    assert first["event"] == "snapshot" and first["data"]["series_reset"] is True
    assert first["data"]["totals"]["completed"] >= 1
    assert second["event"] == "snapshot" and second["data"]["series_reset"] is False
    # a proxied client is not local: refused as the SSE stream refuses it
    with pytest.raises(InvalidStatus) as info:
        websockets_sync.connect(f"{ws_base}/tasks/dashboard/ws", open_timeout=WAIT,
                                additional_headers=PROXIED)
    assert info.value.response.status_code == 403


def test_sockets_share_the_stream_cap_and_a_closed_one_gives_its_place_back(app_factory, serve):
    _, app = app_factory(max_streams=1)
    http, ws_base = serve(app)
    with websockets_sync.connect(f"{ws_base}/tasks/dashboard/ws") as first:
        first.recv(timeout=WAIT)
        with pytest.raises(InvalidStatus) as info:
            websockets_sync.connect(f"{ws_base}/tasks/dashboard/ws", open_timeout=WAIT)
        assert info.value.response.status_code == 503
        assert httpx.get(f"{http}/tasks/dashboard/events", timeout=WAIT).status_code == 503
    deadline = time.monotonic() + WAIT
    while True:  # the server notices the close a moment later
        try:
            with websockets_sync.connect(f"{ws_base}/tasks/dashboard/ws") as again:
                assert json.loads(again.recv(timeout=WAIT))["event"] == "snapshot"
            break
        except InvalidStatus:
            assert time.monotonic() < deadline, "the closed socket's place never came back"
            time.sleep(0.1)


def test_the_dashboard_page_says_a_websocket_is_there(app_factory, serve):
    _, app = app_factory()
    http, _ = serve(app)
    page = httpx.get(f"{http}/tasks/dashboard", timeout=WAIT).text
    assert 'data-ws="1"' in page and "connectWs" in page


CHROMIUM_OK = bool(__import__("shutil").which("chromium") and __import__("shutil").which("chromedriver"))


@pytest.mark.skipif(not CHROMIUM_OK, reason="chromium and chromedriver are not installed")
def test_the_dashboard_in_a_browser_reads_the_websocket(app_factory, serve):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    tasks, app = app_factory()
    http, _ = serve(app)
    tasks.add_task(jobs.add, 1).wait(WAIT)
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(__import__("shutil").which("chromedriver")),
                              options=opts)
    try:
        driver.get(f"{http}/tasks/dashboard")
        deadline = time.monotonic() + WAIT
        body = driver.find_element("tag name", "body")
        while int(body.get_attribute("data-updates") or 0) < 2:
            assert time.monotonic() < deadline, "the dashboard got no updates"
            time.sleep(0.1)
        assert body.get_attribute("data-transport") == "websocket"
    finally:
        driver.quit()


def test_a_unique_job_returned_to_another_session_stays_its_first_submitters(app_factory, serve):
    _, app = app_factory()
    http, _ = serve(app)
    with httpx.Client(base_url=http, headers=PROXIED) as alice, \
            httpx.Client(base_url=http, headers=PROXIED) as bob:
        first = alice.post("/submit", params={"job_id": "nightly"}).json()["task_id"]
        second = bob.post("/submit", params={"job_id": "nightly"}).json()["task_id"]
        assert second == first  # the same TaskResult (arq's job_id)
        # alice still reads her task; bob's second submission did not take it over
        assert alice.get(f"/tasks/{first}").status_code == 200
        assert bob.get(f"/tasks/{first}").status_code == 404
