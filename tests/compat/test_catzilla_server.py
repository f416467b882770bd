"""Issue 13, items 1, 3, 4, 5 against the real Catzilla 0.2.3 server: the one-line switch."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("catzilla")
pytest.importorskip("httpx")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "web"))
from webservers import Server, free_port  # noqa: E402


@pytest.fixture
def switched_app(tmp_path):
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(HERE)] + [p for p in sys.path if p]))
    log = tmp_path / "catzilla-switch.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(HERE / "catzilla_switch_app.py"),
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=str(HERE))
    server = Server("catzilla", proc, port, log)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_issue_13_a_catzilla_app_written_from_its_docs_runs_with_one_line_changed(switched_app):
    client = switched_app.client
    created = client.post("/add")
    assert created.status_code == 200, created.text
    task_id = created.json()["task_id"]
    done = client.get("/add/result", params={"task_id": task_id})
    assert done.status_code == 200, done.text
    assert done.json() == {"result": 5}
    shouted = client.get("/shout", params={"word": "meow"})
    assert shouted.status_code == 200, shouted.text
    assert shouted.json() == {"result": "MEOW", "same": True}
