"""Slot state machine, one process: submit/take/finish/collect/release/reap."""
from __future__ import annotations

import errno
import time

import pytest

from catzilla_mp._core import (
    HANDLE_CHUNK,
    SLOT_DONE,
    SLOT_FREE,
    SLOT_HELD,
    SLOT_QUEUED,
    SLOT_RUNNING,
    holder_slot,
    holder_worker,
    new_repair_cookies,
    state_gen,
    state_kind,
    state_make,
    state_owner,
)
from catzilla_mp._native import lib

CRITICAL, HIGH, NORMAL, LOW = range(4)


def kind(seg, i):
    return state_kind(seg.slot_state(i))


def with_args_chunk(seg, i, data: bytes) -> int:
    h = seg.alloc(len(data), holder_slot(i))
    seg.chunk(h)[0:len(data)] = data
    s = seg.slot(i)
    s.args_handle, s.args_len = h, len(data)
    return h


def test_a_task_goes_round_the_whole_state_machine(seg):
    args = with_args_chunk(seg, 0, b"args")
    assert seg.submit(NORMAL, [0]) == 1
    st = seg.slot_state(0)
    assert state_kind(st) == SLOT_QUEUED and state_gen(st) == 0
    assert seg.slot(0).priority == NORMAL and seg.slot(0).queued_ns > 0
    assert seg.queue_depths() == [0, 0, 1, 0]

    assert seg.take(2, 8, 0) == [0]
    st = seg.slot_state(0)
    assert state_kind(st) == SLOT_RUNNING and state_owner(st) == 3
    assert seg.slot(0).worker == 2 and seg.slot(0).started_ns >= seg.slot(0).queued_ns

    res = seg.alloc(300, holder_worker(2))
    seg.slot(0).result_handle, seg.slot(0).result_len = res, 300
    assert seg.finish(2, 0)
    assert kind(seg, 0) == SLOT_DONE
    assert seg.holder(res) == holder_slot(0)   # the slot owns its result now

    assert seg.collect(8, 0) == [0]
    st = seg.slot_state(0)
    assert state_kind(st) == SLOT_HELD and state_owner(st) == 0
    assert seg.release(0, st)
    st2 = seg.slot_state(0)
    assert state_kind(st2) == SLOT_FREE and state_gen(st2) == 1
    assert seg.holder(args) == 0 and seg.holder(res) == 0
    assert [c.used for c in seg.class_stats()] == [0, 0, 0]


def test_take_serves_the_highest_priority_first(seg):
    for i, prio in enumerate([LOW, NORMAL, HIGH, CRITICAL, NORMAL, CRITICAL]):
        seg.submit(prio, [i])
    assert seg.take(0, 3, 0) == [3, 5, 2]
    assert seg.take(0, 10, 0) == [1, 4, 0]
    assert seg.take(0, 10, 0) == []


def test_batch_submit_queues_a_prefix_and_stops_at_a_busy_slot(seg):
    seg.submit(HIGH, [2])
    assert seg.submit(NORMAL, [0, 1, 2, 3]) == 2   # slot 2 is already QUEUED
    assert [kind(seg, i) for i in range(4)] == [SLOT_QUEUED] * 3 + [SLOT_FREE]


def test_bad_arguments_are_refused(seg):
    assert lib.czmp_tasks_submit(seg.raw, 4, [0], 1) == -errno.EINVAL
    assert lib.czmp_tasks_submit(seg.raw, 0, [999], 1) == -errno.EINVAL
    out = [0] * 4
    assert lib.czmp_tasks_take(seg.raw, 99, out, 4, 0) == -errno.EINVAL
    assert lib.czmp_tasks_take(seg.raw, 0, out, 0, 0) == -errno.EINVAL
    assert lib.czmp_tasks_finish(seg.raw, 0, 999) == -errno.EINVAL
    assert lib.czmp_slot_release(seg.raw, 0, state_make(0, 0, SLOT_RUNNING)) == -errno.EINVAL


def test_stale_and_duplicate_task_hints_are_dropped(seg):
    seg.submit(NORMAL, [0])
    ring = seg.task_ring(HIGH)
    ring.push(0)          # duplicate hint on another ring (a repair, a retry)
    ring.push(7)          # hint of a FREE slot
    ring.push(10_000)     # index out of range
    assert seg.take(0, 8, 0) == [0]
    assert seg.take(1, 8, 0) == []
    assert all(len(seg.task_ring(p)) == 0 for p in range(4))


def test_stale_result_hints_are_dropped(seg):
    seg.submit(NORMAL, [0, 1])
    seg.take(0, 8, 0)
    seg.finish(0, 0)
    r = seg.result_ring()
    r.push(0)             # duplicate
    r.push(1)             # RUNNING, not DONE
    assert seg.collect(8, 0) == [0]
    assert seg.collect(8, 0) == []


def test_finish_by_another_worker_or_of_a_non_running_slot_is_stale(seg):
    seg.submit(NORMAL, [0])
    seg.take(1, 8, 0)
    assert lib.czmp_tasks_finish(seg.raw, 0, 0) == -errno.ESTALE
    assert lib.czmp_tasks_finish(seg.raw, 1, 1) == -errno.ESTALE
    assert seg.finish(1, 0)
    assert lib.czmp_tasks_finish(seg.raw, 1, 0) == -errno.ESTALE   # already DONE


def test_cancel_of_a_queued_task_frees_it_and_its_hint_goes_stale(seg):
    with_args_chunk(seg, 4, b"x" * 500)
    seg.submit(LOW, [4])
    st = seg.slot_state(4)
    assert seg.release(4, st)
    assert kind(seg, 4) == SLOT_FREE
    assert seg.take(0, 8, 0) == []
    assert [c.used for c in seg.class_stats()] == [0, 0, 0]


def test_release_with_an_out_of_date_state_is_refused(seg):
    seg.submit(NORMAL, [0])
    queued = seg.slot_state(0)
    seg.take(0, 1, 0)                       # the worker won the race
    assert lib.czmp_slot_release(seg.raw, 0, queued) == -errno.EAGAIN
    assert kind(seg, 0) == SLOT_RUNNING


def test_generation_defeats_a_late_cas_from_a_previous_use(seg):
    seg.submit(NORMAL, [0])
    seg.take(0, 1, 0)
    seg.finish(0, 0)
    seg.collect(1, 0)
    old_held = seg.slot_state(0)
    seg.release(0, old_held)
    seg.submit(NORMAL, [0])                 # reused
    assert lib.czmp_slot_cas(seg.raw, 0, old_held, state_make(0, 0, SLOT_FREE)) == -errno.EAGAIN
    assert state_gen(seg.slot_state(0)) == 1 and kind(seg, 0) == SLOT_QUEUED


def test_held_slots_can_be_requeued_for_a_retry(seg):
    seg.submit(NORMAL, [0])
    seg.take(0, 1, 0)
    seg.finish(0, 0)
    seg.collect(1, 0)
    seg.slot(0).attempt = 1
    assert seg.submit(HIGH, [0]) == 1
    assert seg.take(1, 4, 0) == [0]


def test_reap_of_a_dead_worker_hands_back_its_running_and_done_slots(seg):
    with_args_chunk(seg, 0, b"a" * 100)
    with_args_chunk(seg, 1, b"b" * 100)
    seg.submit(NORMAL, [0, 1, 2])
    assert seg.take(3, 2, 0) == [0, 1]
    partial = seg.alloc(1000, holder_worker(3))         # result being written
    seg.slot(1).result_handle = partial
    scratch = seg.alloc(60000, holder_worker(3))        # anything else it held
    assert seg.finish(3, 0)                             # 0 is DONE, hint pushed
    seg.take(2, 1, 0)                                    # slot 2 run by another worker

    running, done = seg.reap(3, new_repair_cookies())
    assert (running, done) == ([1], [0])
    assert kind(seg, 0) == SLOT_HELD and kind(seg, 1) == SLOT_HELD
    assert kind(seg, 2) == SLOT_RUNNING                 # not the dead worker's
    assert seg.holder(partial) == 0 and seg.holder(scratch) == 0
    assert seg.slot(1).result_handle == 0
    assert seg.worker(3).state == lib.CZMP_WORKER_DEAD
    # the stale result hint of slot 0 is dropped by the collector
    assert seg.collect(4, 0) == []
    # the running one is re-run elsewhere, the done one released
    assert seg.submit(NORMAL, [1]) == 1
    assert seg.take(0, 4, 0) == [1]
    assert seg.release(0, seg.slot_state(0))
    assert [c.used for c in seg.class_stats()] == [1, 0, 0]   # slot 1's args


def test_take_with_zero_timeout_does_not_sleep(seg):
    waits = seg.header.task_wake.waits
    assert seg.take(0, 4, 0) == []
    assert seg.header.task_wake.waits == waits


def test_take_returns_nothing_after_shutdown(seg):
    seg.shutdown()
    assert seg.take(0, 4, None) == []     # would block for ever otherwise


def test_cancelled_tasks_stale_hints_do_not_make_the_queue_refuse_new_tasks(seg):
    # Regression: cancelling a QUEUED task leaves its hint in the ring; with
    # no worker draining it, a few cancel/resubmit rounds filled the ring with
    # stale hints and submit refused tasks although every slot was free.
    n = seg.header.nslots
    cap = seg.task_ring(LOW).capacity
    for _ in range(cap // n + 1):
        assert seg.submit(LOW, list(range(n))) == n
        for i in range(n):
            assert seg.release(i, seg.slot_state(i))
    assert seg.submit(LOW, list(range(n))) == n
    assert sorted(seg.take(0, 4 * n, 0)) == list(range(n))
    assert seg.take(0, 4 * n, 0) == []


def test_submit_inline_and_take_copy_carry_a_small_task_in_two_calls(seg):
    from catzilla_mp._native import ffi
    assert lib.czmp_tasks_submit_inline(seg.raw, HIGH, 3, 7, 99, b"hello", 5) == 1
    s = seg.slot(3)
    assert (s.func_id, s.task_id, s.args_len, s.args_handle) == (7, 99, 5, lib.CZMP_HANDLE_INLINE << 56)
    assert kind(seg, 3) == SLOT_QUEUED
    # a busy slot is not overwritten
    assert lib.czmp_tasks_submit_inline(seg.raw, HIGH, 3, 8, 100, b"other", 5) == 0
    assert s.task_id == 99
    idx, ln, buf = ffi.new("uint32_t *"), ffi.new("uint32_t *"), ffi.new("char[]", 64)
    assert lib.czmp_tasks_take_copy(seg.raw, 1, idx, buf, 64, ln, 0) == 1
    assert (idx[0], ln[0], ffi.buffer(buf, 5)[:]) == (3, 5, b"hello")
    assert state_owner(seg.slot_state(3)) == 2
    assert lib.czmp_tasks_take_copy(seg.raw, 1, idx, buf, 64, ln, 0) == 0


def test_take_copy_reads_chunk_args_and_truncates_to_the_buffer(seg):
    from catzilla_mp._native import ffi
    data = bytes(range(256)) * 2
    with_args_chunk(seg, 0, data)
    seg.submit(NORMAL, [0])
    idx, ln, buf = ffi.new("uint32_t *"), ffi.new("uint32_t *"), ffi.new("char[]", 100)
    assert lib.czmp_tasks_take_copy(seg.raw, 0, idx, buf, 100, ln, 0) == 1
    assert ln[0] == 512 and ffi.buffer(buf, 100)[:] == data[:100]


def test_submit_inline_refuses_oversized_args_and_bad_arguments(seg):
    big = b"x" * (lib.CZMP_INLINE_ARGS + 1)
    assert lib.czmp_tasks_submit_inline(seg.raw, 0, 0, 0, 0, big, len(big)) == -errno.EMSGSIZE
    assert lib.czmp_tasks_submit_inline(seg.raw, 4, 0, 0, 0, b"", 0) == -errno.EINVAL
    assert lib.czmp_tasks_submit_inline(seg.raw, 0, 999, 0, 0, b"", 0) == -errno.EINVAL
    assert kind(seg, 0) == SLOT_FREE


def test_rings_hold_twice_the_slots(make_segment):
    s = make_segment(nslots=100)
    assert s.task_ring(0).capacity == 256 and s.result_ring().capacity == 256


def test_finish_waits_out_a_stalled_collector_instead_of_dropping_the_result(seg, spawn):
    # Regression: finish ignored a failed result push. A Vyukov ring looks
    # full one lap after a consumer claimed a cell it has not released yet
    # (preempted or dead collector), so the hint of a DONE slot was dropped
    # and the app never collected that result (seen in the stress test).
    from catzilla_mp._native import ffi
    ring = seg.result_ring()
    cap = ring.capacity
    words = ring.words()
    ring.push(10_000)                                 # a stale hint...
    words[8] += 1                                     # ...claimed by a collector that stalls
    for _ in range(cap - 1):                          # a lap of results goes by
        seg.submit(NORMAL, [0])
        seg.take(0, 1, 0)
        seg.finish(0, 0)
        assert seg.collect(1, 0) == [0]
        seg.release(0, seg.slot_state(0))
    seg.submit(NORMAL, [1])
    seg.take(0, 1, 0)
    # the worker finishes in its own process (the glue keeps the GIL in finish)
    finisher = spawn("import sys\n"
                     "from catzilla_mp._core import Segment\n"
                     "seg = Segment.attach(sys.argv[1])\n"
                     "sys.exit(0 if seg.finish(0, 1) else 1)\n", seg.name)
    cookies = new_repair_cookies()
    while finisher.poll() is None:
        lib.czmp_rings_repair(seg.raw, cookies)       # the supervisor's periodic repair
        time.sleep(0.01)
    assert finisher.returncode == 0
    assert seg.collect(4, 0) == [1]


# -- issue 18: the collector's release inside its collect call ----------------------

def finish_in_worker0(seg, i, data: bytes, failed: bool = False):
    assert seg.submit(NORMAL, [i]) == 1
    assert seg.take(0, 1, 0) == [i]
    flags = lib.CZMP_RESULT_FAILED if failed else 0
    assert lib.czmp_tasks_finish_inline(seg.raw, 0, i, flags, data, len(data)) == 0


def test_issue_18_collect_with_release_frees_a_success_and_holds_a_failure(seg):
    from catzilla_mp._native import ffi
    # Given two finished slots: slot 0 succeeded (its args in a chunk), slot 1 failed
    chunk = with_args_chunk(seg, 0, b"args" * 100)
    finish_in_worker0(seg, 0, b"fine")
    finish_in_worker0(seg, 1, b"boom", failed=True)
    gen0 = state_gen(seg.slot_state(0))
    # When the app collects them with CZMP_COLLECT_RELEASE_OK
    out = ffi.new("czmp_outcome_t[4]")
    data = ffi.new("char[]", 4096)
    n = lib.czmp_results_collect_outcomes_ex(seg.raw, out, 4, data, 4096, 0,
                                             lib.CZMP_COLLECT_RELEASE_OK)
    assert n == 2
    got = {out[k].idx: out[k] for k in range(n)}
    # Then the success's slot is FREE already (next generation), its outcome says so,
    # its result is in data and its args chunk is freed
    assert kind(seg, 0) == SLOT_FREE and got[0].state == seg.slot_state(0)
    assert state_gen(seg.slot_state(0)) > gen0
    assert ffi.buffer(data + got[0].data_off, got[0].len)[:] == b"fine"
    assert not seg.free(chunk, holder_slot(0))  # already freed: a second free is refused
    # And the failure's slot is HELD for the app to retry or release, as without the flag
    assert kind(seg, 1) == SLOT_HELD and got[1].state == seg.slot_state(1)
    assert lib.czmp_slot_release(seg.raw, 1, got[1].state) == 0


def test_issue_18_collect_without_release_leaves_every_slot_held(seg):
    from catzilla_mp._native import ffi
    finish_in_worker0(seg, 2, b"fine")
    out = ffi.new("czmp_outcome_t[4]")
    data = ffi.new("char[]", 4096)
    assert lib.czmp_results_collect_outcomes_ex(seg.raw, out, 4, data, 4096, 0, 0) == 1
    assert kind(seg, 2) == SLOT_HELD and out[0].state == seg.slot_state(2)
