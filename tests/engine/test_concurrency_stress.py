"""Every public operation from many threads at once; the books must balance (issue 20's method).

A short run of ``python -m bench.stress`` per configuration (process, thread,
process with two threads per worker): submit, add_tasks, map, cancel (normal
and force), wait, callbacks that submit and wait, get_stats, progress and two
concurrent shutdowns, then the invariants of bench/stress.py: every task has
exactly one final state, results are right, no task ran more often than its
attempts allow, callbacks were delivered once, no thread died, nothing is left
in /dev/shm and no child process remains. Random load rarely hits a race
window (tests/faults/test_threads.py forces each known one); this keeps the
whole from regressing, and ``python -m bench.stress`` runs it for longer.
"""
from __future__ import annotations

import pytest

from bench.stress import failed, run


@pytest.mark.timeout_guard(120)
@pytest.mark.parametrize("mode, threads_per_worker", [("process", 1), ("thread", 1),
                                                      ("process", 2)])
def test_every_operation_at_once_leaves_every_task_final_once_and_nothing_behind(
        mode, threads_per_worker, tmp_path):
    report = run(mode, threads_per_worker, seconds=3.0, actors=2, workdir=str(tmp_path))
    assert report["tasks"] > 50, report  # the load really ran
    assert not failed(report), report
