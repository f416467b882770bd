"""MPMC ring, one process: push/pop, batches, full/empty, FIFO, repair.

The repair tests fake a process that died inside push or pop by moving the
ring's tail or head by hand (the exact state such a death leaves: a claimed
position whose cell was never published/released). tests/native/test_faults.py
does the same with real SIGKILLed processes.
"""
from __future__ import annotations

import pytest

from catzilla_mp._native import ffi, lib

TOMBSTONE = lib.CZMP_RING_TOMBSTONE
# struct czmp_ring_shm (internal.h): tail, pad[7], head, pad[7], cap|mask, pad[7], cells[]
TAIL, HEAD, CELLS = 0, 8, 24
# cell word (ring.c): sequence (40 bits) << 24 | value (24 bits)
VALUE_BITS = 24


def words(ring):
    return ring.words()


def fake_dead_producer(ring) -> int:
    """Claim the tail position and never publish it; returns the position."""
    w = words(ring)
    pos = w[TAIL]
    w[TAIL] = pos + 1
    return pos


def fake_dead_consumer(ring) -> int:
    """Claim the head position and never release it; returns the value it held."""
    w = words(ring)
    pos = w[HEAD]
    w[HEAD] = pos + 1
    return w[CELLS + (pos & (ring.capacity - 1))] & 0xFFFFFF


def drain(ring) -> list[int]:
    out = []
    while (v := ring.pop()) is not None:
        out.append(v)
    return out


@pytest.fixture
def ring(seg):
    return seg.task_ring(0)


def test_single_push_pop_is_fifo(ring):
    assert ring.pop() is None
    for v in (5, 0, 7, lib.CZMP_RING_VALUE_MAX):
        assert ring.push(v)
    assert len(ring) == 4
    assert drain(ring) == [5, 0, 7, lib.CZMP_RING_VALUE_MAX]
    assert lib.czmp_ring_push(ring._ptr, lib.CZMP_RING_VALUE_MAX + 1) == -22  # 24-bit values
    assert len(ring) == 0


def test_tombstone_value_cannot_be_pushed(ring):
    assert lib.czmp_ring_push(ring._ptr, TOMBSTONE) == -22  # -EINVAL
    assert len(ring) == 0


def test_full_ring_refuses_then_accepts_after_a_pop(ring):
    cap = ring.capacity
    assert cap >= 16 and cap & (cap - 1) == 0
    for i in range(cap):
        assert ring.push(i)
    assert not ring.push(999)
    assert lib.czmp_ring_push(ring._ptr, 999) == -11  # -EAGAIN
    assert ring.pop() == 0
    assert ring.push(999)
    assert drain(ring) == list(range(1, cap)) + [999]


def test_batches_push_a_prefix_and_pop_in_order(ring):
    cap = ring.capacity
    assert ring.push_many(list(range(cap - 3))) == cap - 3
    assert ring.push_many([100, 101, 102, 103, 104]) == 3  # only room for three
    got = ring.pop_many(10)
    assert got == list(range(10))
    rest = ring.pop_many(cap * 2)
    assert rest == list(range(10, cap - 3)) + [100, 101, 102]
    assert ring.pop_many(5) == []


def test_many_laps_keep_order(ring):
    cap = ring.capacity
    expect, got = [], []
    n = 0
    for lap in range(50):
        k = min((lap * 7) % cap + 1, cap - len(ring))
        vals = list(range(n, n + k))
        n += k
        assert ring.push_many(vals) == k
        expect += vals
        got += ring.pop_many(max(0, k - (lap % 3)))
    got += drain(ring)
    assert got == expect


def test_each_priority_ring_is_its_own_fifo(seg):
    rings = [seg.task_ring(p) for p in range(4)]
    for i in range(40):
        rings[i % 4].push(i)
    for p, r in enumerate(rings):
        assert drain(r) == list(range(p, 40, 4))
    assert lib.czmp_segment_task_ring(seg.raw, 4) == ffi.NULL
    assert lib.czmp_segment_task_ring(seg.raw, -1) == ffi.NULL


def test_repair_needs_two_calls_then_tombstones_a_dead_producers_cell(ring):
    ring.push_many([1, 2])
    fake_dead_producer(ring)
    ring.push_many([3, 4])          # published behind the stuck cell
    assert drain(ring) == [1, 2]    # stuck: 3 and 4 unreachable
    cookie = ffi.new("uint64_t[2]")
    assert ring.repair(cookie) == []
    assert drain(ring) == []        # first call touches nothing
    assert ring.repair(cookie) == []
    assert drain(ring) == [3, 4]    # the tombstone is skipped, never returned
    assert len(ring) == 0


def test_repair_leaves_a_claim_younger_than_the_previous_call_alone(ring):
    cookie = ffi.new("uint64_t[2]")
    ring.repair(cookie)
    pos = fake_dead_producer(ring)  # claimed after call 1
    ring.push(9)
    ring.repair(cookie)             # call 2: the claim may be a live, slow producer
    assert drain(ring) == []
    cell = words(ring)[CELLS + (pos & (ring.capacity - 1))]
    assert cell >> VALUE_BITS == pos  # still claimed, unpublished
    ring.repair(cookie)             # call 3: now it is old enough
    assert drain(ring) == [9]


def test_a_slow_producer_loses_to_repair_and_would_see_its_cas_fail(ring):
    pos = fake_dead_producer(ring)
    cell_ptr = words(ring) + CELLS + (pos & (ring.capacity - 1))
    claimed = cell_ptr[0]
    cookie = ffi.new("uint64_t[2]")
    ring.repair(cookie)
    ring.repair(cookie)
    # the producer's publish is CAS(cell, claimed -> (pos+1, v)): it must fail now
    assert cell_ptr[0] != claimed
    assert cell_ptr[0] == ((pos + 1) << VALUE_BITS) | TOMBSTONE


def test_repair_hands_back_a_dead_consumers_value_and_frees_its_cell(ring):
    cap = ring.capacity
    ring.push_many([10, 11, 12])
    lost = fake_dead_consumer(ring)
    assert lost == 10
    assert drain(ring) == [11, 12]
    # the unreleased cell (position 0) blocks the producer one lap later
    assert ring.push_many(list(range(100, 100 + cap))) == cap - 3
    assert drain(ring) == list(range(100, 100 + cap - 3))
    cookie = ffi.new("uint64_t[2]")
    assert ring.repair(cookie) == []
    assert ring.repair(cookie) == [10]
    assert ring.repair(cookie) == []   # once only
    assert ring.push_many(list(range(cap))) == cap
    assert drain(ring) == list(range(cap))


def test_repair_recovers_at_most_max_values_per_call(ring):
    ring.push_many(list(range(5)))
    for _ in range(5):
        fake_dead_consumer(ring)
    cookie = ffi.new("uint64_t[2]")
    buf = ffi.new("uint32_t[]", 5)
    assert lib.czmp_ring_repair(ring._ptr, cookie, buf, 2) == 0
    got = []
    for _ in range(4):
        n = lib.czmp_ring_repair(ring._ptr, cookie, buf, 2)
        got += list(buf[0:n])
    assert got == [0, 1, 2, 3, 4]


def test_repair_of_a_healthy_ring_changes_nothing(ring):
    ring.push_many([1, 2, 3])
    ring.pop()
    cookie = ffi.new("uint64_t[2]")
    for _ in range(3):
        assert ring.repair(cookie) == []
    assert drain(ring) == [2, 3]


def test_batch_push_stops_before_a_tombstone_value(ring):
    assert ring.push_many([1, 2, TOMBSTONE, 3]) == 2
    assert drain(ring) == [1, 2]
