"""Workers run below the app's CPU priority by default, so a web route keeps its latency."""
from __future__ import annotations

import os

import pytest

import payload_jobs as jobs

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")


def test_workers_run_ten_nice_steps_below_the_app_as_batch_jobs_by_default(make_engine):
    engine = make_engine(workers=1)
    nice, policy = engine.add_task(jobs.priority).wait(60)
    assert nice == min(19, os.nice(0) + 10)
    assert policy == os.SCHED_BATCH


def test_worker_niceness_zero_gives_workers_the_apps_priority(make_engine):
    engine = make_engine(workers=1, worker_niceness=0)
    assert engine.add_task(jobs.priority).wait(60) == (os.nice(0), os.sched_getscheduler(0))


def test_another_worker_niceness_is_applied_as_given(make_engine):
    engine = make_engine(workers=1, worker_niceness=3)
    nice, policy = engine.add_task(jobs.priority).wait(60)
    assert (nice, policy) == (min(19, os.nice(0) + 3), os.SCHED_BATCH)
