"""Helpers for the web tests: real servers: the example apps, started as subprocesses on 127.0.0.1.

Each test gets its own server (the global leak guard checks children per
test); ``stop`` sends SIGINT, which both Catzilla and uvicorn answer with a
clean shutdown that also shuts the engine and its workers.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import pytest

httpx = pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
#: What Catzilla 0.2.3 prints when its server aborts on shutdown (see Server.stop).
LIBUV_ABORT = "uv_close: Assertion"
#: Server start-up (imports, worker spawn) on a slow CI machine.
START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    kind: str
    proc: subprocess.Popen
    port: int
    log: Path
    client: "httpx.Client" = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, timeout=30.0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited early:\n{self.log.read_text()}")
            try:
                if self.client.get("/ping", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.kind} server not ready:\n{self.log.read_text()}")

    def stop(self) -> Optional[int]:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"{self.kind} server ignored SIGINT:\n{self.log.read_text()}")
        if self.proc.returncode == -signal.SIGABRT and LIBUV_ABORT in self.log.read_text():
            # Catzilla 0.2.3's C server sometimes aborts while closing after
            # SIGINT (a libuv assertion in uv_close), which skips the engine's
            # atexit shutdown. Its workers follow their dead app on their own;
            # its segment is what the next engine start sweeps, so sweep now.
            from catzilla_mp.segment_janitor import sweep_dead_segments

            sweep_dead_segments()
        return self.proc.returncode


def start_server(kind: str, tmp_path: Path, *, mode: str = "process", debug: bool = False) -> Server:
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env["PYTHONUNBUFFERED"] = "1"
    if kind == "catzilla":
        pytest.importorskip("catzilla")
        cmd = [sys.executable, str(EXAMPLES / "catzilla_app.py"), "--port", str(port),
               "--mode", mode, "--workers", "2"] + (["--debug"] if debug else [])
    else:
        pytest.importorskip("fastapi")
        pytest.importorskip("uvicorn")
        env.update(CZMP_MODE=mode, CZMP_WORKERS="2", CZMP_DEBUG="1" if debug else "0")
        cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(EXAMPLES), "fastapi_app:app",
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    log = tmp_path / f"{kind}-server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=str(ROOT))
    server = Server(kind, proc, port, log)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


# -- an EventSource, as a browser runs it ---------------------------------------------

def parse_sse(text: str) -> Iterator[dict]:
    """Events of an SSE body: dicts with event, id, retry, data (JSON-decoded)."""
    for block in text.replace("\r\n", "\n").split("\n\n"):
        ev: dict = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                ev["data"] = json.loads(value)
            elif name in ("event", "id", "retry"):
                ev[name] = value
        if "data" in ev:
            yield ev


def follow_events(server: Server, task_id: str, max_connections: int = 2000) -> list[dict]:
    """Read a task's event stream like an EventSource: reconnect with Last-Event-ID
    whenever a response ends, stop on 204. Bounded by ``max_connections``."""
    events: list[dict] = []
    last: Optional[str] = None
    for _ in range(max_connections):
        headers = {"Accept": "text/event-stream"}
        if last is not None:
            headers["Last-Event-ID"] = last
        with server.client.stream("GET", f"/tasks/{task_id}/events", headers=headers) as resp:
            if resp.status_code == 204:
                return events
            assert resp.status_code == 200, resp.read()
            assert resp.headers["content-type"].startswith("text/event-stream")
            buf = ""
            for chunk in resp.iter_text():
                buf += chunk
                while "\n\n" in buf:
                    block, buf = buf.split("\n\n", 1)
                    for ev in parse_sse(block + "\n\n"):
                        events.append(ev)
                        last = ev.get("id", last)
    raise AssertionError(f"event stream of {task_id} did not end: {events[-3:]}")


# -- the security tests' app (hostile_app.py) --------------------------------------------

WEB_TESTS = Path(__file__).resolve().parent


def hostile_command(kind: str, port: int, host: str = "127.0.0.1") -> tuple[list[str], dict]:
    env = dict(os.environ)
    env["CZMP_HOST"] = host
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env["PYTHONUNBUFFERED"] = "1"
    if kind == "catzilla":
        pytest.importorskip("catzilla")
        return [sys.executable, str(WEB_TESTS / "hostile_app.py"), "catzilla", str(port)], env
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    env["CZMP_BUILD_FASTAPI"] = "1"
    return [sys.executable, "-m", "uvicorn", "--app-dir", str(WEB_TESTS), "hostile_app:fastapi_app",
            "--host", host, "--port", str(port), "--log-level", "warning"], env


def start_hostile(kind: str, tmp_path: Path, wait: bool = True, host: str = "127.0.0.1",
                  **settings: str) -> Server:
    """hostile_app.py under ``kind``'s server; ``settings`` become CZMP_* variables."""
    port = free_port()
    cmd, env = hostile_command(kind, port, host)
    env.update({f"CZMP_{k.upper()}": str(v) for k, v in settings.items()})
    log = tmp_path / f"{kind}-hostile.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
    server = Server(kind, proc, port, log)
    if wait:
        try:
            server.wait_ready()
        except BaseException:
            server.stop()
            raise
    return server
