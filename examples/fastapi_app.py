"""A FastAPI app whose endpoints hand CPU-heavy jobs to catzilla_mp and answer at once.

    pip install -e ".[web]"
    uvicorn --app-dir examples fastapi_app:app --port 8000

Same routes as catzilla_app.py; here /tasks/<id>/events is one long SSE stream
that ends with the task. Settings come from the environment:
CZMP_MODE (process), CZMP_WORKERS (2), CZMP_NICENESS (10), CZMP_DEBUG (0).
"""
from __future__ import annotations

import os

from fastapi import FastAPI
from jobs import crash, crunch, explode, linger

from catzilla_mp.integrations.asgi import AsgiTasks
from catzilla_mp.integrations.tracking import current_request

_mode = os.environ.get("CZMP_MODE", "process")
tasks = AsgiTasks(
    workers=int(os.environ.get("CZMP_WORKERS", "2")), mode=_mode,
    debug=os.environ.get("CZMP_DEBUG", "0") == "1",
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
    return _links(tasks.add_task(crunch, n, steps))


@app.post("/batch")
def submit_batch(count: int = 3):
    submitted = [tasks.add_task(crunch, 50_000, 2) for _ in range(min(count, 100))]
    return {"request_id": current_request().id, "task_ids": [t.task_id for t in submitted]}


@app.get("/crunch/wait")
async def crunch_and_wait(n: int = 100_000):
    task = tasks.add_task(crunch, n, 2)
    return {"task_id": task.task_id, "result": await tasks.wait(task, timeout=60)}


@app.get("/broken")
async def broken(kind: str = "error"):
    fn, options = _BROKEN[kind]
    return {"result": await tasks.wait(tasks.add_task(fn, **options), timeout=60)}
