"""A model of the C core's rings, slots and arena, and a state machine that checks it.

hypothesis drives one small segment through the C API the engine uses
(``czmp_tasks_submit``, ``_take``, ``_finish``/``_finish_inline``,
``czmp_results_collect``, ``czmp_slot_release``, ``czmp_worker_reap``,
``czmp_rings_repair``, ``czmp_arena_*``) and keeps, next to it, a plain Python
model of what every slot and chunk must be. After every step the segment must
agree with the model.

Crashes. "Kill a holder at any step": a worker operation runs in a forked
child that arms a fault point (``czmp_fault_arm``) and SIGKILLs itself
there, halfway through take, finish or an allocation; the child shares the
mapping, so what it left behind (a claimed ring cell, a RUNNING slot with
nobody to finish it, a chunk tagged with a dead worker) is really in the
segment. The model cannot know how far the child got, so it reads the slot
states afterwards and accepts only the transitions that worker may make.
Then the worker is dead until the ``reap`` rule reaps it, as the supervisor
would.

Invariants, after every step:

* every slot's state word (kind, owner, generation) is the model's;
* every arena chunk's holder tag is the model's, and every chunk that is
  not free has a holder that can free it: a slot that references it in
  ``args_handle``/``result_handle``, a worker (alive, or dead and not yet
  reaped), or the app;
* ``czmp_arena_stats`` counts agree with the tags;
* the task rings hold at least one cell per QUEUED slot, give or take the
  cells dead consumers still claim (hints may be duplicated: slot states are
  the truth, so the bound only goes one way);
* a refused ``finish_inline`` (slot not RUNNING for that worker) changes no
  byte of the slot.

And with the ``audit`` rule (also run at the end of every example): after
two ring repairs, as the supervisor makes them, every QUEUED slot is taken
exactly once by a draining worker and every DONE slot whose hint was
published is collected: nothing is lost. The drained slots are put back
(reap, resubmit) so the run goes on.

``tests/model/test_core_model.py`` runs this with a bounded number of
examples in CI; ``python -m bench.model --examples N`` runs it longer.
"""
from __future__ import annotations

import errno
import os
import signal
from dataclasses import dataclass, field

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from catzilla_mp._core import (
    HOLDER_APP,
    HOLDER_FREE,
    SLOT_DONE,
    SLOT_FEEDING,
    SLOT_FREE,
    SLOT_HELD,
    SLOT_QUEUED,
    SLOT_RUNNING,
    SLOT_WAITING,
    Segment,
    SizeClass,
    holder_slot,
    holder_worker,
    new_repair_cookies,
    state_gen,
    state_kind,
    state_make,
    state_owner,
)
from catzilla_mp._native import ffi, lib
from catzilla_mp.segment_janitor import new_segment_name

#: Eight slots: rings get their minimum of 64 cells, so a few dozen
#: submit/cancel rounds wrap them and fill them with stale hints.
NSLOTS = 8
#: Workers 0..2 are modelled; the last index drains the queue in audits.
NWORKERS = 4
AUDITOR = NWORKERS - 1
WORKERS = range(NWORKERS - 1)
#: Few, small chunks so that the model runs the arena out of room.
CLASSES = (SizeClass(256, 4), SizeClass(1024, 2))
CHUNK_KIND = lib.CZMP_HANDLE_CHUNK
KIND_NAMES = {SLOT_FREE: "FREE", SLOT_QUEUED: "QUEUED", SLOT_RUNNING: "RUNNING",
              SLOT_DONE: "DONE", SLOT_HELD: "HELD", SLOT_WAITING: "WAITING",
              SLOT_FEEDING: "FEEDING"}

#: Rules left out (comma-separated names in CZMP_MODEL_SKIP), to look past a
#: defect already known while it is being fixed: ``stale_finish``, ``kill``,
#: ``priority`` (the priority-order check of take).
SKIP = set(filter(None, os.environ.get("CZMP_MODEL_SKIP", "").split(",")))

#: The fault points a worker can die at, and the operation that reaches them.
WORKER_FAULTS = (
    ("take", lib.CZMP_FAULT_RING_POP_CLAIMED),
    ("take", lib.CZMP_FAULT_TAKE_SLOT_CLAIMED),
    ("finish", lib.CZMP_FAULT_RESULT_WRITTEN),
    ("finish", lib.CZMP_FAULT_FINISH_DONE),
    ("finish", lib.CZMP_FAULT_RING_PUSH_CLAIMED),
    ("finish", lib.CZMP_FAULT_ARENA_HELD),
    ("take", 0),      # no fault: the worker dies between two operations
    ("finish", 0),
    # a chain's hand-off (issue 15): the worker feeding a WAITING child
    ("feed", lib.CZMP_FAULT_FEED_CLAIMED),
    ("feed", lib.CZMP_FAULT_FEED_QUEUED),
    ("feed", lib.CZMP_FAULT_ARENA_HELD),
    ("feed", lib.CZMP_FAULT_RING_PUSH_CLAIMED),
)
#: Sizes of a fed outcome: inline-sized, a 1024-byte chunk, beyond every chunk (-EFBIG).
FEED_SIZES = (16, 600, 2000)


@dataclass
class SlotModel:
    kind: int = SLOT_FREE
    owner: int = 0            # worker index + 1, as in the state word
    gen: int = 0
    prio: int = 0
    args: int = 0             # chunk handle in args_handle, 0 for none/inline
    result: int = 0           # chunk handle in result_handle, 0 for none/inline
    fed: int = 0              # chunk handle in fed_handle (a chain child's fed value), 0 for none
    hinted: bool = True       # DONE: the result hint surely reached the ring
    # the continuation (czmp_slot_set_next): (child, child's gen, our gen then), or None
    next: "tuple[int, int, int] | None" = None

    def word(self) -> int:
        return state_make(self.gen, self.owner, self.kind)


@dataclass
class Model:
    slots: list[SlotModel] = field(default_factory=lambda: [SlotModel() for _ in range(NSLOTS)])
    tags: dict[int, int] = field(default_factory=dict)    # handle -> holder tag (non-free only)
    dead: set[int] = field(default_factory=set)           # workers killed, not yet reaped
    stuck_claims: int = 0     # consumer cells dead workers may hold, until two repairs
    dirty: bool = False       # a dead process may have left a ring cell claimed
    repairs_since_kill: int = 2   # ring repairs (or reaps) since the last kill
    done_count: dict[int, int] = field(default_factory=lambda: {w: 0 for w in range(NWORKERS)})
    uncertain: set[int] = field(default_factory=set)      # workers whose counters a victim touched


def all_handles(seg: Segment) -> list[int]:
    """Every chunk handle of the segment's arena."""
    hdr = seg.header
    return [(CHUNK_KIND << 56) | (c << 48) | i
            for c in range(hdr.nclasses) for i in range(hdr.classes[c].nchunks)]


def run_in_child(fn) -> int:
    """Run ``fn`` in a forked child; return the signal that killed it, or 0 if it returned.

    The child shares the segment's mapping (MAP_SHARED), so what it did, or
    half did, before dying is there for the parent to see. It never returns
    into the parent's code: os._exit in every case.
    """
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            fn()
        except BaseException:  # noqa: BLE001 - any exception is a failure, reported by status
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return os.WTERMSIG(status)
    assert os.WEXITSTATUS(status) == 0, f"the child failed (exit {os.WEXITSTATUS(status)})"
    return 0


class CoreMachine(RuleBasedStateMachine):
    """Rings, slots and arena of one segment against :class:`Model`."""

    def __init__(self) -> None:
        super().__init__()
        self.seg = Segment.create(new_segment_name(), nslots=NSLOTS, nworkers=NWORKERS,
                                  nfuncs=1, classes=CLASSES, populate=False)
        self.raw = self.seg.raw
        self.m = Model()
        self.cookies = new_repair_cookies()
        self.buf = ffi.new("uint32_t[]", 4 * 64 * 8)
        self.handles = all_handles(self.seg)
        self.app_chunks: list[int] = []

    def teardown(self) -> None:
        try:
            if not self.m.dead:
                self._audit()
        finally:
            self.seg.unlink()
            self.seg.detach()

    # -- helpers ---------------------------------------------------------------------

    def _slots(self, *kinds: int) -> list[int]:
        return [i for i, s in enumerate(self.m.slots) if s.kind in kinds]

    def _alloc(self, size: int, holder: int) -> int:
        """A chunk of ``size`` bytes for ``holder``, or 0 if the arena has none (model checked)."""
        out = ffi.new("uint64_t *")
        rc = lib.czmp_arena_alloc(self.raw, size, holder, out)
        fitting = [h for h in self.handles if lib.czmp_arena_chunk_size(self.raw, h) >= size]
        if rc == -errno.ENOMEM:
            assert all(h in self.m.tags for h in fitting), "alloc refused with a fitting chunk free"
            return 0
        assert rc == 0, rc
        h = out[0]
        assert h in fitting and h not in self.m.tags, f"alloc gave a held or unfit chunk {h:#x}"
        self.m.tags[h] = holder
        return h

    def _drop(self, h: int) -> None:
        if h:
            self.m.tags.pop(h, None)

    def _collect_some(self, max_n: int) -> list[int]:
        n = lib.czmp_results_collect(self.raw, self.buf, max_n, 0)
        assert n >= 0, n
        got = list(ffi.unpack(self.buf, n))
        assert len(set(got)) == len(got), f"collect returned a slot twice: {got}"
        for i in got:
            s = self.m.slots[i]
            assert s.kind == SLOT_DONE, f"collect returned slot {i}, {KIND_NAMES[s.kind]} in the model"
            s.kind, s.owner, s.hinted = SLOT_HELD, 0, True
        return got

    def _result_room(self) -> None:
        """Collect as the app's collector would, before a finish could wait on a full result ring.

        czmp_tasks_finish waits (never drops the hint) while the result ring
        looks full; in this one-threaded model nobody else would ever empty
        it. Hints of slots reaped while DONE stay in the ring until a collect
        pops them, so long runs fill it.
        """
        ring = lib.czmp_segment_result_ring(self.raw)
        if lib.czmp_ring_size(ring) + 2 >= lib.czmp_ring_capacity(ring) and not self.m.dirty:
            self._collect_some(256)

    # -- app side --------------------------------------------------------------------

    @rule(data=st.data(), prio=st.integers(0, 3), chunk=st.booleans(), n=st.integers(1, 3))
    def submit(self, data, prio, chunk, n):
        """App: queue FREE or HELD slots (a new task, or a retry of a held one)."""
        ready = self._slots(SLOT_FREE, SLOT_HELD)
        if not ready:
            return
        picked = data.draw(st.lists(st.sampled_from(ready), min_size=1, max_size=n, unique=True))
        for i in picked:
            s, raw = self.m.slots[i], self.seg.slot(i)
            if s.result:
                # a retry: the app drops the failed attempt's result first
                assert lib.czmp_arena_free(self.raw, s.result, holder_slot(i)) == 0
                self._drop(s.result)
                s.result = 0
                raw.result_handle = 0
            if s.kind == SLOT_FREE:
                if chunk and (h := self._alloc(300, holder_slot(i))):
                    s.args, raw.args_handle, raw.args_len = h, h, 300
                else:
                    raw.args_handle, raw.args_len = lib.CZMP_HANDLE_INLINE << 56, 8
        arr = ffi.new("uint32_t[]", picked)
        got = lib.czmp_tasks_submit(self.raw, prio, arr, len(picked))
        self._check_refusal(got, len(picked), f"submit of {picked} at priority {prio}")
        for i in picked[:got]:
            s = self.m.slots[i]
            s.kind, s.owner, s.prio = SLOT_QUEUED, 0, prio
        for i in picked[got:]:
            # refused: still the app's, as it was; the app fails the task
            # and gives the argument chunk back
            s = self.m.slots[i]
            if s.kind == SLOT_FREE and s.args:
                assert lib.czmp_arena_free(self.raw, s.args, holder_slot(i)) == 0
                self._drop(s.args)
                s.args = 0
                self.seg.slot(i).args_handle = 0

    def _check_refusal(self, got: int, n: int, what: str) -> None:
        """A submit may queue a prefix only while a dead worker's claimed cell blocks a ring.

        czmp.h: a ring that only looks full (a consumer dead between claim and
        release, until the next repair) is waited on for 2 ms, then the rest
        is refused and stays the caller's. Anything else must queue all.
        """
        assert 0 <= got <= n, f"{what}: returned {got}"
        assert got == n or self.m.dirty, (f"{what} queued {got} of {n} with no dead worker's cell "
                                          f"in the way (issue 10.1)")

    @rule(data=st.data())
    def release(self, data):
        """App: give a HELD slot back, or cancel a QUEUED one (its hint stays in the ring)."""
        cands = self._slots(SLOT_HELD, SLOT_QUEUED)
        if not cands:
            return
        i = data.draw(st.sampled_from(cands))
        s = self.m.slots[i]
        assert lib.czmp_slot_release(self.raw, i, s.word()) == 0, f"release of slot {i} refused"
        self._drop(s.args)
        self._drop(s.result)
        self._drop(s.fed)
        assert self.seg.slot(i).next == 0 and self.seg.slot(i).fed_handle == 0
        s.kind, s.owner, s.gen, s.args, s.result, s.fed, s.next = SLOT_FREE, 0, s.gen + 1, 0, 0, 0, None

    @rule(data=st.data(), prio=st.integers(0, 3), rounds=st.integers(1, 80))
    def churn(self, data, prio, rounds):
        """App: submit and cancel one slot over and over (each round leaves a stale hint).

        A burst of these fills a 64-cell ring with stale hints within one
        supervisor tick, which is what makes submit purge the ring; with a
        dead worker's claimed cell in it, that is issue 10.1.
        """
        free = self._slots(SLOT_FREE)
        if not free:
            return
        i = data.draw(st.sampled_from(free))
        s, raw = self.m.slots[i], self.seg.slot(i)
        arr = ffi.new("uint32_t[]", [i])
        for r in range(rounds):
            raw.args_handle, raw.args_len = lib.CZMP_HANDLE_INLINE << 56, 8
            got = lib.czmp_tasks_submit(self.raw, prio, arr, 1)
            self._check_refusal(got, 1, f"submit of slot {i} at priority {prio} after {r} rounds "
                                        f"of submit and cancel")
            if got == 0:
                return
            s.kind, s.prio = SLOT_QUEUED, prio
            assert lib.czmp_slot_release(self.raw, i, s.word()) == 0
            s.kind, s.gen = SLOT_FREE, s.gen + 1

    @rule(data=st.data())
    def release_with_a_stale_word(self, data):
        """App: a release with an old generation or the wrong kind changes nothing."""
        i = data.draw(st.integers(0, NSLOTS - 1))
        s = self.m.slots[i]
        stale = state_make(s.gen + 1 if s.gen == 0 else s.gen - 1, 0, SLOT_HELD)
        assert lib.czmp_slot_release(self.raw, i, stale) != 0

    @rule(max_n=st.integers(1, 16))
    def collect(self, max_n):
        """App: collect finished slots, DONE -> HELD."""
        self._collect_some(max_n)

    @rule()
    def repair(self):
        """Supervisor tick: repair every ring (cells held since the previous tick)."""
        assert lib.czmp_rings_repair(self.raw, self.cookies) >= 0
        self.m.repairs_since_kill += 1
        if self.m.repairs_since_kill >= 2:
            self.m.dirty, self.m.stuck_claims = False, 0

    @rule(size=st.sampled_from([1, 256, 257, 1024, 1025]))
    def app_alloc(self, size):
        """App: allocate a chunk for itself (a function table entry, a big argument)."""
        if size > lib.czmp_arena_max_size(self.raw):
            out = ffi.new("uint64_t *")
            assert lib.czmp_arena_alloc(self.raw, size, HOLDER_APP, out) == -errno.EFBIG
            return
        h = self._alloc(size, HOLDER_APP)
        if h:
            self.app_chunks.append(h)

    @rule(data=st.data())
    def app_free(self, data):
        """App: free one of its chunks; freeing it again, or as another holder, is refused."""
        if not self.app_chunks:
            return
        h = data.draw(st.sampled_from(self.app_chunks))
        assert lib.czmp_arena_free(self.raw, h, holder_worker(0)) == -errno.EPERM
        assert lib.czmp_arena_free(self.raw, h, HOLDER_APP) == 0
        assert lib.czmp_arena_free(self.raw, h, HOLDER_APP) == -errno.EPERM
        self.app_chunks.remove(h)
        self._drop(h)

    # -- worker side -----------------------------------------------------------------

    def _alive(self) -> list[int]:
        return [w for w in WORKERS if w not in self.m.dead]

    @rule(data=st.data(), max_n=st.integers(1, 4))
    def take(self, data, max_n):
        """A live worker takes up to max_n tasks, highest priority first."""
        alive = self._alive()
        if not alive:
            return
        w = data.draw(st.sampled_from(alive))
        n = lib.czmp_tasks_take(self.raw, w, self.buf, max_n, 0)
        assert n >= 0, n
        got = list(ffi.unpack(self.buf, n))
        queued = self._slots(SLOT_QUEUED)
        assert len(set(got)) == len(got), f"take returned a slot twice: {got}"
        for i in got:
            assert self.m.slots[i].kind == SLOT_QUEUED, \
                f"take returned slot {i}, {KIND_NAMES[self.m.slots[i].kind]} in the model"
        if not self.m.dirty:
            # no dead process holds a cell: every QUEUED slot is reachable
            assert n == min(max_n, len(queued)), \
                f"take({max_n}) got {got} with {len(queued)} slots QUEUED"
            prios = [self.m.slots[i].prio for i in got]
            if "priority" not in SKIP:
                assert prios == sorted(prios), f"take out of priority order: {got} {prios}"
                assert not got or prios[0] == min(self.m.slots[i].prio for i in queued), (
                    f"take served {got} (priorities {prios}) with a slot of priority "
                    f"{min(self.m.slots[i].prio for i in queued)} QUEUED")
        for i in got:
            s = self.m.slots[i]
            s.kind, s.owner = SLOT_RUNNING, w + 1

    @rule(data=st.data(), how=st.sampled_from(["inline", "chunk", "failed"]))
    def finish(self, data, how):
        """A live worker finishes one of its RUNNING slots."""
        mine = [i for i in self._slots(SLOT_RUNNING) if self.m.slots[i].owner - 1 not in self.m.dead]
        if not mine:
            return
        i = data.draw(st.sampled_from(mine))
        s = self.m.slots[i]
        w = s.owner - 1
        self._result_room()
        if how == "chunk" and (h := self._alloc(600, holder_worker(w))):
            raw = self.seg.slot(i)
            raw.result_handle, raw.result_len = h, 600
            assert lib.czmp_tasks_finish(self.raw, w, i) == 0
            self.m.tags[h] = holder_slot(i)
            s.result = h
        else:
            flags = lib.CZMP_RESULT_FAILED if how == "failed" else 0
            assert lib.czmp_tasks_finish_inline(self.raw, w, i, flags, b"r" * 16, 16) == 0
            self.m.done_count[w] += 1
        s.kind, s.hinted = SLOT_DONE, True

    @precondition(lambda self: "stale_finish" not in SKIP)
    @rule(data=st.data())
    def finish_of_a_slot_not_ours_is_refused(self, data):
        """A worker finishing a slot that is not RUNNING for it gets -ESTALE, and nothing changes."""
        alive = self._alive()
        if not alive:
            return
        w = data.draw(st.sampled_from(alive))
        i = data.draw(st.integers(0, NSLOTS - 1))
        s = self.m.slots[i]
        if s.kind == SLOT_RUNNING and s.owner == w + 1:
            return
        raw = self.seg.slot(i)
        before = bytes(ffi.buffer(raw, ffi.sizeof("czmp_slot_t")))
        self._result_room()
        rc = lib.czmp_tasks_finish_inline(self.raw, w, i, 0, b"X" * 32, 32)
        assert rc == -errno.ESTALE, rc
        after = bytes(ffi.buffer(raw, ffi.sizeof("czmp_slot_t")))
        assert after == before, (f"a refused finish_inline by worker {w} wrote into slot {i} "
                                 f"({KIND_NAMES[s.kind]}, owner {s.owner}) (issue 10.11)")
        assert lib.czmp_tasks_finish(self.raw, w, i) == -errno.ESTALE

    @precondition(lambda self: "kill" not in SKIP)
    @rule(data=st.data(), which=st.integers(0, len(WORKER_FAULTS) - 1), countdown=st.integers(1, 3))
    def kill_a_worker_mid_operation(self, data, which, countdown):
        """A worker dies halfway through take or finish (SIGKILL at a fault point)."""
        alive = self._alive()
        if not alive:
            return
        w = data.draw(st.sampled_from(alive))
        op, point = WORKER_FAULTS[which]
        mine = [i for i in self._slots(SLOT_RUNNING) if self.m.slots[i].owner == w + 1]
        if op in ("finish", "feed") and not mine:
            op = "take"
        self._result_room()
        before_states = [self.seg.slot_state(i) for i in range(NSLOTS)]
        before_tags = {h: lib.czmp_arena_holder(self.raw, h) for h in self.handles}
        raw, seg = self.raw, self.seg

        def victim():
            if point:
                lib.czmp_fault_arm(point, countdown)
            if op == "take":
                buf = ffi.new("uint32_t[]", 4)
                lib.czmp_tasks_take(raw, w, buf, 4, 0)
            elif op == "feed":
                for i in mine:
                    lib.czmp_tasks_feed(raw, w, i, 0, b"f" * 600, 600)
            else:
                for i in mine:
                    out = ffi.new("uint64_t *")
                    if lib.czmp_arena_alloc(raw, 600, holder_worker(w), out) == 0:
                        s = seg.slot(i)
                        s.result_handle, s.result_len = out[0], 600
                        lib.czmp_tasks_finish(raw, w, i)
                    else:
                        lib.czmp_tasks_finish_inline(raw, w, i, 0, b"k" * 8, 8)
            if point:
                lib.czmp_fault_arm(0, 0)

        sig = run_in_child(victim)
        assert sig in (0, signal.SIGKILL), f"the victim died of signal {sig}"
        self.m.dead.add(w)
        self.m.dirty = True
        self.m.repairs_since_kill = 0
        self.m.stuck_claims += 1   # it dies at its first claim at most
        self.m.uncertain.add(w)
        self._adopt_child_effects(w, before_states, before_tags)

    def _adopt_child_effects(self, w, before_states, before_tags) -> None:
        """Check what a dead worker left against what worker ``w`` may do, and adopt it."""
        for i in range(NSLOTS):
            s, old, new = self.m.slots[i], before_states[i], self.seg.slot_state(i)
            if new == old:
                continue
            k0, k1 = state_kind(old), state_kind(new)
            legal = (state_gen(new) == state_gen(old) and state_owner(new) == w + 1 and
                     (k0, k1) in ((SLOT_QUEUED, SLOT_RUNNING), (SLOT_RUNNING, SLOT_DONE),
                                  (SLOT_WAITING, SLOT_FEEDING)) and
                     (k0 != SLOT_RUNNING or state_owner(old) == w + 1))
            # a feed that completed: WAITING -> QUEUED (owner none), its chunk in
            fed = (state_gen(new) == state_gen(old) and state_owner(new) == 0 and
                   (k0, k1) == (SLOT_WAITING, SLOT_QUEUED))
            assert legal or fed, (f"worker {w} moved slot {i} from {KIND_NAMES.get(k0)}/"
                                  f"{state_owner(old)} to {KIND_NAMES.get(k1)}/{state_owner(new)}")
            s.kind, s.owner = k1, state_owner(new)
            if k1 == SLOT_DONE:
                s.hinted = False  # it may have died before pushing the hint
        for h in self.handles:
            old, new = before_tags[h], lib.czmp_arena_holder(self.raw, h)
            if new == old:
                continue
            slot_of = new - holder_slot(0) if new >= holder_slot(0) else -1
            child = self.m.slots[slot_of] if 0 <= slot_of < NSLOTS else None
            feeding = child is not None and child.kind in (SLOT_FEEDING, SLOT_QUEUED) and \
                self.seg.slot(slot_of).fed_handle == h
            legal = ((old == HOLDER_FREE and new == holder_worker(w)) or
                     (old in (HOLDER_FREE, holder_worker(w)) and child is not None and
                      ((child.kind == SLOT_DONE and child.owner == w + 1) or feeding)))
            assert legal, f"worker {w} retagged chunk {h:#x} from {old:#x} to {new:#x}"
            self.m.tags[h] = new
            if feeding:
                child.fed = h
            elif child is not None:
                child.result = h

    @rule(data=st.data())
    def reap(self, data):
        """Supervisor: reap a dead worker; its RUNNING and DONE slots come back HELD."""
        if not self.m.dead:
            return
        w = data.draw(st.sampled_from(sorted(self.m.dead)))
        running, done = self.seg.reap(w, self.cookies)
        want_running = [i for i in self._slots(SLOT_RUNNING) if self.m.slots[i].owner == w + 1]
        want_done = [i for i in self._slots(SLOT_DONE) if self.m.slots[i].owner == w + 1]
        assert sorted(running) == want_running, (running, want_running)
        assert sorted(done) == want_done, (done, want_done)
        for i in running:
            s = self.m.slots[i]
            self._drop(s.result)
            s.result = 0
        for i in running + done:
            s = self.m.slots[i]
            s.kind, s.owner = SLOT_HELD, 0
        for i in self._slots(SLOT_FEEDING):
            s = self.m.slots[i]
            if s.owner == w + 1:  # back to WAITING, its half-fed chunk freed
                self._drop(s.fed)
                s.kind, s.owner, s.fed = SLOT_WAITING, 0, 0
        for h, tag in list(self.m.tags.items()):
            if tag == holder_worker(w):
                del self.m.tags[h]
        # a slot DONE by a worker that died before its hint was pushed is only
        # ever found by this reap; the model saw it here
        self.m.dead.discard(w)
        self.m.repairs_since_kill += 1
        if not self.m.dead and self.m.repairs_since_kill >= 2:
            self.m.dirty, self.m.stuck_claims = False, 0

    # -- chains: a child WAITING, fed by its parent's worker (issue 15) --------------

    @rule(data=st.data(), prio=st.integers(0, 3))
    def wait(self, data, prio):
        """App: store a chain child WAITING (a new task: a FREE slot), and name it in a
        parent's continuation."""
        ready = self._slots(SLOT_FREE)
        if not ready:
            return
        i = data.draw(st.sampled_from(ready))
        s, raw = self.m.slots[i], self.seg.slot(i)
        raw.args_handle, raw.args_len = lib.CZMP_HANDLE_INLINE << 56, 8
        raw.priority = prio
        waiting = state_make(s.gen, 0, SLOT_WAITING)
        assert lib.czmp_slot_cas(self.raw, i, s.word(), waiting) == 0
        s.kind, s.owner, s.prio = SLOT_WAITING, 0, prio
        parents = [p for p in range(NSLOTS) if p != i and self.m.slots[p].kind in
                   (SLOT_QUEUED, SLOT_RUNNING, SLOT_HELD, SLOT_WAITING)]
        # mostly a RUNNING parent: the feed rule then has work at once
        running = [p for p in parents if self.m.slots[p].kind == SLOT_RUNNING]
        if running and data.draw(st.integers(0, 3)):
            parents = running
        if parents:
            p = data.draw(st.sampled_from(parents))
            ps = self.m.slots[p]
            assert lib.czmp_slot_set_next(self.raw, p, ps.word(), i, waiting) == 0
            ps.next = (i, s.gen, ps.gen)
        assert lib.czmp_slot_set_next(self.raw, i, s.word(), i, waiting) == -errno.EINVAL

    @rule(data=st.data())
    def take_back(self, data):
        """App: a WAITING child taken back (its parent failed, it was cancelled): -> HELD."""
        cands = self._slots(SLOT_WAITING)
        if not cands:
            return
        i = data.draw(st.sampled_from(cands))
        s = self.m.slots[i]
        held = state_make(s.gen, 0, SLOT_HELD)
        assert lib.czmp_slot_cas(self.raw, i, s.word(), held) == 0
        assert s.fed == 0 and self.seg.slot(i).fed_handle == 0, "a WAITING slot holds a fed chunk"
        s.kind = SLOT_HELD

    def _feedable_child(self, i: int) -> int:
        """The child slot i's worker must feed now, or -1."""
        s = self.m.slots[i]
        if s.next is None:
            return -1
        child, child_gen, my_gen = s.next
        c = self.m.slots[child]
        if my_gen != s.gen or c.kind != SLOT_WAITING or c.gen != child_gen:
            return -1
        return child

    @rule(data=st.data(), size=st.sampled_from(FEED_SIZES))
    def feed(self, data, size):
        """A live worker feeds its RUNNING slot's outcome to the WAITING child it names."""
        mine = [i for i in self._slots(SLOT_RUNNING) if self.m.slots[i].owner - 1 not in self.m.dead]
        if not mine:
            return
        feedable = [i for i in mine if self._feedable_child(i) >= 0]
        i = data.draw(st.sampled_from(feedable if feedable and data.draw(st.integers(0, 3))
                                      else mine))
        w = self.m.slots[i].owner - 1
        child = self._feedable_child(i)
        fitting = [h for h in self.handles if h not in self.m.tags and
                   lib.czmp_arena_chunk_size(self.raw, h) >= size + 8]
        payload = (bytes(range(251)) * (size // 251 + 1))[:size]
        rc = lib.czmp_tasks_feed(self.raw, w, i, 7, payload, size)
        if child < 0:
            assert rc == 0, f"feed from slot {i} returned {rc} with no child to feed"
            return
        c, raw = self.m.slots[child], self.seg.slot(child)
        if not fitting:
            assert rc in (-errno.ENOMEM, -errno.EFBIG), rc
            assert self.seg.slot_state(child) == c.word() and raw.fed_handle == 0
            return
        if rc == -errno.EAGAIN:  # its ring had no room: only behind a dead consumer's cell
            assert self.m.dirty, "a feed found no ring room with no dead worker's cell in the way"
            assert self.seg.slot_state(child) == c.word() and raw.fed_handle == 0
            return
        assert rc == 1, rc
        h = raw.fed_handle
        assert h in fitting and lib.czmp_arena_holder(self.raw, h) == holder_slot(child)
        body = bytes(ffi.buffer(ffi.cast("char *", lib.czmp_arena_ptr(self.raw, h)), size + 8))
        assert body[:8] == size.to_bytes(4, "little") + (7).to_bytes(4, "little")
        assert body[8:] == payload
        self.m.tags[h] = holder_slot(child)
        c.kind, c.fed = SLOT_QUEUED, h
        # a second feed of the same outcome (a retry) must not feed it again
        assert lib.czmp_tasks_feed(self.raw, w, i, 7, b"again", 5) == 0

    # -- the audit: nothing lost -----------------------------------------------------

    @precondition(lambda self: not self.m.dead)
    @rule(now=st.integers(0, 3))
    def audit(self, now):
        """Repair twice, then every QUEUED slot is taken once and every hinted DONE slot collected.

        Drawn as often as any rule but run one time in four: each audit
        repairs the rings, and trouble needs time between repairs to grow.
        """
        if now == 0:
            self._audit()

    def _audit(self) -> None:
        lib.czmp_rings_repair(self.raw, self.cookies)
        lib.czmp_rings_repair(self.raw, self.cookies)
        self.m.dirty, self.m.stuck_claims, self.m.repairs_since_kill = False, 0, 2
        queued = self._slots(SLOT_QUEUED)
        taken: list[int] = []
        while True:
            n = lib.czmp_tasks_take(self.raw, AUDITOR, self.buf, 64, 0)
            assert n >= 0
            if n == 0:
                break
            taken += ffi.unpack(self.buf, n)
        assert len(set(taken)) == len(taken), f"a QUEUED slot was taken twice: {taken}"
        assert sorted(taken) == queued, (
            f"QUEUED slots not reachable through their rings: {sorted(set(queued) - set(taken))}; "
            f"taken but not QUEUED: {sorted(set(taken) - set(queued))}")
        running, done = self.seg.reap(AUDITOR, self.cookies)
        assert sorted(running) == queued and done == []
        by_prio: dict[int, list[int]] = {}
        for i in queued:
            by_prio.setdefault(self.m.slots[i].prio, []).append(i)
        for prio, idx in by_prio.items():
            assert self.seg.submit(prio, idx) == len(idx)
        must = [i for i in self._slots(SLOT_DONE) if self.m.slots[i].hinted]
        maybe = self._slots(SLOT_DONE)
        got: list[int] = []
        while chunk := self._collect_some(256):
            got += chunk
        assert set(must) <= set(got) <= set(maybe), \
            f"DONE slots never collected: {sorted(set(must) - set(got))}"

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def slot_states_are_the_models(self):
        for i, s in enumerate(self.m.slots):
            actual = self.seg.slot_state(i)
            assert actual == s.word(), (
                f"slot {i}: {KIND_NAMES.get(state_kind(actual))}/owner {state_owner(actual)}/gen "
                f"{state_gen(actual)}, model {KIND_NAMES[s.kind]}/owner {s.owner}/gen {s.gen}")

    @invariant()
    def every_chunk_has_its_holder(self):
        used = 0
        for h in self.handles:
            tag = lib.czmp_arena_holder(self.raw, h)
            assert tag == self.m.tags.get(h, HOLDER_FREE), \
                f"chunk {h:#x} tagged {tag:#x}, model {self.m.tags.get(h, HOLDER_FREE):#x}"
            if tag == HOLDER_FREE:
                continue
            used += 1
            if tag >= holder_slot(0):
                i = tag - holder_slot(0)
                raw = self.seg.slot(i)
                assert self.m.slots[i].kind != SLOT_FREE and h in (raw.args_handle, raw.result_handle,
                                                                   raw.fed_handle), \
                    f"chunk {h:#x} held by slot {i}, which does not reference it"
            elif tag >= holder_worker(0):
                w = tag - holder_worker(0)
                assert w in WORKERS, f"chunk {h:#x} held by unknown worker {w}"
                running = [i for i in self._slots(SLOT_RUNNING) if self.m.slots[i].owner == w + 1]
                assert w in self.m.dead or running, \
                    f"chunk {h:#x} held by worker {w}, alive and running nothing"
            else:
                assert tag == HOLDER_APP and h in self.app_chunks
        stats = ffi.new("czmp_class_stats_t *")
        counted = 0
        for c in range(self.seg.header.nclasses):
            assert lib.czmp_arena_stats(self.raw, c, stats) == 0
            counted += stats.used
        assert counted == used, f"arena stats count {counted} chunks in use, tags say {used}"

    @invariant()
    def rings_hold_a_cell_per_queued_slot(self):
        cells = sum(self.seg.queue_depths())
        queued = len(self._slots(SLOT_QUEUED))
        assert cells + self.m.stuck_claims >= queued, \
            f"{queued} slots QUEUED, only {cells} task ring cells in use (issue 10.1)"

    @invariant()
    def worker_counters_agree(self):
        for w in WORKERS:
            rec = self.seg.worker(w)
            counted = rec.tasks_done + rec.tasks_failed
            if w in self.m.uncertain:
                assert counted >= self.m.done_count[w]
            else:
                assert counted == self.m.done_count[w], \
                    f"worker {w} counts {counted} tasks finished, the model {self.m.done_count[w]}"
