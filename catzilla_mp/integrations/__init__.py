"""Web integrations: the Catzilla app class and the ASGI (Starlette/FastAPI) toolkit.

Both offer the same routes under a configurable prefix (default ``/tasks``)::

    GET {prefix}/stats                    the engine's EngineStats as JSON
    GET {prefix}/requests/{request_id}    the tasks one HTTP request submitted
    GET {prefix}/{task_id}                a task's status, progress, timings, result or error
    GET {prefix}/{task_id}/events         Server-Sent Events of its status/progress changes

They are added when the server starts, after a check that none overlaps a
route of the app (``routing``: RouteConflictError naming both). Who may call
them is ``access``'s policy: a task answers the session or user that
submitted it; the observability routes local clients; an ``authorize`` hook
anyone it allows. The shared, framework-free parts live in ``tracking``
(which request submitted which task), ``access``, ``routing`` and ``status``
(JSON shapes and bounds, HTTP error mapping, SSE).
``catzilla`` and ``asgi`` import their frameworks, so import them only when
the matching extra is installed.
"""
