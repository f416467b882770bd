"""``catzilla-mp top``: attached read-only to a live engine from another process.

The live mode runs in a pseudo-terminal (python's pty module), as a person
would run it in a second shell; --once is checked as plain output.
"""
from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

import obs_jobs
from catzilla_mp.errors import SegmentCorruptError
from catzilla_mp.observability.safe_view import SafeSegmentView, find_segments
from catzilla_mp.observability.top import TargetError, resolve
from obs_helpers import wait_until, worker_pids


def top_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "catzilla_mp.cli", "top", *args]


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env["COLUMNS"], env["LINES"] = "140", "40"
    return env


def test_top_once_shows_the_workers_and_counts_of_an_engine(make_engine, tmp_path):
    # Given an engine that ran 25 tasks and is running a 26th until released
    engine = make_engine(workers=2)
    for t in [engine.add_task(obs_jobs.square, i) for i in range(25)]:
        t.wait(30)
    gate = tmp_path / "go"
    held = engine.add_task(obs_jobs.wait_for_file, str(gate), priority="high")
    wait_until(lambda: held.get_stats().worker_id is not None and engine.get_stats().active_workers == 1,
               what="task running")
    # When top prints one frame, attached by the owner's pid
    out = subprocess.run(top_cmd(str(os.getpid()), "--once"), capture_output=True, text=True,
                         env=child_env(), timeout=60)
    # Then it names the segment and shows each worker's pid, one busy on a HIGH task, and the counts
    assert out.returncode == 0, out.stderr
    assert engine._backend.seg.name in out.stdout
    for pid in worker_pids(engine):
        assert re.search(rf"^\s+\d+\s+{pid}\s+(idle|busy)", out.stdout, re.M), out.stdout
    assert re.search(r"\bbusy\b.*\bhigh\b", out.stdout), out.stdout
    assert "tasks done 25" in out.stdout
    assert "2 live, 1 busy" in out.stdout
    gate.write_text("go")
    assert held.wait(30) == "released"


def test_top_live_in_a_terminal_follows_the_engine_and_quits_on_q(make_engine):
    engine = make_engine(workers=2)
    name = engine._backend.seg.name
    master, slave = pty.openpty()
    proc = subprocess.Popen(top_cmd(name, "--interval", "0.2"), stdin=slave, stdout=slave,
                            stderr=slave, env=child_env(), close_fds=True, start_new_session=True)
    os.close(slave)
    screen = _Screen(master)
    try:
        # it draws the workers as they come up
        wait_until(lambda: len(worker_pids(engine)) == 2, what="workers started")
        pids = worker_pids(engine)
        screen.wait_for(lambda text: all(re.search(rf"\s{p}\s", text) for p in pids), "worker pids")
        # and redraws as tasks complete
        for t in [engine.add_task(obs_jobs.square, i) for i in range(40)]:
            t.wait(30)
        screen.wait_for(lambda text: "tasks done 40" in text, "40 tasks done")
        # q quits and gives the terminal back
        os.write(master, b"q")
        assert proc.wait(timeout=30) == 0
        assert "\x1b[?25h" in screen.read_rest()   # cursor shown again
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_top_exits_when_the_engine_stops(make_engine):
    engine = make_engine(workers=1)
    proc = subprocess.Popen(top_cmd(engine._backend.seg.name, "--interval", "0.1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        first = proc.stdout.readline()   # top is attached and drawing
        assert "catzilla_mp top" in first
        engine.shutdown()
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "the engine has stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_resolve_explains_what_it_could_not_find():
    with pytest.raises(TargetError, match="no running catzilla_mp engine of process 999999999"):
        resolve("999999999")
    assert resolve("/dev/shm/czmp_1_2_3_ab") == "czmp_1_2_3_ab"


def test_view_refuses_a_file_that_is_not_a_segment(tmp_path):
    fake = tmp_path / "czmp_0_1_2_ab"
    fake.write_bytes(b"\0" * 8192)
    fake.chmod(0o600)  # as an engine's: the view's file checks pass, the header's do not
    with pytest.raises(SegmentCorruptError, match="bad magic"):
        SafeSegmentView(fake.name, shm_dir=str(tmp_path))
    assert find_segments(shm_dir=str(tmp_path)) == []   # its owner (pid 1, start 2) is not alive


def test_view_reads_queue_depths_and_slot_states(make_engine, tmp_path):
    engine = make_engine(workers=1, max_workers=1)
    gate = tmp_path / "go"
    blocker = engine.add_task(obs_jobs.wait_for_file, str(gate))
    wait_until(lambda: engine.get_stats().active_workers == 1, what="blocker running")
    waiting = [engine.add_task(obs_jobs.square, i, priority="low") for i in range(4)]
    with SafeSegmentView(engine._backend.seg.name) as view:
        assert view.queue_depths() == {"critical": 0, "high": 0, "normal": 0, "low": 4}
        states = view.slot_states()
        assert states["queued"] == 4 and states["running"] == 1
        [busy] = [w for w in view.workers() if w.current_slot is not None]
        assert busy.pid == worker_pids(engine)[0] and busy.alive
    gate.write_text("go")
    for t in [blocker, *waiting]:
        t.wait(30)


class _Screen:
    """Everything the program wrote to its terminal, read without blocking forever."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = ""

    def _pump(self, timeout: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            try:
                self.buf += os.read(self.fd, 65536).decode("utf-8", "replace")
            except OSError:  # EIO: the program closed the terminal
                pass

    def frame(self) -> str:
        return self.buf.rsplit("\x1b[2J", 1)[-1]

    def wait_for(self, predicate, what: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while not predicate(self.frame()):
            if time.monotonic() > deadline:
                raise AssertionError(f"top never showed {what}; last frame:\n{self.frame()}")
            self._pump(0.1)
        return self.frame()

    def read_rest(self) -> str:
        start = len(self.buf)
        for _ in range(20):
            self._pump(0.05)
        return self.buf[start - 200 if start > 200 else 0:]
