"""A Catzilla app whose handlers hand CPU-heavy jobs to catzilla_mp and answer at once.

    pip install -e ".[catzilla]"
    python examples/catzilla_app.py --port 8000         # CZMP_ADMIN_TOKEN=... to allow remote admins

    curl -c jar -X POST 'localhost:8000/crunch?n=300000'  # {"task_id": ..., "events_url": ...}
    curl -b jar localhost:8000/tasks/<task_id>            # status, progress, result (your session)
    curl -b jar localhost:8000/tasks/<task_id>/events     # SSE, one change per response
    curl -c jar -b jar -H 'X-Request-ID: r1' -X POST 'localhost:8000/batch?count=3'
    curl -b jar localhost:8000/tasks/requests/r1          # the three tasks of your request r1
    curl 'localhost:8000/broken?kind=crash'               # 502 with the error as JSON
    curl localhost:8000/tasks/stats                       # local clients and admins only

Who may read what (catzilla_mp.integrations.access): a task answers the
browser session that submitted it (the czmp_owner cookie the submitting
response sets); the dashboard, stats and /metrics answer the ``authorize``
hook below: local clients, and callers with the admin token.
"""
from __future__ import annotations

import argparse
import hmac
import os

from jobs import crash, crunch, explode, linger

from catzilla_mp import Catzilla
from catzilla_mp.integrations.catzilla import is_local_request
from catzilla_mp.integrations.tracking import current_request

ADMIN_TOKEN = os.environ.get("CZMP_ADMIN_TOKEN", "")


def authorize(request) -> bool:
    """Who may see every task, the dashboard, stats and metrics.

    Put your app's own check here (a session role, an API key); this one
    lets in local clients (no proxy in between) and "Authorization: Bearer
    $CZMP_ADMIN_TOKEN".
    """
    if is_local_request(request):
        return True
    sent = request.get_header("Authorization") or ""
    return bool(ADMIN_TOKEN) and hmac.compare_digest(sent.encode(), f"Bearer {ADMIN_TOKEN}".encode())


app = Catzilla(production=True, show_banner=False, log_requests=False,
               task_authorize=authorize)

_BROKEN = {
    "error": (explode, {"max_retries": 0}),
    "crash": (crash, {"max_retries": 0}),
    "timeout": (linger, {"max_retries": 0, "timeout_ms": 300}),
}


def _links(task) -> dict:
    return {"task_id": task.task_id, "request_id": current_request().id,
            "status_url": f"/tasks/{task.task_id}", "events_url": f"/tasks/{task.task_id}/events"}


@app.get("/ping")
def ping(request):
    return {"ok": True}


@app.post("/crunch")
def submit_crunch(request):
    # a sync handler runs on Catzilla's event loop: add_task does not wait for
    # room here; a full queue answers 503 with Retry-After
    n = int(request.query_params.get("n", 300_000))
    steps = int(request.query_params.get("steps", 10))
    return _links(app.add_task(crunch, n, steps))


@app.post("/sleep")
async def submit_sleep(request):
    # an async handler waits for room without blocking the loop (up to queue_full_timeout)
    seconds = min(float(request.query_params.get("s", 1.0)), 30.0)
    return _links(await app.add_task_async(linger, seconds, max_retries=0))


@app.post("/batch")
def submit_batch(request):
    count = min(int(request.query_params.get("count", 3)), 100)
    tasks = [app.add_task(crunch, 50_000, 2) for _ in range(count)]
    return {"request_id": current_request().id, "task_ids": [t.task_id for t in tasks]}


@app.get("/crunch/wait")
async def crunch_and_wait(request):
    # an async handler waits without holding Catzilla's event loop
    n = int(request.query_params.get("n", 100_000))
    task = await app.add_task_async(crunch, n, 2)
    return {"task_id": task.task_id, "result": await app.wait_for_async(task, timeout=60)}


@app.get("/broken")
async def broken(request):
    fn, options = _BROKEN[request.query_params.get("kind", "error")]
    task = await app.add_task_async(fn, **options)
    return {"result": await app.wait_for_async(task, timeout=60)}  # raises TaskHTTPError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--mode", default="process", choices=["process", "thread"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--queue-size", type=int, default=10000)
    parser.add_argument("--queue-full-timeout", type=float, default=10.0)
    parser.add_argument("--niceness", type=int, default=10,
                        help="workers' nice value: the server wins the CPU when a request arrives")
    parser.add_argument("--debug", action="store_true", help="tracebacks in error bodies")
    args = parser.parse_args()
    app.task_debug = app.task_routes.debug = args.debug
    options = {"worker_niceness": args.niceness} if args.mode == "process" else {}
    app.enable_background_tasks(workers=args.workers, mode=args.mode, queue_size=args.queue_size,
                                queue_full_timeout=args.queue_full_timeout, **options)
    print(f"catzilla_app ready on http://{args.host}:{args.port}", flush=True)
    app.listen(args.port, args.host)   # returns on SIGINT/SIGTERM; the engine shuts at exit


if __name__ == "__main__":
    main()
