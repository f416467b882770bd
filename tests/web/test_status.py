"""The framework-free parts: error mapping, SSE format, request log."""
from __future__ import annotations

from catzilla_mp import (
    EngineClosedError,
    TaskCancelledError,
    TaskTimeoutError,
    WorkerCrashedError,
)
from catzilla_mp.integrations.status import error_info, error_status, sse
from catzilla_mp.integrations.tracking import (
    RequestInfo,
    RequestLog,
    current_request,
    request_id_from,
    request_scope,
)
from webservers import parse_sse


def test_each_kind_of_failure_has_its_own_status_code():
    assert error_status(TaskTimeoutError("t")) == 504
    assert error_status(WorkerCrashedError("w", -9)) == 502
    assert error_status(TaskCancelledError("c")) == 409
    assert error_status(EngineClosedError("e")) == 503
    assert error_status(ValueError("v")) == 500


def test_tracebacks_only_in_debug_mode():
    try:
        raise KeyError("k")
    except KeyError as exc:
        assert "traceback" not in error_info(exc)
        assert "KeyError" in error_info(exc, debug=True)["traceback"]
    assert error_info(WorkerCrashedError("gone", -9))["exitcode"] == -9


def test_an_sse_event_round_trips():
    text = sse({"a": "x\ny"}, event="status", id="k1", retry_ms=0)
    assert list(parse_sse(text)) == [{"retry": "0", "id": "k1", "event": "status",
                                      "data": {"a": "x\ny"}}]


def test_request_ids_scopes_and_log():
    assert request_id_from("abc-123") == "abc-123"
    made = request_id_from("bad\r\nheader: x")
    assert made != "bad\r\nheader: x" and len(made) == 32

    class FakeTask:
        meta = None
        task_id = "t1"

    log = RequestLog(keep=1)
    assert log.tag(FakeTask()) is None and current_request() is None
    with request_scope(RequestInfo("r1", "GET", "/x")):
        t = FakeTask()
        log.tag(t)
    assert t.meta == {"request": {"id": "r1", "method": "GET", "path": "/x"}, "owner": None}
    assert log.task_ids("r1", any_owner=True) == ["t1"]
    assert log.task_ids("r1") is None  # no owner: only an observer lists it
    with request_scope(RequestInfo("r2", "GET", "/y")):
        log.tag(FakeTask())
    assert log.task_ids("r1", any_owner=True) is None  # the oldest is forgotten past `keep`


def test_issue_12_5_a_request_id_with_a_trailing_newline_is_replaced():
    for bad in ("abc\n", "abc\r\n", "a b", "x" * 129, ""):
        assert request_id_from(bad) != bad
    assert request_id_from("req-1.2:3_4") == "req-1.2:3_4"


def test_issue_12_5_request_ids_are_scoped_by_owner():
    class FakeTask:
        def __init__(self, tid):
            self.meta, self.task_id = None, tid

    log = RequestLog(owner_of=lambda info: info.state.get("who"))
    for who, tid in (("alice", "t1"), ("mallory", "t2")):
        info = RequestInfo("shared-id", "POST", "/x")
        info.state["who"] = who
        with request_scope(info):
            log.tag(FakeTask(tid))
    # mallory reused alice's request id: each sees only their own tasks
    assert log.task_ids("shared-id", "alice") == ["t1"]
    assert log.task_ids("shared-id", "mallory") == ["t2"]
    assert log.task_ids("shared-id", "eve") is None
    assert sorted(log.task_ids("shared-id", any_owner=True)) == ["t1", "t2"]
