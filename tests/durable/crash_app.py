"""The app the crash test kills: submits quick, delayed and long tasks on a durable engine.

argv: journal path, log dir, N quick tasks (before and after the long ones), N delayed, N long. Prints the task ids as
JSON on one line, then "READY" once every long task has started, then sleeps to be killed.
"""
from __future__ import annotations

import json
import os
import sys
import time

import durable_jobs
from catzilla_mp import BackgroundTasks

journal, log_dir, n_quick, n_delayed, n_long = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
# one worker per long task (and crash0): they all run at once, the queued ones wait
engine = BackgroundTasks(workers=n_long + 1, min_workers=n_long + 1, enable_auto_scaling=False,
                         memory_pool_mb=8, queue_size=256, durable=journal)
ids = {"long": [], "quick": [], "delayed": [], "crash0": [], "before": []}
# these finish before the crash (FIFO at one priority): their outcome must not change
ids["before"] = [t.task_id for t in engine.add_tasks(
    durable_jobs.quick, [(log_dir, f"b{i}", i) for i in range(n_quick)])]
for i in range(n_long):
    ids["long"].append(engine.add_task(durable_jobs.long_once, log_dir, f"long{i}", i,
                                       max_retries=3, timeout_ms=600_000).task_id)
# a running task with no retry left: its attempt counts, so it fails at the next start
ids["crash0"].append(engine.add_task(durable_jobs.long_once, log_dir, "crash0", 0,
                                     max_retries=0, timeout_ms=600_000).task_id)
batch = engine.add_tasks(durable_jobs.quick, [(log_dir, f"q{i}", i) for i in range(n_quick)])
ids["quick"] = [t.task_id for t in batch]
for i in range(n_delayed):
    ids["delayed"].append(engine.add_task(durable_jobs.quick, log_dir, f"d{i}", i,
                                          delay_ms=15_000).task_id)
print(json.dumps(ids), flush=True)
deadline = time.monotonic() + 120
want = [f"started-long{i}" for i in range(n_long)] + ["started-crash0"]
while not all(os.path.exists(os.path.join(log_dir, m)) for m in want):
    if time.monotonic() > deadline:
        print("TIMEOUT", flush=True)
        sys.exit(1)
    time.sleep(0.05)
time.sleep(0.3)  # several writer-thread periods: the starts are journaled
print("READY", flush=True)
time.sleep(600)
