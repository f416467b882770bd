"""The access policy and the route-clash check, without a server (access.py, routing.py)."""
from __future__ import annotations

import asyncio

import pytest

from catzilla_mp import RouteConflictError
from catzilla_mp.integrations.access import Caller, TaskAccess, is_loopback
from catzilla_mp.integrations.routing import check_no_clash, paths_overlap
from catzilla_mp.integrations.tracking import RequestInfo


class FakeTask:
    def __init__(self, owner):
        self.meta = {"owner": owner}


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("peer, local", [
    ("127.0.0.1", True), ("127.3.4.5", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("192.0.2.2", False), ("::ffff:10.0.0.1", False), ("", False), (None, False),
    ("localhost", False), ("127.0.0.1\n", False),
])
def test_issue_12_1_only_loopback_addresses_are_local(peer, local):
    assert is_loopback(peer) is local


def test_issue_12_1_a_submission_mints_a_signed_session_that_alone_reads_the_task():
    access = TaskAccess()
    info = RequestInfo("r", "POST", "/x")
    info.state["caller"] = Caller(None, "192.0.2.9", False)
    owner = access.owner_for_submission(info)
    cookie = info.state["set_cookie"]
    assert cookie.startswith("czmp_owner=") and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    value = cookie.split(";")[0].split("=", 1)[1]
    task = FakeTask(owner)
    # the session that submitted it reads it; nobody else does, whatever cookie they make up
    assert run(access.may_read(Caller(None, "192.0.2.9", False, value), task))
    token = value.split(".")[0]
    for forged in (None, "", token, token + ".00", value + "x", "x" * 500):
        assert not run(access.may_read(Caller(None, "192.0.2.9", False, forged), task)), forged
    # a second submission in the same request keeps the same owner
    assert access.owner_for_submission(info) == owner
    # another engine's key does not accept the cookie
    assert not run(TaskAccess().may_read(Caller(None, "192.0.2.9", False, value), task))
    assert run(TaskAccess(secret=b"k").may_read(Caller(None, "192.0.2.9", False, value), task)) is False


def test_issue_12_1_an_owner_hook_makes_tasks_belong_to_the_apps_user():
    access = TaskAccess(owner=lambda request: request.get("user"))
    info = RequestInfo("r", "POST", "/x")
    info.state["caller"] = Caller({"user": "alice"}, "192.0.2.9", False)
    task = FakeTask(access.owner_for_submission(info))
    assert "set_cookie" not in info.state
    assert run(access.may_read(Caller({"user": "alice"}, "198.51.100.1", False), task))
    assert not run(access.may_read(Caller({"user": "bob"}, "198.51.100.1", False), task))
    assert not run(access.may_read(Caller({}, "198.51.100.1", False), task))


def test_issue_12_1_the_authorize_hook_replaces_the_local_rule_and_may_be_async():
    async def allow(request):
        return request == "admin"

    access = TaskAccess(allow)
    assert run(access.may_observe(Caller("admin", "203.0.113.1", True)))
    assert not run(access.may_observe(Caller("anyone", "127.0.0.1", False)))
    assert run(access.may_read(Caller("admin", "203.0.113.1", True), FakeTask(None)))
    default = TaskAccess()
    assert run(default.may_observe(Caller(None, "127.0.0.1", False)))
    assert not run(default.may_observe(Caller(None, "127.0.0.1", True)))   # via a local proxy
    with pytest.raises(TypeError):
        TaskAccess("yes")


@pytest.mark.parametrize("a, b, overlap", [
    ("/tasks/{task_id}", "/tasks/stats", True), ("/tasks/{a}", "/tasks/{b}", True),
    ("/tasks/{a}/events", "/tasks/{b}", False), ("/jobs/{id}", "/tasks/{id}", False),
    ("/tasks/{rest:path}", "/tasks/a/b/c", True), ("/metrics", "/metrics/", True),
])
def test_issue_13_7_route_templates_overlap_when_one_path_matches_both(a, b, overlap):
    assert paths_overlap(a, b) is overlap


def test_issue_13_7_an_asgi_app_whose_route_clashes_is_refused_at_install_and_at_startup():
    starlette = pytest.importorskip("starlette.applications")
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    from catzilla_mp.integrations.asgi import AsgiTasks

    async def mine(request):
        return PlainTextResponse("mine")

    app = starlette.Starlette(routes=[Route("/tasks/{task_id}", mine, name="mine")])
    with pytest.raises(RouteConflictError, match=r"mine"):
        AsgiTasks(workers=1).install(app)
    # a route the app adds after install() is caught when the lifespan starts, before any engine
    app2 = starlette.Starlette()
    tasks = AsgiTasks(workers=1)
    tasks.install(app2)
    app2.router.routes.append(Mount("/metrics", routes=[], name="their_metrics"))

    async def start():
        async with tasks.lifespan(app2):
            pass

    with pytest.raises(RouteConflictError, match="their_metrics"):
        asyncio.run(start())
    assert tasks._engine is None
    check_no_clash([("GET", "/jobs/{id}", "ours")], [("POST", "/jobs/{id}", "theirs")])  # methods differ
