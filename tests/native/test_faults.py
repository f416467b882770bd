"""Fault injection: a process SIGKILLed at a named point, then the repair path.

Each test runs the victim as a separate process that arms one fault point
(lib.czmp_fault_arm) and SIGKILLs itself there, then checks from the parent
that the documented repair (czmp_ring_repair twice, czmp_worker_reap,
czmp_rings_repair, czmp_arena_reclaim) loses nothing, duplicates nothing and
leaks no chunk.
"""
from __future__ import annotations

import signal

import pytest

from catzilla_mp._core import (
    SLOT_DONE,
    SLOT_HELD,
    SLOT_QUEUED,
    SLOT_RUNNING,
    holder_slot,
    holder_worker,
    new_repair_cookies,
    state_kind,
    state_owner,
)
from catzilla_mp._native import ffi, lib

VICTIM = """
import sys
from catzilla_mp._core import Segment, holder_worker
from catzilla_mp._native import ffi, lib
seg = Segment.attach(sys.argv[1])
point, countdown = int(sys.argv[2]), int(sys.argv[3])
action = sys.argv[4]
lib.czmp_fault_arm(point, countdown)
if action == "push":
    ring = lib.czmp_segment_task_ring(seg.raw, 0)
    for v in range(countdown + 5):
        lib.czmp_ring_push(ring, v)
elif action == "pop":
    ring = lib.czmp_segment_task_ring(seg.raw, 0)
    out = ffi.new("uint32_t *")
    for _ in range(countdown + 5):
        lib.czmp_ring_pop(ring, out)
elif action == "push_many":
    ring = lib.czmp_segment_task_ring(seg.raw, 0)
    lib.czmp_ring_push_many(ring, list(range(100, 110)), 10)
    lib.czmp_ring_push_many(ring, list(range(200, 210)), 10)
elif action == "pop_many":
    ring = lib.czmp_segment_task_ring(seg.raw, 0)
    out = ffi.new("uint32_t[]", 64)
    lib.czmp_ring_pop_many(ring, out, 4)
    lib.czmp_ring_pop_many(ring, out, 5)
elif action == "alloc":
    for _ in range(countdown + 5):
        seg.alloc(100, holder_worker(0))
elif action == "take":
    seg.take(0, 1, 0)
elif action == "finish":
    (idx,) = seg.take(0, 1, 0)
    h = seg.alloc(500, holder_worker(0))
    seg.chunk(h)[0:6] = b"result"
    seg.slot(idx).result_handle, seg.slot(idx).result_len = h, 6
    seg.finish(0, idx)
sys.exit(7)   # the fault did not fire
"""

CRITICAL, HIGH, NORMAL, LOW = range(4)


def run_victim(spawn, seg, point, countdown, action):
    p = spawn(VICTIM, seg.name, str(point), str(countdown), action)
    assert p.wait() == -signal.SIGKILL, "the victim was expected to die at its fault point"


def drain(seg, prio=0) -> list[int]:
    return seg.task_ring(prio).pop_many(100_000)


def repair_twice(ring) -> list[int]:
    cookie = ffi.new("uint64_t[2]")
    return ring.repair(cookie) + ring.repair(cookie)


def no_chunk_used(seg) -> bool:
    return all(c.used == 0 for c in seg.class_stats())


def test_producer_killed_after_claiming_a_cell_stalls_nothing_after_repair(seg, spawn):
    # countdown 4: pushes 0,1,2 complete, dies holding the cell for 3
    run_victim(spawn, seg, lib.CZMP_FAULT_RING_PUSH_CLAIMED, 4, "push")
    ring = seg.task_ring(0)
    ring.push_many([100, 101])                  # published behind the dead claim
    assert drain(seg) == [0, 1, 2]              # stuck at the claimed cell
    assert repair_twice(ring) == []
    assert drain(seg) == [100, 101]             # nothing lost, tombstone skipped
    cap = ring.capacity                         # and the ring has all its room
    assert ring.push_many(list(range(cap))) == cap
    assert drain(seg) == list(range(cap))


def test_consumer_killed_after_claiming_a_cell_hands_its_value_to_repair(seg, spawn):
    ring = seg.task_ring(0)
    ring.push_many(list(range(10)))
    # countdown 3: pops 0 and 1, dies holding 2
    run_victim(spawn, seg, lib.CZMP_FAULT_RING_POP_CLAIMED, 3, "pop")
    assert drain(seg) == list(range(3, 10))
    assert repair_twice(ring) == [2]            # the one value in flight
    cap = ring.capacity
    assert ring.push_many(list(range(cap))) == cap
    assert drain(seg) == list(range(cap))


def test_batch_producer_killed_after_claiming_a_run_stalls_nothing_after_repair(seg, spawn):
    # countdown 2: the first batch is published, the second dies claimed
    run_victim(spawn, seg, lib.CZMP_FAULT_RING_PUSH_CLAIMED, 2, "push_many")
    ring = seg.task_ring(0)
    ring.push(7)
    assert drain(seg) == list(range(100, 110))
    assert repair_twice(ring) == []
    assert drain(seg) == [7]                    # ten tombstones skipped
    cap = ring.capacity
    assert ring.push_many(list(range(cap))) == cap
    assert drain(seg) == list(range(cap))


def test_batch_consumer_killed_after_claiming_a_run_hands_all_back(seg, spawn):
    ring = seg.task_ring(0)
    ring.push_many(list(range(20)))
    run_victim(spawn, seg, lib.CZMP_FAULT_RING_POP_CLAIMED, 2, "pop_many")
    assert drain(seg) == list(range(9, 20))    # 0..3 popped, 4..8 in flight
    assert repair_twice(ring) == [4, 5, 6, 7, 8]
    cap = ring.capacity
    assert ring.push_many(list(range(cap))) == cap
    assert drain(seg) == list(range(cap))


def test_process_killed_holding_chunks_leaks_none_after_reclaim(seg, spawn):
    run_victim(spawn, seg, lib.CZMP_FAULT_ARENA_HELD, 3, "alloc")
    assert sum(c.used for c in seg.class_stats()) == 3
    assert seg.reclaim(holder_worker(0)) == 3
    assert no_chunk_used(seg)


def test_worker_killed_with_a_slot_claimed_loses_no_task(seg, spawn):
    for i in range(5):
        h = seg.alloc(300, holder_slot(i))
        seg.slot(i).args_handle, seg.slot(i).args_len = h, 300
    seg.submit(NORMAL, list(range(5)))
    run_victim(spawn, seg, lib.CZMP_FAULT_TAKE_SLOT_CLAIMED, 1, "take")
    # slot 0 is RUNNING for the dead worker 0, its ring cell still claimed
    st = seg.slot_state(0)
    assert state_kind(st) == SLOT_RUNNING and state_owner(st) == 1
    cookies = new_repair_cookies()
    running, done = seg.reap(0, cookies)
    assert (running, done) == ([0], [])
    assert state_kind(seg.slot_state(0)) == SLOT_HELD
    lib.czmp_rings_repair(seg.raw, cookies)     # second repair call frees the cell
    assert seg.submit(NORMAL, running) == 1     # the supervisor re-runs it
    taken = []
    while batch := seg.take(1, 8, 0):
        taken += batch
    assert sorted(taken) == [0, 1, 2, 3, 4]     # each exactly once
    for i in taken:
        seg.finish(1, i)
    for i in seg.collect(16, 0):
        assert seg.release(i, seg.slot_state(i))
    assert no_chunk_used(seg)
    # the repaired ring holds its full capacity again
    cap = seg.task_ring(NORMAL).capacity
    assert seg.task_ring(NORMAL).push_many(list(range(cap))) == cap


def test_worker_killed_after_done_before_the_result_hint_loses_no_result(seg, spawn):
    seg.submit(HIGH, [2])
    run_victim(spawn, seg, lib.CZMP_FAULT_FINISH_DONE, 1, "finish")
    assert state_kind(seg.slot_state(2)) == SLOT_DONE
    assert seg.collect(4, 0) == []              # its hint never made it
    running, done = seg.reap(0, new_repair_cookies())
    assert (running, done) == ([], [2])
    s = seg.slot(2)
    assert seg.chunk(s.result_handle, s.result_len)[:] == b"result"
    assert seg.holder(s.result_handle) == holder_slot(2)
    assert seg.release(2, seg.slot_state(2))
    assert no_chunk_used(seg)


def test_worker_killed_mid_result_write_leaks_no_chunk(seg, spawn):
    # dies right after allocating its result chunk (tagged with the worker)
    seg.submit(LOW, [1])
    p = spawn(VICTIM.replace('h = seg.alloc(500, holder_worker(0))',
                             'lib.czmp_fault_arm(lib.CZMP_FAULT_ARENA_HELD, 1)\n'
                             '    h = seg.alloc(500, holder_worker(0))'),
              seg.name, "0", "1", "finish")
    assert p.wait() == -signal.SIGKILL
    running, done = seg.reap(0, new_repair_cookies())
    assert (running, done) == ([1], [])
    assert no_chunk_used(seg)
    assert seg.submit(LOW, running) == 1
    assert seg.take(1, 4, 0) == [1]


@pytest.mark.parametrize("countdown", [1, 7, 40])
def test_repeated_consumer_deaths_never_lose_or_duplicate_a_task(seg, spawn, countdown):
    # many slots, many deaths: every task runs exactly once in the end
    n = seg.header.nslots
    seg.submit(NORMAL, list(range(n)))
    cookies = new_repair_cookies()
    seen: list[int] = []
    for _ in range(3):
        run_victim(spawn, seg, lib.CZMP_FAULT_TAKE_SLOT_CLAIMED, 1, "take")
        running, _ = seg.reap(0, cookies)
        lib.czmp_rings_repair(seg.raw, cookies)
        seg.submit(NORMAL, running)
        seen += seg.take(1, min(countdown, 4), 0)
    while batch := seg.take(1, 64, 0):
        seen += batch
    lib.czmp_rings_repair(seg.raw, cookies)
    while batch := seg.take(1, 64, 0):
        seen += batch
    assert sorted(seen) == list(range(n))
    assert all(state_kind(seg.slot_state(i)) == SLOT_RUNNING for i in range(n))
    assert not any(state_kind(seg.slot_state(i)) == SLOT_QUEUED for i in range(n))


WAKE_TAKER = """
import sys
from catzilla_mp._core import Segment
seg = Segment.attach(sys.argv[1])
print(seg.take(1, 4, 120.0), flush=True)
seg.detach()
"""


def test_a_worker_killed_while_spinning_does_not_silence_later_wakes(seg, spawn):
    # Regression: a consumer counts itself in task_wake.spinners while it
    # polls, and producers skip the wake syscall while spinners != 0. One
    # SIGKILLed mid-poll left the count up for ever, so no sleeping worker
    # was ever woken again (each waited for its own timeout).
    import subprocess
    import time
    seg.submit(NORMAL, [0])
    p = spawn(VICTIM.replace("seg.take(0, 1, 0)", "seg.take(0, 1, 5.0)"),
              seg.name, str(lib.CZMP_FAULT_TAKE_SLOT_CLAIMED), "1", "take")
    assert p.wait() == -signal.SIGKILL
    assert seg.header.task_wake.spinners == 1          # the dead poller's count
    seg.reap(0, new_repair_cookies())
    taker = spawn(WAKE_TAKER, seg.name, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while seg.header.task_wake.sleepers < 1:            # asleep, past its own spin
        assert time.monotonic() < deadline and taker.poll() is None
        time.sleep(0.002)
    wakes = seg.header.task_wake.wakes
    seg.submit(HIGH, [5])
    assert seg.header.task_wake.wakes == wakes + 1      # a wake syscall was made
    assert taker.stdout.readline().strip() == "[5]"
    assert taker.wait() == 0
