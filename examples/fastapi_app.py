"""A FastAPI app whose endpoints hand CPU-heavy jobs to catzilla_mp and answer at once.

    pip install -e ".[web]"
    uvicorn --app-dir examples fastapi_app:app --port 8000

Same routes as catzilla_app.py; here /tasks/<id>/events is one long SSE stream
that ends with the task. Settings come from the environment:
CZMP_MODE (process), CZMP_WORKERS (2), CZMP_NICENESS (10), CZMP_DEBUG (0),
CZMP_QUEUE_SIZE (10000), CZMP_QUEUE_FULL_TIMEOUT (10), CZMP_ADMIN_TOKEN (none).

Who may read what (catzilla_mp.integrations.access): a task answers the
browser session that submitted it (the czmp_owner cookie); the dashboard,
stats and /metrics answer the ``authorize`` hook below.
"""
from __future__ import annotations

import hmac
import os

from fastapi import FastAPI, Request
from jobs import crash, crunch, explode, linger

from catzilla_mp.integrations.asgi import AsgiTasks, is_local_request
from catzilla_mp.integrations.tracking import current_request

ADMIN_TOKEN = os.environ.get("CZMP_ADMIN_TOKEN", "")


def authorize(request: Request) -> bool:
    """Who may see every task, the dashboard, stats and metrics.

    Put your app's own check here (the same one your admin dependency makes);
    this one lets in local clients (no proxy in between) and "Authorization:
    Bearer $CZMP_ADMIN_TOKEN".
    """
    if is_local_request(request):
        return True
    sent = request.headers.get("authorization", "")
    return bool(ADMIN_TOKEN) and hmac.compare_digest(sent.encode(), f"Bearer {ADMIN_TOKEN}".encode())


_mode = os.environ.get("CZMP_MODE", "process")
tasks = AsgiTasks(
    workers=int(os.environ.get("CZMP_WORKERS", "2")), mode=_mode,
    debug=os.environ.get("CZMP_DEBUG", "0") == "1", authorize=authorize,
    queue_size=int(os.environ.get("CZMP_QUEUE_SIZE", "10000")),
    queue_full_timeout=float(os.environ.get("CZMP_QUEUE_FULL_TIMEOUT", "10")),
    **({"worker_niceness": int(os.environ.get("CZMP_NICENESS", "10"))}
       if _mode == "process" else {}))
app = FastAPI(title="catzilla_mp example", lifespan=tasks.lifespan)
tasks.install(app)

_BROKEN = {
    "error": (explode, {"max_retries": 0}),
    "crash": (crash, {"max_retries": 0}),
    "timeout": (linger, {"max_retries": 0, "timeout_ms": 300}),
}


def _links(task) -> dict:
    return {"task_id": task.task_id, "request_id": current_request().id,
            "status_url": f"/tasks/{task.task_id}", "events_url": f"/tasks/{task.task_id}/events"}


@app.get("/ping")
async def ping():
    return {"ok": True}


@app.post("/crunch")
def submit_crunch(n: int = 300_000, steps: int = 10):
    # a sync endpoint runs in a threadpool: add_task may wait for room there
    return _links(tasks.add_task(crunch, n, steps))


@app.post("/sleep")
async def submit_sleep(s: float = 1.0):
    # an async endpoint waits for room without blocking the loop (QueueFullError -> 503)
    return _links(await tasks.add_task_async(linger, min(s, 30.0), max_retries=0))


@app.post("/batch")
def submit_batch(count: int = 3):
    submitted = [tasks.add_task(crunch, 50_000, 2) for _ in range(min(count, 100))]
    return {"request_id": current_request().id, "task_ids": [t.task_id for t in submitted]}


@app.get("/crunch/wait")
async def crunch_and_wait(n: int = 100_000):
    task = await tasks.add_task_async(crunch, n, 2)
    return {"task_id": task.task_id, "result": await tasks.wait(task, timeout=60)}


@app.get("/broken")
async def broken(kind: str = "error"):
    fn, options = _BROKEN[kind]
    return {"result": await tasks.wait(await tasks.add_task_async(fn, **options), timeout=60)}
