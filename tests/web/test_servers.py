"""End to end: the example apps under their real servers (Catzilla's own, uvicorn).

Every test runs against both (the ``server`` fixture is parametrized), through
HTTP with httpx, and leaves no server, worker or segment behind.
"""
from __future__ import annotations

import sys

import pytest

from webservers import EXAMPLES, follow_events

sys.path.insert(0, str(EXAMPLES))
from jobs import crunch  # noqa: E402  (the example's own job, run here for the expected value)

N, STEPS = 400_000, 10


def test_a_submitted_job_answers_at_once_then_streams_progress_and_its_result(server):
    # Given a handler that submits a CPU-heavy job
    resp = server.client.post("/crunch", params={"n": N, "steps": STEPS},
                              headers={"X-Request-ID": "req-progress-1"})
    # Then it answers with the task id before the job ends
    assert resp.status_code == 200
    body = resp.json()
    task_id = body["task_id"]
    assert body["request_id"] == "req-progress-1"
    assert resp.headers["x-request-id"] == "req-progress-1"

    # When we follow its event stream to the end
    events = follow_events(server, task_id)

    # Then it showed the task running with intermediate progress, and ended completed
    assert events[-1]["event"] == "end"
    assert all(e["event"] == "status" for e in events[:-1])
    running = [e["data"] for e in events if e["data"]["status"] == "RUNNING"]
    assert any(0 < (d["progress"] or 0) < 1 and d["message"].startswith("step ") for d in running), events
    fractions = [d["progress"] for d in running if d["progress"] is not None]
    assert fractions == sorted(fractions)
    final = events[-1]["data"]
    expected = crunch(N, STEPS)
    assert final["status"] == "COMPLETED" and final["result"] == expected
    assert final["progress"] == 1.0

    # And the status route says the same, with timings, attempts and worker
    status = server.client.get(f"/tasks/{task_id}").json()
    assert status["status"] == "COMPLETED" and status["result"] == expected
    assert status["attempts"] == 1 and status["worker"] is not None
    assert status["started_at"] >= status["created_at"]
    assert status["execution_time_ms"] > 0
    assert status["request"] == {"id": "req-progress-1", "method": "POST", "path": "/crunch"}


def test_tasks_of_one_request_are_listed_under_its_id(server):
    # Given a request without an id that submits three tasks
    resp = server.client.post("/batch", params={"count": 3})
    body = resp.json()
    rid = body["request_id"]
    # Then the server made an id up and echoed it
    assert rid and resp.headers["x-request-id"] == rid
    # And the request's route lists exactly its tasks, each tagged with it
    for tid in body["task_ids"]:
        follow_events(server, tid)
    listing = server.client.get(f"/tasks/requests/{rid}").json()
    assert [t["task_id"] for t in listing["tasks"]] == body["task_ids"]
    for t in listing["tasks"]:
        assert t["status"] == "COMPLETED"
        assert t["request"] == {"id": rid, "method": "POST", "path": "/batch"}
    # And another request's tasks are not mixed in
    other = server.client.post("/crunch", params={"n": 10, "steps": 1}).json()
    assert other["task_id"] not in [t["task_id"] for t in
                                    server.client.get(f"/tasks/requests/{rid}").json()["tasks"]]
    assert server.client.get("/tasks/requests/never-seen").status_code == 404


@pytest.mark.parametrize("kind, code, error_type", [
    ("error", 500, "ValueError"),
    ("crash", 502, "WorkerCrashedError"),
    ("timeout", 504, "TaskTimeoutError"),
])
def test_a_handler_waiting_for_a_failed_task_answers_with_its_error(server, kind, code, error_type):
    resp = server.client.get("/broken", params={"kind": kind})
    assert resp.status_code == code, resp.text
    body = resp.json()
    assert body["error"]["type"] == error_type
    assert body["error"]["message"]
    assert "traceback" not in body["error"]  # not in debug mode
    # the failed task's own status and stream say the same
    status = server.client.get(f"/tasks/{body['task_id']}").json()
    assert status["status"] == "FAILED" and status["error"]["type"] == error_type
    events = follow_events(server, body["task_id"])
    assert events[-1]["event"] == "end" and events[-1]["data"]["error"]["type"] == error_type


def test_stats_and_unknown_tasks(server):
    result = server.client.get("/crunch/wait", params={"n": 1000}).json()
    assert result["result"] == crunch(1000, 2)
    stats = server.client.get("/tasks/stats").json()
    assert len(stats) >= 26  # Catzilla's 26 fields, then catzilla_mp's own (issue 13.11)
    assert stats["total_workers"] == 2
    assert stats["total_tasks_processed"] >= 1
    missing = server.client.get("/tasks/task_does_not_exist")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "UnknownTask"
    assert server.client.get("/tasks/task_does_not_exist/events").status_code == 404


@pytest.mark.parametrize("kind", ["catzilla", "fastapi"])
def test_debug_mode_adds_the_workers_traceback_and_thread_mode_works(make_server, kind):
    server = make_server(kind, mode="thread", debug=True)
    resp = server.client.get("/broken", params={"kind": "error"})
    assert resp.status_code == 500
    error = resp.json()["error"]
    assert error["type"] == "ValueError"
    assert "explode" in error["traceback"]
    ok = server.client.post("/crunch", params={"n": 1000, "steps": 4}).json()
    events = follow_events(server, ok["task_id"])
    assert events[-1]["data"]["result"] == crunch(1000, 4)
