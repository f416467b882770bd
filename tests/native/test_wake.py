"""Futex wake-ups: timeouts, cross-process wake, no syscall while nobody sleeps."""
from __future__ import annotations

import errno
import subprocess
import time

from catzilla_mp._native import ffi, lib

WORKER_TAKE = """
import sys
from catzilla_mp._core import Segment
seg = Segment.attach(sys.argv[1])
print("ready", flush=True)
print(seg.take(0, 4, None if sys.argv[2] == "-1" else float(sys.argv[2])), flush=True)
seg.detach()
"""

COLLECTOR = """
import sys
from catzilla_mp._core import Segment
seg = Segment.attach(sys.argv[1])
print(seg.collect(4, 120.0), flush=True)
seg.detach()
"""


def wait_until(pred, what, limit=60.0):
    """Poll a condition; the limit only guards against a hang, it asserts nothing about speed."""
    deadline = time.monotonic() + limit
    while not pred():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.002)


def _wake(seg):
    return ffi.addressof(seg.header, "task_wake")


def test_wait_returns_at_once_when_the_word_already_moved(seg):
    w = _wake(seg)
    assert lib.czmp_wake_wait(w, w.seq + 1, 10**10) == 0


def test_wait_times_out(seg):
    w = _wake(seg)
    assert lib.czmp_wake_wait(w, w.seq, 20_000_000) == -errno.ETIMEDOUT
    assert w.waits == 1


def test_notify_without_sleepers_makes_no_syscall(seg):
    w = _wake(seg)
    for _ in range(100):
        assert lib.czmp_wake_notify(w, 1) == 0
    seg.submit(0, list(range(10)))
    seg.take(0, 16, 0)
    seg.finish(0, 3)
    assert w.wakes == 0 and seg.header.result_wake.wakes == 0
    assert w.seq == 0


def test_take_times_out_after_sleeping(seg):
    assert seg.take(0, 4, 0.02) == []
    assert seg.header.task_wake.waits >= 1
    assert seg.header.task_wake.sleepers == 0


def test_a_sleeping_worker_in_another_process_is_woken_by_submit(seg, spawn):
    p = spawn(WORKER_TAKE, seg.name, "120", stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    wait_until(lambda: seg.header.task_wake.sleepers == 1, "worker asleep")
    seg.submit(2, [5])
    assert p.stdout.readline().strip() == "[5]"
    assert p.wait() == 0
    assert seg.header.task_wake.wakes == 1
    assert seg.header.task_wake.sleepers == 0


def test_a_sleeping_collector_is_woken_by_finish(seg, spawn):
    seg.submit(0, [1])
    seg.take(0, 1, 0)
    p = spawn(COLLECTOR, seg.name, stdout=subprocess.PIPE, text=True)
    wait_until(lambda: seg.header.result_wake.sleepers == 1, "collector asleep")
    assert seg.finish(0, 1)
    assert p.stdout.readline().strip() == "[1]"
    assert p.wait() == 0
    assert seg.header.result_wake.wakes == 1


def test_shutdown_wakes_a_worker_sleeping_without_timeout(seg, spawn):
    p = spawn(WORKER_TAKE, seg.name, "-1", stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    wait_until(lambda: seg.header.task_wake.sleepers == 1, "worker asleep")
    seg.shutdown()
    assert p.stdout.readline().strip() == "[]"
    assert p.wait() == 0
