"""A WSGI and an ASGI app whose engine is a client of `catzilla-mp serve` (CZMP_SERVER: its socket).

    gunicorn [--preload] -w 3 served_app:app        uvicorn --workers 2 served_app:asgi

Routes: /run?n=N (submit, wait, answer), /submit?n=N (answer the id at once),
/result?id=ID (the value, from whichever process submitted it).
"""
from __future__ import annotations

import json
import os
from urllib.parse import parse_qs

import served_jobs
from catzilla_mp import BackgroundTasks, UnknownTaskError

engine = BackgroundTasks(server=os.environ["CZMP_SERVER"], queue_full_timeout=30)


def handle(path: str, query: dict) -> tuple[str, dict]:
    if path == "/run":
        n = int(query["n"][0])
        value, worker = engine.add_task(served_jobs.whoami, n).wait(60)
        return "200 OK", {"n": n, "value": value, "worker": worker}
    if path == "/submit":
        task = engine.add_task(served_jobs.slow_square, int(query["n"][0]))
        return "200 OK", {"id": task.task_id}
    if path == "/result":
        try:
            task = engine.get_task_result(query["id"][0])
        except UnknownTaskError:
            return "404 Not Found", {"error": "unknown"}
        return "200 OK", {"value": task.wait(60), "status": task.status.name}
    return "404 Not Found", {}


def app(environ, start_response):
    status, answer = handle(environ["PATH_INFO"], parse_qs(environ.get("QUERY_STRING", "")))
    answer["pid"] = os.getpid()
    body = json.dumps(answer).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
    return [body]


async def asgi(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    query = parse_qs(scope.get("query_string", b"").decode())
    if scope["path"] == "/run":
        # the async path: add_task_async, then await the task's future
        n = int(query["n"][0])
        task = await engine.add_task_async(served_jobs.whoami, n)
        value, worker = await task.future
        code, answer = 200, {"n": n, "value": value, "worker": worker}
    else:
        status, answer = handle(scope["path"], query)
        code = int(status.split()[0])
    answer["pid"] = os.getpid()
    body = json.dumps(answer).encode()
    await send({"type": "http.response.start", "status": code,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
