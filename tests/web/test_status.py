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
    assert t.meta == {"request": {"id": "r1", "method": "GET", "path": "/x"}}
    assert log.task_ids("r1") == ["t1"]
    with request_scope(RequestInfo("r2", "GET", "/y")):
        log.tag(FakeTask())
    assert log.task_ids("r1") is None  # the oldest request is forgotten past `keep`
