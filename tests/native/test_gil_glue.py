"""The cffi glue keeps the GIL for quick calls but must release it for blocking ones."""
from __future__ import annotations

import threading
import time

import pytest

from catzilla_mp._core import Segment, SizeClass
from catzilla_mp._native import ffi, lib
from catzilla_mp.segment_janitor import new_segment_name


@pytest.fixture
def seg():
    s = Segment.create(new_segment_name(), nslots=64, nworkers=2, nfuncs=4,
                       classes=[SizeClass(1024, 4)])
    yield s
    s.detach()
    s.unlink()


def _ticks_while(blocking_call) -> int:
    ticks = 0
    stop = threading.Event()

    def count():
        nonlocal ticks
        while not stop.is_set():
            ticks += 1

    t = threading.Thread(target=count)
    t.start()
    time.sleep(0.01)
    before = ticks
    blocking_call()
    during = ticks - before
    stop.set()
    t.join()
    return during


@pytest.mark.parametrize("call", ["take", "take_copy", "collect"])
def test_blocking_calls_let_other_threads_run(seg, call):
    buf = ffi.new("uint32_t[4]")
    data = ffi.new("char[64]")
    n = ffi.new("uint32_t *")
    calls = {
        "take": lambda: lib.czmp_tasks_take(seg.raw, 0, buf, 1, 300_000_000),
        "take_copy": lambda: lib.czmp_tasks_take_copy(seg.raw, 0, buf, data, 64, n, 300_000_000),
        "collect": lambda: lib.czmp_results_collect(seg.raw, buf, 4, 300_000_000),
    }
    # a thread holding the GIL for 0.3 s would let the counter advance only at
    # the interpreter's switch interval; released, it runs freely
    assert _ticks_while(calls[call]) > 10_000
