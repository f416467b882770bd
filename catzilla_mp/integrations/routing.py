"""Route clashes: the engine's routes must never silently shadow the app's own.

An app with its own ``GET /tasks/{task_id}`` and the engine's routes under
``/tasks`` would each answer some of the other's requests, depending on
registration order. Both integrations compare their routes with the app's
at startup and raise RouteConflictError naming both, so the fix (another
``prefix``, or ``prefix=None`` and mounting them by hand) is made once, at
deploy time, not discovered in production.
"""
from __future__ import annotations

from typing import Iterable, Optional

from ..errors import RouteConflictError

#: (method or None for any, path template, name) of one route.
RouteSpec = tuple[Optional[str], str, str]


def _segments(path: str) -> list[str]:
    return [s for s in path.split("/") if s]


def _is_param(seg: str) -> bool:
    return seg.startswith("{") and seg.endswith("}")


def _is_rest(seg: str) -> bool:
    # Starlette's {name:path} matches the rest of the path, slashes included
    return _is_param(seg) and seg[1:-1].partition(":")[2] == "path"


def paths_overlap(a: str, b: str, *, a_is_prefix: bool = False) -> bool:
    """True if some request path matches both templates (``a_is_prefix``: a is a mount)."""
    sa, sb = _segments(a), _segments(b)
    for i in range(max(len(sa), len(sb))):
        if a_is_prefix and i == len(sa):
            return True
        if i >= len(sa) or i >= len(sb):
            return False
        x, y = sa[i], sb[i]
        if _is_rest(x) or _is_rest(y):
            return True
        if x != y and not _is_param(x) and not _is_param(y):
            return False
    return True


def check_no_clash(ours: Iterable[RouteSpec], theirs: Iterable[RouteSpec],
                   mounts: Iterable[tuple[str, str]] = ()) -> None:
    """Raises RouteConflictError for the first of ``ours`` that overlaps one of ``theirs``.

    ``mounts`` are the app's (prefix, name) sub-apps: they take every path under them.
    """
    theirs = list(theirs)
    mounts = list(mounts)
    for method, path, name in ours:
        for t_method, t_path, t_name in theirs:
            if method and t_method and method != t_method and not (
                    {method, t_method} == {"GET", "HEAD"}):
                continue
            if paths_overlap(path, t_path):
                raise RouteConflictError(
                    f"the task engine's route {method or '*'} {path} ({name}) and the app's "
                    f"route {t_method or '*'} {t_path} ({t_name}) answer the same paths: "
                    "give the engine's routes another prefix (tasks_prefix= / prefix=), or "
                    "None to leave them out")
        for m_path, m_name in mounts:
            if paths_overlap(m_path, path, a_is_prefix=True):
                raise RouteConflictError(
                    f"the task engine's route {method or '*'} {path} ({name}) is under the "
                    f"app's mount {m_path} ({m_name}): give the engine's routes another prefix")
