"""A WSGI app that builds its engine at import: run with `gunicorn --preload -w 3 gunicorn_app:app`.

With --preload the master imports this module (and starts the engine) once,
then forks the web workers: the layout that shared one engine's slots
between processes before issue 11.1.
"""
from __future__ import annotations

import json
import os

import deploy_jobs
from catzilla_mp import BackgroundTasks

engine = BackgroundTasks(workers=1, memory_pool_mb=8, queue_size=256, shutdown_timeout=5)
# the master uses it before the fork, as an app warming up would
assert engine.add_task(deploy_jobs.square, 2).wait(60) == 4


def app(environ, start_response):
    n = int(environ.get("QUERY_STRING", "n=0").partition("=")[2])
    value, worker = engine.add_task(deploy_jobs.whoami, n).wait(30)
    body = json.dumps({"n": n, "value": value, "worker": worker, "server": os.getpid(),
                       "segment": engine._backend.seg.name}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
