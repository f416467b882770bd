"""The app the security tests attack, on Catzilla's own server or under uvicorn.

    python hostile_app.py catzilla PORT                  # catzilla_mp.enable() on a plain catzilla app
    uvicorn --app-dir tests/web hostile_app:fastapi_app  # AsgiTasks

Options from the environment: CZMP_QUEUE_SIZE (64), CZMP_QFT (queue_full_timeout, 10),
CZMP_MAX_STREAMS (32), CZMP_PREFIX (/tasks), CZMP_CLASH (1: the app has its own
GET /tasks/{task_id}), CZMP_ADMIN_TOKEN (the authorize hook's bearer token; unset: no hook).
"""
# (no "from __future__ import annotations": FastAPI reads the endpoints' annotations)

import hmac
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hostile_jobs as jobs  # noqa: E402

from catzilla_mp.integrations.tracking import current_request  # noqa: E402

ADMIN = os.environ.get("CZMP_ADMIN_TOKEN", "")
PREFIX = os.environ.get("CZMP_PREFIX", "/tasks")
ENGINE = dict(workers=1, min_workers=1, mode="process", memory_pool_mb=32,
              queue_size=int(os.environ.get("CZMP_QUEUE_SIZE", "64")),
              queue_full_timeout=float(os.environ.get("CZMP_QFT", "10")))
ACCESS = dict(max_streams=int(os.environ.get("CZMP_MAX_STREAMS", "32")))


def _token_ok(sent: str) -> bool:
    return hmac.compare_digest((sent or "").encode(), f"Bearer {ADMIN}".encode())


def links(task) -> dict:
    return {"task_id": task.task_id, "request_id": current_request().id}


def build_catzilla():
    import catzilla

    import catzilla_mp

    app = catzilla.Catzilla(production=True, show_banner=False, log_requests=False)
    catzilla_mp.enable(app, tasks_prefix=PREFIX, debug=False,
                       authorize=(lambda r: _token_ok(r.get_header("Authorization")))
                       if ADMIN else None, **ACCESS, **ENGINE)

    @app.get("/ping")
    def ping(request):
        return {"ok": True}

    @app.post("/submit")
    def submit(request):  # sync: add_task never waits for room on Catzilla's loop
        job = request.query_params.get("job", "square")
        return links(app.add_task(getattr(jobs, job), *_args(request), max_retries=0))

    @app.post("/submit-async")
    async def submit_async(request):
        job = request.query_params.get("job", "square")
        return links(await app.add_task_async(getattr(jobs, job), *_args(request), max_retries=0))

    if os.environ.get("CZMP_CLASH"):
        @app.get("/tasks/{task_id}")
        def my_own_task_route(request):
            return {"mine": request.path_params["task_id"]}
    return app


def build_fastapi():
    from fastapi import FastAPI, Request

    from catzilla_mp.integrations.asgi import AsgiTasks

    tasks = AsgiTasks(prefix=PREFIX, authorize=(lambda r: _token_ok(r.headers.get("authorization")))
                      if ADMIN else None, **ACCESS, **ENGINE)
    app = FastAPI(lifespan=tasks.lifespan)
    tasks.install(app)

    @app.get("/ping")
    async def ping():
        return {"ok": True}

    @app.post("/submit")
    def submit(request: Request, job: str = "square"):  # sync: a threadpool thread
        return links(tasks.add_task(getattr(jobs, job), *_args(request), max_retries=0))

    @app.post("/submit-async")
    async def submit_async(request: Request, job: str = "square"):
        return links(await tasks.add_task_async(getattr(jobs, job), *_args(request),
                                                max_retries=0))

    if os.environ.get("CZMP_CLASH"):
        @app.get("/tasks/{task_id}")
        async def my_own_task_route(task_id: str):
            return {"mine": task_id}
    return app


def _args(request) -> tuple:
    arg = request.query_params.get("arg")
    return () if arg is None else (float(arg) if "." in arg else int(arg),)


if __name__ == "__main__":
    build_catzilla().listen(int(sys.argv[2]), os.environ.get("CZMP_HOST", "127.0.0.1"))
else:
    fastapi_app = build_fastapi() if os.environ.get("CZMP_BUILD_FASTAPI") else None
