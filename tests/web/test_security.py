"""Issue 12 against the real servers: Catzilla 0.2.3's own (through catzilla_mp.enable on a
plain catzilla.Catzilla app) and uvicorn (AsgiTasks), as an anonymous client would try them.

A client that sends X-Forwarded-For is what a reverse proxy on the same host
forwards: the socket peer is loopback, the client is not local. One test
also connects through a non-loopback address of this machine.
"""
from __future__ import annotations

import re
import secrets
import threading
import time

import httpx
import psutil
import pytest


KINDS = ["catzilla", "fastapi"]
PROXIED = {"X-Forwarded-For": "203.0.113.9"}
OBSERVABILITY = ["/tasks/stats", "/metrics", "/tasks/dashboard", "/tasks/dashboard/events"]


def client(server, **headers) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=60.0, headers=headers)


def submit(c: httpx.Client, job: str, arg=None, path="/submit") -> dict:
    params = {"job": job} if arg is None else {"job": job, "arg": arg}
    r = c.post(path, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def status_of(c: httpx.Client, path: str) -> int:
    """The status code of GET ``path``, without reading a body (it may be an endless stream)."""
    with c.stream("GET", path) as r:
        return r.status_code


def wait_done(c: httpx.Client, task_id: str, prefix="/tasks") -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = c.get(f"{prefix}/{task_id}").json()
        if body.get("done"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} did not finish: {body}")


@pytest.mark.parametrize("kind", KINDS)
def test_issue_12_1_an_anonymous_client_reads_nothing(hostile, kind):
    server = hostile(kind)
    with client(server, **PROXIED) as alice, client(server, **PROXIED) as mallory, \
            client(server) as local:
        # Given alice's task with personal data, and a failed one with a secret in its error
        mine = submit(alice, "user_data")["task_id"]
        bad = submit(alice, "secret_error")["task_id"]
        assert wait_done(alice, mine)["result"] == {"user": "alice", "ssn": "078-05-1120"}
        assert "hunter2" in wait_done(alice, bad)["error"]["message"]  # her own task: she may
        # Then an anonymous client gets 404 for her tasks, as for ids that do not exist ...
        guessed = "task_" + secrets.token_hex(16)
        for tid in (mine, bad, guessed):
            for path in (f"/tasks/{tid}", f"/tasks/{tid}/events"):
                r = mallory.get(path)
                assert r.status_code == 404, (path, r.text)
                assert "078-05" not in r.text and "hunter2" not in r.text
                assert r.json()["error"]["type"] == "UnknownTask"
        # ... even with a made-up session cookie
        mallory.cookies.set("czmp_owner", "forged.0123456789abcdef0123456789abcdef")
        assert mallory.get(f"/tasks/{mine}").status_code == 404
        # And 403 on every observability route, the dashboard's task detail included
        for path in OBSERVABILITY + [f"/tasks/dashboard/task/{bad}"]:
            r = mallory.get(path)
            assert r.status_code == 403, (path, r.status_code, r.text[:200])
            assert "hunter2" not in r.text and "Traceback" not in r.text
        # While a local client (no proxy) sees the dashboard, without tracebacks (not debug)
        detail = local.get(f"/tasks/dashboard/task/{bad}").json()
        assert detail["error"]["type"] == "ValueError" and not detail["error"]["traceback"]
        assert local.get("/tasks/stats").status_code == 200
    # And the session cookie is HttpOnly
    assert re.search(r"czmp_owner=[^;]+;.*HttpOnly", _set_cookie(server), re.I)


def _set_cookie(server) -> str:
    with client(server) as c:
        return c.post("/submit", params={"job": "square"}).headers.get("set-cookie", "")


@pytest.mark.parametrize("kind", KINDS)
def test_issue_12_1_the_authorize_hook_opens_everything_to_whom_it_allows(hostile, kind):
    server = hostile(kind, admin_token="s3cret")
    with client(server, **PROXIED) as alice, \
            client(server, Authorization="Bearer s3cret", **PROXIED) as admin, \
            client(server, Authorization="Bearer wrong", **PROXIED) as mallory, \
            client(server) as local:
        tid = submit(alice, "square", 7)["task_id"]
        assert wait_done(alice, tid)["result"] == 49
        assert admin.get(f"/tasks/{tid}").json()["result"] == 49
        for path in OBSERVABILITY:
            assert status_of(admin, path) == 200, path
            assert status_of(mallory, path) == 403, path
            # with a hook, being local is nothing special
            assert status_of(local, path) == 403, path
        assert mallory.get(f"/tasks/{tid}").status_code == 404


@pytest.mark.parametrize("kind", KINDS)
def test_issue_12_5_a_reused_request_id_neither_reads_nor_appends_to_anothers_list(hostile, kind):
    server = hostile(kind)
    rid = {"X-Request-ID": "order-42"}
    with client(server, **PROXIED, **rid) as alice, client(server, **PROXIED, **rid) as mallory:
        a = submit(alice, "square", 2)["task_id"]
        m = submit(mallory, "square", 3)["task_id"]
        assert [t["task_id"] for t in alice.get("/tasks/requests/order-42").json()["tasks"]] == [a]
        assert [t["task_id"] for t in mallory.get("/tasks/requests/order-42").json()["tasks"]] == [m]
    with client(server, **PROXIED) as eve:
        assert eve.get("/tasks/requests/order-42").status_code == 404


@pytest.mark.parametrize("kind", KINDS)
def test_issue_12_2_answers_are_bounded_and_broken_objects_never_give_500(hostile, kind):
    server = hostile(kind)
    with client(server) as c:
        big = submit(c, "big", 2_000_000)["task_id"]
        body = wait_done(c, big)
        r = c.get(f"/tasks/{big}")
        assert r.status_code == 200 and len(r.content) < 100_000
        assert body["result"] is None and body["result_truncated"] is True
        assert body["result_repr"].startswith("[0, 1, 2")
        norepr = submit(c, "unrepresentable")["task_id"]
        assert "unrepresentable NoRepr" in wait_done(c, norepr)["result_repr"]
        nostr = submit(c, "unprintable")["task_id"]
        err = wait_done(c, nostr)["error"]
        assert err["type"] == "NoStr" and "unprintable NoStr" in err["message"]
        for tid in (big, norepr, nostr):
            d = c.get(f"/tasks/dashboard/task/{tid}")
            assert d.status_code == 200 and len(d.content) < 20_000, d.text[:300]


@pytest.mark.parametrize("kind", KINDS)
def test_issue_12_2_event_streams_are_capped_with_a_503(hostile, kind):
    server = hostile(kind, max_streams=2)
    with client(server) as c:
        # Given a task that runs for a while (its state does not change meanwhile)
        tid = submit(c, "sleep", 6.0)["task_id"]
        deadline = time.monotonic() + 60
        while c.get(f"/tasks/{tid}").json()["status"] != "RUNNING":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with c.stream("GET", f"/tasks/{tid}/events") as first:  # its first event only
            last = next(line[4:] for line in first.iter_lines() if line.startswith("id: "))
        answers: list[tuple[int, str, str]] = []
        start = threading.Barrier(4)

        def follow() -> None:
            # a stream past the last state seen: held open until the task changes
            with httpx.Client(base_url=server.url, timeout=60) as h:
                start.wait(30)
                r = h.get(f"/tasks/{tid}/events", headers={"Last-Event-ID": last})
                answers.append((r.status_code, r.headers.get("retry-after", ""), r.text))

        # When four clients follow it at once with room for two streams
        threads = [threading.Thread(target=follow) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        # Then two are held to the end, the others refused with 503 and Retry-After
        codes = sorted(code for code, _, _ in answers)
        assert len(codes) == 4 and set(codes) <= {200, 503} and 503 in codes, answers
        assert codes.count(200) <= 2
        for code, retry_after, text in answers:
            if code == 503:
                assert retry_after.isdigit() and "TooManyStreams" in text
        assert c.get("/ping").status_code == 200  # the server itself is fine
        wait_done(c, tid)


@pytest.mark.parametrize("kind", KINDS)
def test_issue_12_3_a_full_queue_answers_503_with_retry_after_and_never_freezes_the_server(
        hostile, kind):
    server = hostile(kind, queue_size=1, qft=3)
    with client(server) as c:
        holder = submit(c, "sleep", 8.0)["task_id"]
        # a sync handler: Catzilla answers at once; under uvicorn it waits qft in a thread
        r = c.post("/submit", params={"job": "square"})
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"].isdigit() and r.json()["error"]["type"] == "QueueFull"
        # an async handler waits for room off the loop: meanwhile other requests are served
        order: list[str] = []

        def slow_submit() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as s:
                order.append(f"submit {s.post('/submit-async', params={'job': 'square'}).status_code}")

        t = threading.Thread(target=slow_submit)
        t.start()
        time.sleep(0.3)  # let the submission start waiting (an order, not a timing assertion)
        for _ in range(5):
            assert c.get("/ping").status_code == 200
        order.append("pings")
        t.join(60)
        assert order == ["pings", "submit 503"], order
        assert wait_done(c, holder)["result"] == 8.0


@pytest.mark.parametrize("kind", KINDS)
def test_issue_13_7_an_app_route_that_clashes_with_the_engines_stops_the_start(hostile, kind):
    server = hostile(kind, wait=False, clash="1")
    try:
        server.proc.wait(60)
    except Exception:  # noqa: BLE001
        pass
    log = server.log.read_text()
    assert server.proc.returncode not in (None, 0), log
    assert "RouteConflictError" in log and "/tasks/{task_id}" in log
    assert "czmp_" in log and "my_own_task_route" in log  # both routes named


@pytest.mark.parametrize("kind", KINDS)
def test_issue_13_7_under_another_prefix_the_apps_own_route_and_the_engines_both_answer(
        hostile, kind):
    server = hostile(kind, clash="1", prefix="/jobs")
    with client(server) as c:
        tid = submit(c, "square", 5)["task_id"]
        assert c.get(f"/tasks/{tid}").json() == {"mine": tid}
        assert wait_done(c, tid, prefix="/jobs")["result"] == 25


def _non_loopback_ipv4() -> str | None:
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family.name == "AF_INET" and not a.address.startswith("127."):
                return a.address
    return None


@pytest.mark.parametrize("kind", KINDS)
def test_issue_12_1_a_client_on_another_address_is_not_local(hostile, kind):
    addr = _non_loopback_ipv4()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect through")
    server = hostile(kind, host="0.0.0.0")
    with httpx.Client(base_url=f"http://{addr}:{server.port}", timeout=30) as remote:
        assert remote.get("/ping").status_code == 200
        for path in OBSERVABILITY:
            assert status_of(remote, path) == 403, path
        tid = remote.post("/submit", params={"job": "square"}).json()["task_id"]
        assert wait_done(remote, tid)["result"] == 9   # its own session
    with httpx.Client(base_url=f"http://{addr}:{server.port}", timeout=30) as other:
        assert other.get(f"/tasks/{tid}").status_code == 404
