"""The rings, slots and wake words under ThreadSanitizer (issue 10).

tests/native/tsan/run_tsan.sh builds ring_wake_stress.c together with the
core's C files with -fsanitize=thread and runs it: producers, consumers, a
collector, a repairing supervisor and a heartbeat as threads of one process
over one segment. Any TSan report, a wrong or missing result, or a stall
fails the test. It skips, saying why, where gcc cannot build TSan programs
(the runtime is apt's libtsan2).
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tsan", "run_tsan.sh")
#: Tasks through the task path; the ring phase is fixed (80,000 values).
TASKS = os.environ.get("CZMP_TSAN_TASKS", "100000")


@pytest.mark.timeout_guard(300)
def test_the_ring_and_wake_stress_runs_clean_under_thread_sanitizer():
    if shutil.which("gcc") is None:
        pytest.skip("no gcc: the ThreadSanitizer build needs gcc and libtsan2")
    # not under the ASan run's LD_PRELOAD: one process cannot host both runtimes
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS")}
    p = subprocess.run(["bash", SCRIPT, TASKS], capture_output=True, text=True, timeout=240,
                       env=env)
    if p.returncode == 77:
        pytest.skip(p.stdout.strip() or "ThreadSanitizer unavailable (install libtsan2)")
    report = (p.stdout + p.stderr)[-8000:]
    assert "ThreadSanitizer" not in p.stderr, report
    assert p.returncode == 0, f"exit {p.returncode}:\n{report}"
    assert "tasks: " in p.stdout, report
