"""A Catzilla app whose handlers hand CPU-heavy jobs to catzilla_mp and answer at once.

    pip install -e ".[catzilla]"
    python examples/catzilla_app.py --port 8000

    curl -X POST 'localhost:8000/crunch?n=300000'        # {"task_id": ..., "events_url": ...}
    curl localhost:8000/tasks/<task_id>                   # status, progress, result
    curl localhost:8000/tasks/<task_id>/events            # SSE, one change per response
    curl -H 'X-Request-ID: r1' -X POST 'localhost:8000/batch?count=3'
    curl localhost:8000/tasks/requests/r1                 # the three tasks of request r1
    curl 'localhost:8000/broken?kind=crash'               # 502 with the error as JSON
    curl localhost:8000/tasks/stats
"""
from __future__ import annotations

import argparse

from jobs import crash, crunch, explode, linger

from catzilla_mp import Catzilla
from catzilla_mp.integrations.tracking import current_request

app = Catzilla(production=True, show_banner=False, log_requests=False)

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
    n = int(request.query_params.get("n", 300_000))
    steps = int(request.query_params.get("steps", 10))
    return _links(app.add_task(crunch, n, steps))


@app.post("/batch")
def submit_batch(request):
    count = min(int(request.query_params.get("count", 3)), 100)
    tasks = [app.add_task(crunch, 50_000, 2) for _ in range(count)]
    return {"request_id": current_request().id, "task_ids": [t.task_id for t in tasks]}


@app.get("/crunch/wait")
async def crunch_and_wait(request):
    # an async handler waits without holding Catzilla's event loop
    n = int(request.query_params.get("n", 100_000))
    task = app.add_task(crunch, n, 2)
    return {"task_id": task.task_id, "result": await app.wait_for_async(task, timeout=60)}


@app.get("/broken")
async def broken(request):
    fn, options = _BROKEN[request.query_params.get("kind", "error")]
    task = app.add_task(fn, **options)
    return {"result": await app.wait_for_async(task, timeout=60)}  # raises TaskHTTPError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--mode", default="process", choices=["process", "thread"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--niceness", type=int, default=10,
                        help="workers' nice value: the server wins the CPU when a request arrives")
    parser.add_argument("--debug", action="store_true", help="tracebacks in error bodies")
    args = parser.parse_args()
    app.task_debug = app.task_routes.debug = args.debug
    options = {"worker_niceness": args.niceness} if args.mode == "process" else {}
    app.enable_background_tasks(workers=args.workers, mode=args.mode, **options)
    print(f"catzilla_app ready on http://{args.host}:{args.port}", flush=True)
    app.listen(args.port, args.host)   # returns on SIGINT/SIGTERM; the engine shuts at exit


if __name__ == "__main__":
    main()
