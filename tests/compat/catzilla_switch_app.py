"""A Catzilla app written from Catzilla's own docs, switched by one line (issue 13).

Run by test_catzilla_server.py as ``python catzilla_switch_app.py --port N``.
Everything below is Catzilla's spelling (catzilla.background_tasks.TaskPriority,
initial_workers=, the bare @app.task, get_task_result(task_result)); only the
marked import differs from the framework's own example.
"""
from __future__ import annotations

import argparse

from catzilla import JSONResponse
from catzilla.background_tasks import TaskPriority

import compat_jobs as jobs
from catzilla_mp import Catzilla  # the one line: was `from catzilla import Catzilla`

app = Catzilla(production=True, show_banner=False, log_requests=False)
app.enable_background_tasks(initial_workers=2, max_workers=4, queue_size=10000,
                            memory_pool_mb=32)


@app.task
def shout(word: str) -> str:
    return word.upper()


@app.get("/ping")
def ping(request):
    return JSONResponse({"ok": True})


@app.post("/add")
def add(request):
    task_result = app.add_task(jobs.add, 2, 3, priority=TaskPriority.HIGH)
    return JSONResponse({"task_id": task_result.task_id})


@app.get("/add/result")
def add_result(request):
    task_result = app.get_task_result(request.query_params["task_id"])
    return JSONResponse({"result": task_result.wait(timeout=30)})


@app.get("/shout")
def shout_now(request):
    task_result = app.add_task(shout, request.query_params.get("word", "hi"),
                               priority=TaskPriority.CRITICAL)
    same = app.get_task_result(task_result)  # Catzilla's docs pass the TaskResult itself
    return JSONResponse({"result": same.wait(timeout=30), "same": same is task_result})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app.listen(args.port, "127.0.0.1")


if __name__ == "__main__":
    main()
