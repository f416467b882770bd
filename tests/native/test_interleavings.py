"""Deterministic interleavings of the C core: issue 10's defects, scripted.

The harness (czmp.h, "faults and pauses") extends the fault points: a test
arms a named point with an action, and the countdown-th thread of that
process to reach it

  * STOP  -- raises SIGSTOP on its process: the test, its parent, sees it
             stopped (``os.waitpid(pid, WUNTRACED)``), runs other operations
             on the segment, then SIGCONTs it (resume) or SIGKILLs it (crash
             exactly there);
  * PARK  -- blocks that one thread on a process-local futex: another thread
             of the test waits for ``czmp_fault_parked(point)``, acts, then
             ``czmp_fault_release(point)``. Only inside calls that run without
             the GIL (a parked thread holding it would stop the test too);
             a park nobody releases ends by itself after 60 s.

A point fires once and disarms itself; any number may be armed at once.
Disarmed, a point costs one load and a compare (as CZMP_FAULT always did).

Each test below names the issue item it reproduces, the interleaving it
scripts, and what the old code did there. Waits are generous deadlines on
outcomes ("eventually"), never timings.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest

from catzilla_mp._core import (
    SLOT_FREE,
    SLOT_QUEUED,
    SLOT_RUNNING,
    external_handle,
    holder_slot,
    holder_worker,
    new_repair_cookies,
    state_kind,
)
from catzilla_mp._native import ffi, lib

CRITICAL, HIGH, NORMAL, LOW = range(4)
#: Deadline for "eventually" (the machine is shared and noisy).
EVENTUALLY_S = 20.0


# -- harness helpers ----------------------------------------------------------

VICTIM = """
import sys
from catzilla_mp._core import Segment
from catzilla_mp._native import ffi, lib
seg = Segment.attach(sys.argv[1])
point, action = int(sys.argv[2]), sys.argv[3]
lib.czmp_fault_arm_action(point, 1, lib.CZMP_FAULT_STOP)
if action == "take":
    print(seg.take(0, 1, 5.0), flush=True)
elif action == "push":
    print(lib.czmp_ring_push(lib.czmp_segment_task_ring(seg.raw, 0), int(sys.argv[4])), flush=True)
seg.detach()
"""


def start_stopped(spawn, seg, point: int, action: str, *args: str) -> subprocess.Popen:
    """A process that attaches, arms `point` with STOP, runs `action`; returned once stopped there."""
    p = spawn(VICTIM, seg.name, str(point), action, *args, stdout=subprocess.PIPE, text=True)
    _, status = os.waitpid(p.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), "the victim ended before its pause point"
    return p


def resume(p: subprocess.Popen) -> str:
    os.kill(p.pid, signal.SIGCONT)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0
    return out


def kill_stopped(p: subprocess.Popen) -> None:
    os.kill(p.pid, signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL


def eventually(cond, what: str) -> None:
    deadline = time.monotonic() + EVENTUALLY_S
    while not cond():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.001)


@pytest.fixture
def pauses():
    """Arm PARK points in this process; every point is released at teardown."""
    armed: list[int] = []

    def arm(point: int) -> None:
        assert lib.czmp_fault_arm_action(point, 1, lib.CZMP_FAULT_PARK) == 0
        armed.append(point)

    yield arm
    for point in armed:
        lib.czmp_fault_release(point)
    lib.czmp_fault_arm(lib.CZMP_FAULT_NONE, 0)


class Call(threading.Thread):
    """Run fn(*args) in a thread; .result once it is done."""

    def __init__(self, fn, *args) -> None:
        super().__init__(daemon=True)
        self.fn, self.args, self.result, self.error = fn, args, None, None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.fn(*self.args)
        except BaseException as exc:  # noqa: BLE001 - reported by outcome()
            self.error = exc

    def outcome(self, timeout: float = EVENTUALLY_S):
        self.join(timeout)
        assert not self.is_alive(), f"{self.fn.__name__} did not return"
        if self.error:
            raise self.error
        return self.result


def parked(point: int) -> bool:
    return lib.czmp_fault_parked(point) == 1


def hints(seg, prio: int) -> list[int]:
    return seg.task_ring(prio).pop_many(100_000)


def churn(seg, slots: list[int], rounds: int) -> None:
    """Submit and cancel `slots` `rounds` times: each round leaves one stale hint per slot."""
    for _ in range(rounds):
        assert seg.submit(NORMAL, slots) == len(slots)
        for i in slots:
            assert seg.release(i, seg.slot_state(i))


# -- 10.1 stranded tasks ---------------------------------------------------------

def test_issue_10_1_a_submit_behind_a_stalled_consumer_strands_no_queued_task(make_segment, spawn):
    """A worker stops between claiming a ring cell and releasing it; the app then fills the ring.

    Old code: the push that met the stuck cell "purged" the ring -- popped
    every live hint -- and could push none back (the same cell blocked it),
    so tasks already QUEUED were never run nor failed. Now a ring that only
    looks full is not purged: the new submit is refused (returns 0, slots
    back in the caller's hands) and every queued hint is still there.
    """
    seg = make_segment(nslots=16)                  # rings of 64 cells
    cap = seg.task_ring(NORMAL).capacity
    assert seg.submit(NORMAL, [0]) == 1
    worker = start_stopped(spawn, seg, lib.CZMP_FAULT_RING_POP_CLAIMED, "take")
    # the worker holds position 0; fill positions 1..cap-1 with stale and live hints
    churn(seg, list(range(1, 16)), 4)              # 60 stale hints
    assert seg.submit(NORMAL, [1, 2, 3]) == 3      # tail is now cap: the next push meets cell 0
    assert len(seg.task_ring(NORMAL)) == cap - 1
    # the submit that meets the stuck cell: refused, and nothing already queued is lost
    assert seg.submit(NORMAL, list(range(4, 16))) == 0
    assert all(state_kind(seg.slot_state(i)) == SLOT_FREE for i in range(4, 16))
    # the worker dies there; the supervisor's repairs hand its hint back
    kill_stopped(worker)
    cookies = new_repair_cookies()
    seg.reap(0, cookies)
    lib.czmp_rings_repair(seg.raw, cookies)
    queued = {i for i in range(16) if state_kind(seg.slot_state(i)) == SLOT_QUEUED}
    assert queued == {0, 1, 2, 3}
    assert queued <= set(hints(seg, NORMAL)), "a QUEUED slot lost its only hint"


def test_issue_10_1_a_purge_pushes_every_live_hint_back_even_past_a_stalled_consumer(
        make_segment, spawn, pauses):
    """The ring is truly full; the purge pops it; a consumer then stalls where the hints go back.

    A submit finds the ring full of (mostly stale) hints and purges it: it
    pops everything and parks at PURGE_POPPED with the eight live hints in
    hand. Meanwhile other hints go round the ring and a worker stops holding
    the cell that the second pushed-back hint needs. Old code pushed back
    what fit (one) and dropped the other seven QUEUED tasks' hints. Now the
    purge waits, repairs the stuck cell itself, and pushes every one back.
    """
    seg = make_segment(nslots=32)                  # rings of 64 cells
    ring = seg.task_ring(NORMAL)
    churn(seg, list(range(8, 32)), 2)              # 48 stale hints
    assert seg.submit(NORMAL, list(range(8))) == 8  # 8 live ones
    churn(seg, list(range(8, 16)), 1)              # 64: full
    assert len(ring) == ring.capacity
    pauses(lib.CZMP_FAULT_PURGE_POPPED)
    submit = Call(seg.submit, NORMAL, [16])
    eventually(lambda: parked(lib.CZMP_FAULT_PURGE_POPPED), "the purge popped the ring")
    assert len(ring) == 0
    for _ in range(ring.capacity - 1):             # hints of others go round...
        assert ring.push(40)
    worker = start_stopped(spawn, seg, lib.CZMP_FAULT_RING_POP_CLAIMED, "take")
    assert len(ring.pop_many(ring.capacity)) == ring.capacity - 2
    # ...and the worker holds the cell the purge's second hint needs
    lib.czmp_fault_release(lib.CZMP_FAULT_PURGE_POPPED)
    assert submit.outcome() == 1
    assert set(hints(seg, NORMAL)) >= set(range(8)) | {16}, "a QUEUED slot lost its only hint"
    kill_stopped(worker)


# -- 10.5 a stale publish after a sequence wrap --------------------------------

CHECK_RING = """
import sys
from catzilla_mp._core import Segment
seg = Segment.attach(sys.argv[1])
ring = seg.task_ring(0)
for v in range(1, 11):
    assert ring.push(v), "push failed"
print(ring.pop_many(100), flush=True)
seg.detach()
"""


@pytest.mark.parametrize("lap", [2**32, 2**40], ids=["2^32", "2^40"])
def test_issue_10_5_a_producer_stalled_for_a_whole_lap_cannot_wedge_the_ring(seg, spawn, lap):
    """A producer claims a cell, stops, is repaired away, and resumes one sequence lap later.

    The ring starts near 2^32 (czmp_ring_debug_seek), the producer stops at
    RING_PUSH_CLAIMED, two repairs tombstone its claim, and the ring is moved
    on by exactly one lap of the old 32-bit sequence (or of the new 40-bit
    one). Old code: the free cell's word was the same as the one the
    producer expected, its stale CAS succeeded, and every later push at
    that position spun for ever with the GIL held (checked here in a child
    with a timeout). Now a free cell spells its whole 64-bit position: the
    stale CAS fails, the producer pushes again, nothing is lost.
    """
    ring = seg.task_ring(0)
    start = 2**32 - 5
    assert lib.czmp_ring_debug_seek(ring._ptr, start) == 0
    producer = start_stopped(spawn, seg, lib.CZMP_FAULT_RING_PUSH_CLAIMED, "push", "77")
    cookie = ffi.new("uint64_t[2]")
    ring.repair(cookie)
    ring.repair(cookie)                           # the claim is tombstoned
    assert ring.pop() is None                     # and skipped: the ring is empty
    assert lib.czmp_ring_debug_seek(ring._ptr, start + lap) == 0
    assert resume(producer).strip() == "0"        # its push reports success...
    checker = spawn(CHECK_RING, seg.name, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = checker.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        checker.kill()
        pytest.fail("the ring is wedged: a push spins for ever")
    assert checker.returncode == 0
    assert eval(out) == [77] + list(range(1, 11))  # ...and 77 really is in the ring, once


# -- 10.6 lost wake-up ---------------------------------------------------------------

def test_issue_10_6_a_wake_aimed_at_a_sleeper_that_timed_out_is_not_lost(seg, pauses):
    """The lazy wake finds its only counted sleeper leaving on a timeout.

    W1's futex_wait times out and W1 parks there, still counted a sleeper.
    W2 stops spinning and parks before counting itself. Task A is submitted:
    the lazy wake marks `waking` and wakes nobody (W1 is not in the kernel).
    W1 resumes and takes A; W2 resumes, finds nothing and sleeps. Task B is
    submitted. Old code: `waking` was still 1, so B's submit made no syscall
    and W2 slept until its timeout (60 s here). Now a sleeper clears a stale
    mark, and B wakes W2.
    """
    pauses(lib.CZMP_FAULT_SLEEP_TIMED_OUT)
    w1 = Call(seg.take, 0, 1, 0.02)
    eventually(lambda: parked(lib.CZMP_FAULT_SLEEP_TIMED_OUT), "W1 timed out")
    pauses(lib.CZMP_FAULT_SPIN_DONE)
    w2 = Call(seg.take, 1, 1, 60.0)
    eventually(lambda: parked(lib.CZMP_FAULT_SPIN_DONE), "W2 stopped spinning")
    assert seg.submit(NORMAL, [0]) == 1           # task A: its wake reaches nobody
    lib.czmp_fault_release(lib.CZMP_FAULT_SLEEP_TIMED_OUT)
    assert w1.outcome() == [0]
    lib.czmp_fault_release(lib.CZMP_FAULT_SPIN_DONE)
    wake = seg.header.task_wake
    eventually(lambda: wake.sleepers == 1, "W2 asleep")
    wakes = wake.wakes
    assert seg.submit(NORMAL, [1]) == 1           # task B
    assert w2.outcome() == [1], "W2 slept through task B"
    assert wake.wakes > wakes


def test_a_consumer_back_from_a_task_does_not_repeat_a_wake_still_in_flight(seg, pauses):
    """Issue 18: one FUTEX_WAKE per woken sleeper, not one per task another consumer takes.

    W1, counted a sleeper, parks just before its futex_wait (as a woken,
    niced worker waits for a CPU on a busy host). Task A's submit marks
    `waking` and makes the syscall. W2, busy until now, polls and takes A.
    Task B is submitted. Old code: W2's spin cleared the mark, so B's submit
    made a second syscall (under load, ~1 submit in 6, with the app's GIL
    held). Now only a counted sleeper clears it: B's submit makes none, and
    W1, once it runs, takes B (nothing is lost).
    """
    pauses(lib.CZMP_FAULT_SLEEP_CHECKED)
    w1 = Call(seg.take, 0, 1, 60.0)
    eventually(lambda: parked(lib.CZMP_FAULT_SLEEP_CHECKED), "W1 counted a sleeper")
    wake = seg.header.task_wake
    wakes = wake.wakes
    assert seg.submit(NORMAL, [0]) == 1           # task A: W1 counted, nobody spins
    assert wake.wakes == wakes + 1
    try:
        assert seg.take(1, 1, 5.0) == [0]         # W2 polls and takes A
        assert seg.submit(NORMAL, [1]) == 1       # task B
        after_b = wake.wakes
    finally:
        lib.czmp_fault_release(lib.CZMP_FAULT_SLEEP_CHECKED)
        taken = w1.outcome()
    assert taken == [1], "W1 did not take task B"
    assert after_b == wakes + 1, "B's submit repeated the wake still in flight"


# -- 10.7 the results side's baton ------------------------------------------

def test_issue_10_7_a_helper_leaving_with_results_queued_wakes_the_collector(seg, pauses):
    """A help_collect thread spins, so a worker's finish wakes nobody; the helper then leaves.

    H (a help_collect thread) finds result 0 and parks before it stops
    counting as a spinner; the collector C sleeps. Worker 0 finishes task 1
    while H still counts as a live spinner (its lease is pinned, as H's
    polling would keep it), so no wake is made. H returns with result 0.
    Old code: nothing told C, which slept until its timeout (1 s in the
    engine, 60 s here) with result 1 queued. Now H passes the baton.
    """
    assert seg.submit(NORMAL, [0, 1]) == 2
    assert sorted(seg.take(0, 2, 0)) == [0, 1]
    assert seg.finish(0, 0)
    pauses(lib.CZMP_FAULT_SPIN_FOUND)
    helper = Call(seg.collect, 1, 5.0)
    eventually(lambda: parked(lib.CZMP_FAULT_SPIN_FOUND), "H found result 0")
    collector = Call(seg.collect, 16, 60.0)
    wake = seg.header.result_wake
    eventually(lambda: wake.sleepers == 1, "C asleep")
    wake.spin_lease_ns = lib.czmp_now_ns() + 3600 * 10**9   # H is polling, as far as anyone knows
    assert seg.finish(0, 1)                       # no wake: a spinner will see it
    lib.czmp_fault_release(lib.CZMP_FAULT_SPIN_FOUND)
    assert helper.outcome() == [0]
    assert collector.outcome() == [1], "the collector slept with a result queued"


# -- 10.8 the GIL during a submit that waits -------------------------------

def test_issue_10_8_a_submit_that_must_wait_lets_other_threads_run(make_segment, pauses):
    """A submit finds its ring full and waits; meanwhile this very thread must run.

    The ring is full of stale hints, so the submit has to purge (and could
    have to wait for a stalled consumer). It parks at SUBMIT_WAITING; the
    test's main thread, which needs the GIL, must see it parked and release
    it. Old code held the GIL for the whole call: the main thread could not
    run until the call returned (a park that ends by itself after 60 s makes
    that a failure, not a hang).
    """
    seg = make_segment(nslots=16)
    churn(seg, list(range(16)), 4)                 # 64 stale hints: the ring is full
    pauses(lib.CZMP_FAULT_SUBMIT_WAITING)
    submit = Call(seg.submit, NORMAL, [0])
    eventually(lambda: parked(lib.CZMP_FAULT_SUBMIT_WAITING) or not submit.is_alive(),
               "the submit waited")
    assert parked(lib.CZMP_FAULT_SUBMIT_WAITING), "the submit held the GIL while it waited"
    lib.czmp_fault_release(lib.CZMP_FAULT_SUBMIT_WAITING)
    assert submit.outcome() == 1
    assert hints(seg, NORMAL) == [0]               # the purge kept the one live hint


# -- 10.10 the heartbeat thread and the unmap -------------------------------

HEARTBEAT_THEN_DETACH = """
import sys, time
from catzilla_mp._core import Segment
from catzilla_mp._native import lib
seg = Segment.attach(sys.argv[1])
assert lib.czmp_heartbeat_start(seg.raw, 0, 100_000) == 0   # a beat every 0.1 ms
seg.detach()              # as workers.py's finally does when serve() raised
time.sleep(0.3)           # old code: the thread's next beat hit the unmapped page
print("alive", flush=True)
"""


def test_issue_10_10_detach_joins_the_heartbeat_thread_before_the_unmap(seg, spawn):
    """A worker whose serve() raised unmaps in `finally` without stopping its heartbeat."""
    p = spawn(HEARTBEAT_THEN_DETACH, seg.name, stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0, f"the worker died with {p.returncode}"
    assert out.strip() == "alive"


# -- 10.11 ownership before the result is written --------------------------

def finish_inline(seg, worker: int, idx: int, data: bytes) -> int:
    return lib.czmp_tasks_finish_inline(seg.raw, worker, idx, 0, data, len(data))


def test_issue_10_11_a_late_finish_writes_nothing_into_a_slot_taken_back(seg):
    """Worker 0 is taken off its task (reaped), the task re-runs on worker 1, then 0 finishes late.

    Old code copied worker 0's bytes over worker 1's result before it
    noticed the slot was no longer its own. Now the call checks first and
    writes nothing, not even its worker record.
    """
    assert seg.submit(NORMAL, [0]) == 1
    assert seg.take(0, 1, 0) == [0]
    running, _ = seg.reap(0, new_repair_cookies())  # the app takes the slot back
    assert running == [0]
    assert seg.submit(NORMAL, [0]) == 1             # and runs it again
    assert seg.take(1, 1, 0) == [0]
    assert finish_inline(seg, 1, 0, b"from worker 1") == 0
    done_before = seg.worker(0).tasks_done
    assert finish_inline(seg, 0, 0, b"LATE, from worker 0") == -116   # -ESTALE
    slot = seg.slot(0)
    assert bytes(ffi.buffer(slot.result_inline, slot.result_len)) == b"from worker 1"
    assert seg.worker(0).tasks_done == done_before
    assert seg.collect(4, 0) == [0]


def test_issue_10_11_a_second_publish_of_the_same_task_changes_nothing(seg):
    assert seg.submit(NORMAL, [0]) == 1
    assert seg.take(0, 1, 0) == [0]
    assert finish_inline(seg, 0, 0, b"first") == 0
    assert finish_inline(seg, 0, 0, b"second") == -116                 # -ESTALE
    slot = seg.slot(0)
    assert bytes(ffi.buffer(slot.result_inline, slot.result_len)) == b"first"
    assert seg.worker(0).tasks_done == 1


def test_issue_10_11_finish_handle_checks_ownership_before_it_writes_the_handle(seg):
    """The publish of a large outcome (a chunk) by a worker whose slot was taken back."""
    assert seg.submit(NORMAL, [0]) == 1
    assert seg.take(0, 1, 0) == [0]
    seg.reap(0, new_repair_cookies())
    chunk = seg.alloc(300, holder_worker(0))
    assert lib.czmp_tasks_finish_handle(seg.raw, 0, 0, 0, chunk, 300) == -116    # -ESTALE
    assert seg.slot(0).result_handle == 0 and seg.slot(0).result_len == 0
    assert seg.holder(chunk) == holder_worker(0)    # still the caller's to free
    assert seg.submit(NORMAL, [0]) == 1
    assert seg.take(1, 1, 0) == [0]
    chunk = seg.alloc(300, holder_worker(1))
    assert lib.czmp_tasks_finish_handle(seg.raw, 1, 0, 0, chunk, 300) == 0
    assert seg.holder(chunk) == holder_slot(0)      # the slot owns it now
    assert seg.collect(4, 0) == [0]
    assert seg.worker(1).tasks_done == 1


def test_a_reaped_running_slot_keeps_its_external_result_handle_for_the_app(seg):
    """The app names external payload segments; the reap must not forget one (it leaked)."""
    assert seg.submit(NORMAL, [0]) == 1
    assert seg.take(0, 1, 0) == [0]
    external = external_handle(42)
    seg.slot(0).result_handle = external           # written, then the worker died
    running, _ = seg.reap(0, new_repair_cookies())
    assert running == [0] and seg.slot(0).result_handle == external
    assert seg.release(0, seg.slot_state(0))       # after the app unlinked it
    assert seg.slot(0).result_handle == 0


# -- the harness itself --------------------------------------------------------

def test_a_disarmed_point_does_nothing_and_a_parked_thread_resumes_where_it_stopped(seg, pauses):
    assert lib.czmp_fault_arm_action(lib.CZMP_FAULT_NPOINTS, 1, lib.CZMP_FAULT_PARK) == -22
    assert lib.czmp_fault_arm_action(lib.CZMP_FAULT_SPIN_DONE, 1, 7) == -22
    assert seg.take(0, 1, 0.001) == []             # nothing armed: passes every point
    pauses(lib.CZMP_FAULT_SLEEP_CHECKED)
    taker = Call(seg.take, 0, 1, 60.0)
    eventually(lambda: parked(lib.CZMP_FAULT_SLEEP_CHECKED), "the taker about to sleep")
    assert seg.submit(NORMAL, [3]) == 1            # pushed before it sleeps: seq moved
    lib.czmp_fault_release(lib.CZMP_FAULT_SLEEP_CHECKED)
    assert taker.outcome() == [3]
    assert state_kind(seg.slot_state(3)) == SLOT_RUNNING
