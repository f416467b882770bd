"""A full /dev/shm (issue 11.2): a typed error, never SIGBUS.

POSIX shared memory lives in /dev/shm, so the test runs its app in a mount
namespace of its own (unshare -m) with a 16 MiB tmpfs mounted over /dev/shm:
the machine's /dev/shm is never touched. Skipped where unshare is not permitted.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

APP = r"""
import os, sys
sys.path.insert(0, {here!r})
from catzilla_mp import BackgroundTasks, errors
import deploy_jobs
Full = getattr(errors, "SharedMemoryFullError", Exception)
engine = BackgroundTasks(workers=1, memory_pool_mb=2, queue_size=64)
size = 17 << 20  # more than the tmpfs holds (the pool's chunks are backed on first use)
try:
    engine.add_task(len, b"x" * size)
    print("ARGS: accepted")
except Full as exc:
    print("ARGS:", type(exc).__name__, exc)
try:
    engine.add_task(deploy_jobs.big, size, max_retries=0).wait(60)
    print("RESULT: ok")
except Full as exc:
    print("RESULT:", type(exc).__name__, exc)
print("SMALL:", engine.add_task(deploy_jobs.square, 7).wait(60))
print("STATS:", engine.get_stats().total_queued)
engine.shutdown()
print("LEFT:", sorted(os.listdir("/dev/shm")))
"""


#: The pool is backed chunk by chunk on first use (issue 18): a chunk that
#: cannot be backed because /dev/shm filled up after the engine started is a
#: SharedMemoryFullError for that payload, never a SIGBUS, and the engine
#: goes on once there is room again.
LAZY_APP = r"""
import os, sys
sys.path.insert(0, {here!r})
from catzilla_mp import BackgroundTasks, errors
import deploy_jobs
engine = BackgroundTasks(workers=1, memory_pool_mb=8, queue_size=64, populate=False)
filler = "/dev/shm/filler"
with open(filler, "wb") as f:  # another program takes what is left of /dev/shm
    try:
        while True:
            f.write(b"f" * (256 << 10))
            f.flush()
    except OSError:
        pass
try:
    engine.add_task(len, b"x" * (600 << 10))  # fits a 1 MiB chunk not yet backed
    print("ARGS: accepted")
except errors.SharedMemoryFullError as exc:
    print("ARGS:", type(exc).__name__)
try:
    engine.add_task(deploy_jobs.big, 600 << 10, max_retries=0).wait(60)
    print("RESULT: ok")
except errors.SharedMemoryFullError as exc:
    print("RESULT:", type(exc).__name__)
os.unlink(filler)  # room again: the same chunk can now be backed
print("AFTER:", engine.add_task(len, b"x" * (600 << 10)).wait(60))
engine.shutdown()
print("LEFT:", sorted(os.listdir("/dev/shm")))
"""


def _run_in_small_dev_shm(app: str, size: str = "16m") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.run(
        ["unshare", "-m", "sh", "-c",
         f'mount -t tmpfs -o size={size} tmpfs /dev/shm && exec "$0" -c "$1"',
         sys.executable, app.format(here=HERE)],
        capture_output=True, text=True, timeout=240, env=env)


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c",
                            "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


def test_a_payload_that_does_not_fit_dev_shm_is_a_typed_error_and_the_app_lives():
    if not _unshare_works():
        pytest.skip("needs `unshare -m` and mount (root or user namespaces) for a private /dev/shm")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    p = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         'mount -t tmpfs -o size=16m tmpfs /dev/shm && exec "$0" -c "$1"',
         sys.executable, APP.format(here=HERE)],
        capture_output=True, text=True, timeout=240, env=env)
    out = p.stdout
    assert p.returncode == 0, f"exit {p.returncode} (135 or -7 is SIGBUS)\n{out}\n{p.stderr[-3000:]}"
    assert "ARGS: SharedMemoryFullError" in out and "no room" in out
    assert "RESULT: SharedMemoryFullError" in out
    assert "SMALL: 49" in out and "STATS: 0" in out
    assert "LEFT: []" in out


def test_a_pool_chunk_that_cannot_be_backed_is_a_typed_error_and_the_engine_recovers():
    if not _unshare_works():
        pytest.skip("needs `unshare -m` and mount (root or user namespaces) for a private /dev/shm")
    p = _run_in_small_dev_shm(LAZY_APP)
    out = p.stdout
    assert p.returncode == 0, f"exit {p.returncode} (135 or -7 is SIGBUS)\n{out}\n{p.stderr[-3000:]}"
    assert "ARGS: SharedMemoryFullError" in out
    assert "RESULT: SharedMemoryFullError" in out
    assert f"AFTER: {600 << 10}" in out
    assert "LEFT: []" in out
