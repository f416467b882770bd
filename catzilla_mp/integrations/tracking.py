"""Request-scoped tracking: which HTTP request submitted which task.

A web integration opens a ``request_scope`` around each request's handler.
Tasks submitted inside it (through the integration's ``add_task``) carry the
request's id, method and path in ``TaskResult.meta["request"]``, and the
``RequestLog`` remembers the task ids of the last ``keep`` requests.

The scope is a ContextVar, so it follows the handler into threads started
by anyio/asyncio helpers that copy the context, and concurrent requests on
one event loop never see each other's scope.
"""
from __future__ import annotations

import re
import threading
import uuid
from collections import OrderedDict
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

#: The header a client may send to choose the request id; echoed in the response.
REQUEST_ID_HEADER = "X-Request-ID"
#: Client-chosen ids are kept only if they look like ids: they end up in
#: response headers and logs, so nothing that could split a header line
#: (fullmatch: ``$`` in re.match would let a trailing newline through).
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: A request's path is kept (in each task's meta) up to this many characters.
PATH_LIMIT = 512
#: Tasks remembered per request id (per owner); the oldest go first.
TASKS_PER_REQUEST = 1000

_current: ContextVar[Optional["RequestInfo"]] = ContextVar("catzilla_mp_request", default=None)


@dataclass(frozen=True)
class RequestInfo:
    """The request a task was submitted from."""

    id: str
    method: str
    path: str
    #: per-request scratch space of the integration (the caller, the owner,
    #: a cookie to set); never shown
    state: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.path) > PATH_LIMIT:
            object.__setattr__(self, "path", self.path[:PATH_LIMIT])

    def as_dict(self) -> dict:
        return {"id": self.id, "method": self.method, "path": self.path}


def request_id_from(header_value: Optional[str]) -> str:
    """The client's id if it is a safe token, else a fresh random one."""
    if header_value and _SAFE_ID.fullmatch(header_value):
        return header_value
    return uuid.uuid4().hex


def current_request() -> Optional[RequestInfo]:
    """The request being handled in this context, or None outside a request."""
    return _current.get()


@contextmanager
def request_scope(info: RequestInfo) -> Iterator[RequestInfo]:
    """Make ``info`` the current request for the duration of the block."""
    token = _current.set(info)
    try:
        yield info
    finally:
        _current.reset(token)


class RequestLog:
    """Task ids per (owner, request id), for the last ``keep`` such pairs.

    Request ids may be chosen by clients (X-Request-ID), so they are scoped
    by the owner of the tasks (see access.py): a client that sends someone
    else's request id files its tasks under its own owner, and lists only
    those. Bounded so a long-running server does not grow without limit;
    the oldest pair is forgotten first. Thread-safe.
    """

    def __init__(self, keep: int = 10_000, owner_of: Any = None) -> None:
        self.keep = keep
        #: owner_of(info) -> owner str or None; set by the integration
        self.owner_of = owner_of
        self._lock = threading.Lock()
        self._tasks: OrderedDict[tuple[Optional[str], str], list[str]] = OrderedDict()

    def tag(self, task) -> Optional[RequestInfo]:
        """Attach the current request (if any) and its owner to ``task``; remember it."""
        info = current_request()
        if info is None:
            return None
        if isinstance(task.meta, dict) and "owner" in task.meta:
            # tagged already: a unique job's TaskResult handed to a second
            # submission (job_id=) stays its first submitter's
            return None
        owner = self.owner_of(info) if self.owner_of is not None else None
        meta = task.meta if isinstance(task.meta, dict) else {}
        meta["request"] = info.as_dict()
        meta["owner"] = owner
        task.meta = meta
        key = (owner, info.id)
        with self._lock:
            ids = self._tasks.get(key)
            if ids is None:
                ids = self._tasks[key] = []
                while len(self._tasks) > self.keep:
                    self._tasks.popitem(last=False)
            ids.append(task.task_id)
            if len(ids) > TASKS_PER_REQUEST:
                del ids[: len(ids) - TASKS_PER_REQUEST]
        return info

    def task_ids(self, request_id: str, owner: Optional[str] = None,
                 any_owner: bool = False) -> Optional[list[str]]:
        """The ids of the tasks ``owner`` submitted in ``request_id``, oldest first.

        ``any_owner`` (for callers the authorize hook allows) merges every
        owner's. None if there are none.
        """
        with self._lock:
            if any_owner:
                found = [ids for (o, rid), ids in self._tasks.items() if rid == request_id]
                return [tid for ids in found for tid in ids] if found else None
            ids = self._tasks.get((owner, request_id)) if owner is not None else None
            return None if ids is None else list(ids)
