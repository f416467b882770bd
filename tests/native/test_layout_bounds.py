"""Nothing read from shared memory steers an access outside the mapping (issue 10.2-10.4).

Any process of the user can write into a segment. The core takes its
geometry once, at create or validated attach, into process-local memory
(struct czmp_segment), checks sizes with overflow-checked arithmetic, and
bounds every length it reads from a slot. Each test overwrites the shared
words a careless or hostile process could, and checks that the core keeps
working on its own copy (or reports an error) instead of crashing. The
operations run in a child process: with the old code they died of SIGSEGV
or SIGFPE, or spun for ever, and the test must see that, not die with it.
"""
from __future__ import annotations

import subprocess

import pytest

from catzilla_mp._core import HANDLE_INLINE, Segment, SizeClass, holder_slot
from catzilla_mp.errors import SegmentCorruptError, SegmentError
from catzilla_mp.backends.process.payloads import Payloads
from catzilla_mp.segment_janitor import new_segment_name
from catzilla_mp._native import ffi, lib

NORMAL = 2
HUGE = 1 << 60

AFTER_HOSTILE_WRITES = """
import sys
from catzilla_mp._core import Segment, holder_worker, new_repair_cookies
from catzilla_mp._native import ffi, lib
seg = Segment.attach(sys.argv[1])
print("attached", flush=True)
sys.stdin.readline()                   # the parent overwrites the header and ring words now
raw = seg.raw
assert lib.czmp_slot(raw, 16) == ffi.NULL and lib.czmp_worker(raw, 4) == ffi.NULL
assert seg.submit(2, [0, 1]) == 2
assert sorted(seg.take(0, 2, 0)) == [0, 1]
h = seg.alloc(100, holder_worker(0))   # old: % nchunks with nchunks 0 (SIGFPE)
seg.chunk(h)[:5] = b"hello"
assert seg.free(h, holder_worker(0))
assert seg.finish(0, 0) and seg.finish(0, 1)
assert sorted(seg.collect(16, 0)) == [0, 1]
cookies = new_repair_cookies()
assert seg.reap(1, cookies) == ([], [])  # old: scanned 2^32 slots at offset 2^60
lib.czmp_rings_repair(raw, cookies)
assert [c.nchunks for c in seg.class_stats()] == [8, 4, 2]
ring = seg.task_ring(3)                # its shared words are nonsense now: no hang, no crash
ring.push(5)
ring.pop()
ring.repair(ffi.new("uint64_t[2]"))
print("ok", flush=True)
seg.detach()
"""


def test_issue_10_2_overwritten_geometry_in_the_header_changes_nothing_a_process_uses(seg, spawn):
    child = spawn(AFTER_HOSTILE_WRITES, seg.name, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                  text=True)
    assert child.stdout.readline().strip() == "attached"
    h = seg.header
    h.nslots = h.nworkers = h.nfuncs = 0xFFFFFFFF
    h.nclasses = 16
    h.ring_cap = 0
    for name in ("tasks_off", "results_off", "slots_off", "workers_off", "funcs_off", "arena_off",
                 "ring_bytes", "total_size"):
        setattr(h, name, HUGE)
    for c in range(16):
        h.classes[c].chunk_size = h.classes[c].nchunks = 0
        h.classes[c].tags_off = h.classes[c].data_off = HUGE
        h.classes[c].hint = 0xFFFFFFFFFFFFFFFF
    words = seg.task_ring(3).words()
    words[16] = 0xFFFFFFFFFFFFFFFF                 # cap | mask
    words[0] = 1 << 50                             # tail far beyond head
    words[8] = 1 << 49
    child.stdin.write("go\n")
    child.stdin.flush()
    try:
        out, _ = child.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        child.kill()
        pytest.fail("a call spun for ever on overwritten ring words")
    assert child.returncode == 0, f"the process died ({child.returncode})"
    assert out.strip() == "ok"


def test_the_layout_a_process_took_is_exported_and_survives_header_writes(seg):
    layout = seg.layout
    assert (layout.nslots, layout.nworkers, layout.nfuncs, layout.nclasses) == (16, 4, 4, 3)
    seg.header.nslots = 5
    assert seg.layout.nslots == 16
    assert lib.czmp_slot(seg.raw, 15) != ffi.NULL


# -- 10.3 result lengths -------------------------------------------------------

def collect_one(seg):
    out = ffi.new("czmp_outcome_t[4]")
    data = ffi.new("char[]", 4096)
    assert lib.czmp_results_collect_outcomes(seg.raw, out, 4, data, 4096, 0) == 1
    return out[0]


def finished_slot(seg, data: bytes = b"result"):
    assert seg.submit(NORMAL, [0]) == 1
    assert seg.take(0, 1, 0) == [0]
    assert lib.czmp_tasks_finish_inline(seg.raw, 0, 0, 0, data, len(data)) == 0
    return seg.slot(0)


def test_issue_10_3_an_inline_result_longer_than_its_area_fails_instead_of_being_read(seg):
    slot = finished_slot(seg)
    slot.result_len = 1 << 20                      # written by a buggy or hostile worker
    o = collect_one(seg)
    assert o.error == lib.CZMP_ERESULT
    assert o.len == 0 and o.data_off == 0xFFFFFFFF


def test_issue_10_3_a_chunk_result_longer_than_its_chunk_fails_instead_of_being_read(seg):
    slot = finished_slot(seg)
    h = seg.alloc(200, holder_slot(0))             # a 256-byte chunk
    slot.result_handle, slot.result_len = h, 257
    o = collect_one(seg)
    assert o.error == lib.CZMP_ERESULT and o.len == 0


def test_a_result_within_its_area_is_collected_as_before(seg):
    finished_slot(seg, b"x" * lib.CZMP_INLINE_RESULT)
    o = collect_one(seg)
    assert o.error == 0 and o.len == lib.CZMP_INLINE_RESULT and o.data_off == 0


def test_issue_10_3_payload_reads_are_bounded_by_the_area_they_name(seg):
    payloads = Payloads(seg, 1 << 20)
    slot = seg.slot(0)
    with pytest.raises(ValueError):
        payloads.read(HANDLE_INLINE << 56, lib.CZMP_INLINE_RESULT + 1, slot.result_inline)
    h = seg.alloc(200, holder_slot(0))
    assert len(payloads.read(h, 256, None)) == 256
    with pytest.raises(ValueError):
        payloads.read(h, 257, None)


# -- 10.4 size overflow ------------------------------------------------------

def config(classes):
    cfg = ffi.new("czmp_config_t *")
    cfg.nslots, cfg.nworkers, cfg.nfuncs, cfg.nclasses = 16, 1, 1, len(classes)
    for i, (size, count) in enumerate(classes):
        cfg.class_size[i], cfg.class_count[i] = size, count
    return cfg


@pytest.mark.parametrize("classes", [
    [(1 << 40, 1 << 24)],                          # chunk_size * nchunks == 2^64: wrapped to 0
    [(1 << 40, 0xFFFFFFFF)],                       # wraps to a small multiple of 2^40
    [(64, 1), (1 << 40, 1 << 23), (1 << 40 - 1 << 6, 1 << 23)],
], ids=["exactly-2^64", "wraps", "sum"])
def test_issue_10_4_a_layout_whose_size_overflows_is_refused(classes):
    assert lib.czmp_segment_size(config(classes)) == 0
    with pytest.raises(SegmentError):
        Segment.create(new_segment_name(), nslots=16, nworkers=1, nfuncs=1,
                       classes=[SizeClass(s, n) for s, n in classes], populate=False)


def test_issue_10_4_attach_refuses_a_header_whose_sizes_wrap(make_segment):
    """A header rewritten so that its class's bytes wrap to 0 and every offset still agrees.

    Old code recomputed the same wrapped layout, found it consistent, and
    attached: chunk addresses then lay up to 2^64 bytes past the mapping.
    """
    seg = make_segment(nslots=16, nworkers=1, nfuncs=1, classes=[SizeClass(65536, 1025)])
    h = seg.header
    ci = h.classes[0]
    ci.chunk_size, ci.nchunks = 1 << 40, 1 << 24   # 2^64 bytes of chunks: wraps to 0
    ci.data_off = (ci.tags_off + (1 << 24) * 4 + 4095) & ~4095
    h.total_size = ci.data_off                     # what the wrapped sum gives
    with pytest.raises(SegmentCorruptError):
        Segment.attach(seg.name).detach()
