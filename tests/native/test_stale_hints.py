"""A cancelled task's hint left in a ring cannot change the order of the tasks queued after it.

Found by the model-based test (tests/model): ring values are slot indices
without a generation, so a CRITICAL task cancelled while queued left its
hint in the CRITICAL ring, and when its slot was reused for a LOW task, a
worker taking from the CRITICAL ring ran that LOW task before every HIGH
and NORMAL one queued meanwhile.
"""
from __future__ import annotations

CRITICAL, HIGH, NORMAL, LOW = range(4)


def test_a_slot_requeued_at_low_priority_is_not_taken_through_its_old_critical_hint(seg):
    seg.submit(CRITICAL, [0])
    assert seg.release(0, seg.slot_state(0))   # cancelled: its hint stays in the CRITICAL ring
    seg.submit(LOW, [0])                      # the slot's next task, LOW
    seg.submit(HIGH, [1])
    seg.submit(NORMAL, [2])
    assert seg.take(0, 1, 0) == [1]
    assert seg.take(0, 1, 0) == [2]
    assert seg.take(0, 1, 0) == [0]           # through its own LOW hint
    assert seg.take(0, 1, 0) == []
