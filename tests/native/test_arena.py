"""Chunk arena, one process: alloc/free/retag/reclaim, spill, stats, limits."""
from __future__ import annotations

import errno

import pytest

from catzilla_mp._core import HOLDER_APP, SizeClass, holder_slot, holder_worker
from catzilla_mp._native import ffi, lib

W0, W1 = holder_worker(0), holder_worker(1)


def used(seg) -> list[int]:
    return [c.used for c in seg.class_stats()]


def test_alloc_picks_the_smallest_fitting_class_and_is_writable(seg):
    h = seg.alloc(10, HOLDER_APP)
    assert lib.czmp_arena_chunk_size(seg.raw, h) == 256
    assert seg.holder(h) == HOLDER_APP
    buf = seg.chunk(h)
    buf[:] = b"\xab" * 256
    assert seg.chunk(h, 4)[:] == b"\xab" * 4
    assert lib.czmp_arena_chunk_size(seg.raw, seg.alloc(257, HOLDER_APP)) == 1024
    assert lib.czmp_arena_chunk_size(seg.raw, seg.alloc(65536, HOLDER_APP)) == 65536
    assert used(seg) == [1, 1, 1]


def test_chunks_do_not_overlap(seg):
    hs = [seg.alloc(256, HOLDER_APP) for _ in range(8)]
    for i, h in enumerate(hs):
        seg.chunk(h)[:] = bytes([i]) * 256
    for i, h in enumerate(hs):
        assert seg.chunk(h)[:] == bytes([i]) * 256


def test_free_returns_the_chunk_and_a_double_free_is_refused(seg):
    h = seg.alloc(64, HOLDER_APP)
    assert seg.free(h, HOLDER_APP)
    assert not seg.free(h, HOLDER_APP)               # double free: refused
    assert lib.czmp_arena_free(seg.raw, h, HOLDER_APP) == -errno.EPERM
    assert used(seg) == [0, 0, 0]


def test_free_by_the_wrong_holder_is_refused(seg):
    h = seg.alloc(64, W0)
    assert not seg.free(h, W1)
    assert seg.holder(h) == W0
    assert seg.free(h, W0)


def test_a_full_class_spills_into_the_next_larger(seg):
    small = [seg.alloc(100, HOLDER_APP) for _ in range(8)]
    spilled = seg.alloc(100, HOLDER_APP)
    assert lib.czmp_arena_chunk_size(seg.raw, spilled) == 1024
    assert used(seg) == [8, 1, 0]
    seg.free(small[3], HOLDER_APP)
    assert lib.czmp_arena_chunk_size(seg.raw, seg.alloc(100, HOLDER_APP)) == 256


def test_exhausted_arena_raises_memory_error_and_too_big_raises_value_error(seg):
    for _ in range(2):
        seg.alloc(65536, HOLDER_APP)
    with pytest.raises(MemoryError):
        seg.alloc(65536, HOLDER_APP)
    with pytest.raises(ValueError):
        seg.alloc(65537, HOLDER_APP)
    out = ffi.new("uint64_t *")
    assert lib.czmp_arena_alloc(seg.raw, 65537, HOLDER_APP, out) == -errno.EFBIG
    assert lib.czmp_arena_alloc(seg.raw, 65536, HOLDER_APP, out) == -errno.ENOMEM
    assert seg.max_chunk == 65536


def test_holder_zero_cannot_allocate(seg):
    out = ffi.new("uint64_t *")
    assert lib.czmp_arena_alloc(seg.raw, 10, 0, out) == -errno.EINVAL


def test_retag_moves_ownership_atomically(seg):
    h = seg.alloc(64, W0)
    assert seg.retag(h, W0, holder_slot(5))
    assert not seg.retag(h, W0, W1)                  # no longer W0's
    assert seg.holder(h) == holder_slot(5)
    assert not seg.free(h, W0)
    assert seg.free(h, holder_slot(5))


def test_reclaim_frees_every_chunk_of_one_holder_only(seg):
    mine = [seg.alloc(64, W0) for _ in range(3)] + [seg.alloc(2000, W0)]
    theirs = seg.alloc(64, W1)
    assert used(seg) == [4, 0, 1]   # 2000 bytes -> 64 KiB class
    assert seg.reclaim(W0) == 4
    assert seg.reclaim(W0) == 0
    assert used(seg) == [1, 0, 0]
    assert seg.holder(theirs) == W1
    assert all(seg.holder(h) == 0 for h in mine)
    assert seg.reclaim(0) == 0                        # "free" is not a holder


def test_next_fit_reuses_freed_chunks_after_wrapping(seg):
    hs = [seg.alloc(64, HOLDER_APP) for _ in range(8)]
    for h in hs[:4]:
        seg.free(h, HOLDER_APP)
    again = {seg.alloc(64, HOLDER_APP) for _ in range(4)}
    assert again == set(hs[:4])


@pytest.mark.parametrize("bad", [
    0,
    (lib.CZMP_HANDLE_INLINE << 56) | 1,
    (lib.CZMP_HANDLE_CHUNK << 56) | (7 << 48),          # no such class
    (lib.CZMP_HANDLE_CHUNK << 56) | 8,                  # index past the class
    (lib.CZMP_HANDLE_CHUNK << 56) | (1 << 32) | 1,      # stray bits 32..47
])
def test_invalid_handles_are_refused_everywhere(seg, bad):
    assert lib.czmp_arena_ptr(seg.raw, bad) == ffi.NULL
    assert lib.czmp_arena_chunk_size(seg.raw, bad) == 0
    assert lib.czmp_arena_holder(seg.raw, bad) == 0
    assert lib.czmp_arena_free(seg.raw, bad, HOLDER_APP) == -errno.EINVAL
    assert lib.czmp_arena_retag(seg.raw, bad, HOLDER_APP, W0) == -errno.EINVAL


def test_stats_report_every_class_and_refuse_bad_indexes(seg):
    st = seg.class_stats()
    assert [(c.chunk_size, c.nchunks, c.used) for c in st] == [(256, 8, 0), (1024, 4, 0), (65536, 2, 0)]
    out = ffi.new("czmp_class_stats_t *")
    assert lib.czmp_arena_stats(seg.raw, 3, out) == -errno.EINVAL
    assert lib.czmp_arena_stats(seg.raw, -1, out) == -errno.EINVAL


def test_an_arena_without_classes_refuses_every_size(make_segment):
    s = make_segment(classes=[])
    assert s.max_chunk == 0
    with pytest.raises(ValueError):
        s.alloc(1, HOLDER_APP)


def test_populated_segment_works_like_a_lazy_one(make_segment):
    s = make_segment(classes=[SizeClass(4096, 16)], populate=True)
    h = s.alloc(4096, HOLDER_APP)
    s.chunk(h)[:] = b"z" * 4096
    assert s.chunk(h)[-1:] == b"z"


def test_a_chunk_larger_than_one_populate_step_is_backed_whole(make_segment):
    import os

    # Given a segment whose pool (4 MiB chunks) is not backed yet (the
    # pages are populated in 1 MiB steps, so no step holds the mm lock long)
    seg = make_segment(classes=(SizeClass(4096, 2), SizeClass(4 << 20, 2)))
    path = os.path.join("/dev/shm", seg.name)
    before = os.stat(path).st_blocks * 512
    # When a 3.5 MiB payload's chunk is allocated
    seg.alloc((7 << 20) // 2, HOLDER_APP)
    # Then all 3.5 MiB of it are backed by tmpfs pages, not only the first step
    assert os.stat(path).st_blocks * 512 - before >= (7 << 20) // 2
