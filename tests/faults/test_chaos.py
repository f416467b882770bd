"""Chaos: 20,000 tasks while a random serving worker is SIGKILLed every 20-50 ms.

Every future resolves, every value is right and delivered once, and once the
queue drains every slot, chunk and ring cell is back (bench/chaos.py does the
run; ``python -m bench.chaos`` prints the same figures for bigger runs).
"""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from bench import chaos  # noqa: E402


@pytest.mark.timeout_guard(300)
def test_twenty_thousand_tasks_survive_a_kill_every_20_to_50_ms():
    # 150 us of work per task: the run lasts a few seconds, whatever the
    # machine's speed, so the killer gets its dozens of chances
    figures = chaos.run(tasks=20_000, kill_every_ms=(20, 50), workers=4, seed=4, work_us=150)
    assert figures["kills"] >= 10, figures  # the chaos really happened
    assert figures["lost"] == 0 and figures["wrong"] == 0, figures
    assert figures["duplicated"] == 0 and figures["undelivered_callbacks"] == 0, figures
    assert figures["leaked_chunks"] == 0 and figures["leaked_slots"] == 0, figures
    assert figures["queued_after"] == 0, figures
    assert figures["crashes"] >= figures["kills"], figures


@pytest.mark.timeout_guard(300)
def test_tiny_rings_wrapping_hundreds_of_times_lose_nothing_while_workers_die_mid_take():
    # issue 10 (chaos addition): 16 slots, so 64-cell task rings, and no-op
    # tasks at full speed: the rings go round hundreds of times and most
    # kills land while a worker is inside take
    figures = chaos.run(tasks=20_000, kill_every_ms=(20, 50), workers=2, seed=7, wrap=True)
    assert figures["kills"] >= 3, figures
    assert figures["ring_laps"] >= 100, figures
    assert figures["lost"] == 0 and figures["wrong"] == 0, figures
    assert figures["duplicated"] == 0 and figures["undelivered_callbacks"] == 0, figures
    assert figures["leaked_chunks"] == 0 and figures["leaked_slots"] == 0, figures
    assert figures["queued_after"] == 0, figures
