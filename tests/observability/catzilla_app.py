"""A catzilla_mp.Catzilla app (the integration: status routes, dashboard, /metrics), run as a
real server by test_catzilla_dashboard.py.

    python catzilla_app.py PORT
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from catzilla import JSONResponse  # noqa: E402

import obs_jobs  # noqa: E402
from catzilla_mp import Catzilla  # noqa: E402

app = Catzilla(production=True)
app.enable_background_tasks(workers=2, min_workers=1, memory_pool_mb=16, queue_size=256,
                            enable_auto_scaling=False)
engine = app.tasks


@app.get("/run/{n}")
def run(request):
    n = int(request.path_params["n"])
    tasks = [engine.add_task(obs_jobs.square, i) for i in range(n)]
    return JSONResponse({"sum": sum(t.wait(30) for t in tasks)})


@app.get("/fail")
def fail(request):
    t = engine.add_task(obs_jobs.fail, "catzilla says no", max_retries=0)
    try:
        t.wait(30)
    except ValueError:
        pass
    return JSONResponse({"task_id": t.task_id})


@app.get("/pids")
def pids(request):
    return JSONResponse(sorted(p.pid for p, _ in engine._backend.supervisor.snapshot()))


if __name__ == "__main__":
    try:
        app.listen(int(sys.argv[1]), host="127.0.0.1")
    finally:
        engine.shutdown(wait_for_completion=False, timeout=5)
