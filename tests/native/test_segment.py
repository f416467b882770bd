"""Segment: create, attach, validation of every header field, janitor naming."""
from __future__ import annotations

import os
import stat

import pytest

from catzilla_mp._core import Segment, SizeClass
from catzilla_mp._native import ffi, lib
from catzilla_mp.errors import (
    SegmentCorruptError,
    SegmentError,
    SegmentExistsError,
    SegmentOwnerError,
    SegmentVersionError,
)
from catzilla_mp.segment_janitor import new_segment_name

SHM = "/dev/shm"


def shm_path(seg_or_name) -> str:
    name = seg_or_name if isinstance(seg_or_name, str) else seg_or_name.name
    return os.path.join(SHM, name)


def poke_u32(seg, field: str, value: int) -> None:
    """Overwrite a 32-bit header field through the file, as a foreign writer would."""
    with open(shm_path(seg), "r+b") as f:
        f.seek(ffi.offsetof("czmp_header_t", field))
        f.write(value.to_bytes(4, "little"))


def poke_u64(seg, field: str, value: int) -> None:
    with open(shm_path(seg), "r+b") as f:
        f.seek(ffi.offsetof("czmp_header_t", field))
        f.write(value.to_bytes(8, "little"))


def test_attach_sees_what_the_creator_wrote(seg):
    other = Segment.attach(seg.name)
    try:
        h = other.header
        assert (h.magic_lo, h.magic_hi) == (lib.CZMP_MAGIC_LO, lib.CZMP_MAGIC_HI)
        assert h.version == lib.CZMP_LAYOUT_VERSION
        assert h.owner_pid == os.getpid() and h.owner_uid == os.getuid()
        assert h.owner_start == lib.czmp_process_start_time(os.getpid()) != 0
        assert h.nslots == 16 and h.ring_cap >= 16 and h.ready == 1
        # one memory, two mappings
        seg.slot(3).task_id = 0xDEADBEEF
        assert other.slot(3).task_id == 0xDEADBEEF
    finally:
        other.detach()


def test_segment_file_is_private_to_its_user(seg):
    st = os.stat(shm_path(seg))
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.getuid()
    assert st.st_size == seg.header.total_size


def test_create_is_exclusive(seg):
    with pytest.raises(SegmentExistsError):
        Segment.create(seg.name, nslots=4, nworkers=1, nfuncs=1, classes=[])


def test_attach_of_a_missing_segment_raises_file_not_found():
    with pytest.raises(FileNotFoundError):
        Segment.attach(new_segment_name())


def test_wrong_magic_is_refused(seg):
    poke_u32(seg, "magic_lo", 0x12345678)
    with pytest.raises(SegmentCorruptError, match="magic"):
        Segment.attach(seg.name)


def test_other_layout_version_is_refused(seg):
    poke_u32(seg, "version", lib.CZMP_LAYOUT_VERSION + 1)
    with pytest.raises(SegmentVersionError):
        Segment.attach(seg.name)


@pytest.mark.parametrize("keep", ["half_header", "missing_tail"])
def test_truncated_file_is_refused(seg, keep):
    size = 2048 if keep == "half_header" else seg.header.total_size - 4096
    os.truncate(shm_path(seg), size)
    with pytest.raises(SegmentCorruptError, match="truncated"):
        Segment.attach(seg.name)


def test_header_claiming_another_owner_uid_is_refused(seg):
    poke_u32(seg, "owner_uid", os.getuid() + 4242)
    with pytest.raises(SegmentOwnerError):
        Segment.attach(seg.name)


@pytest.mark.skipif(os.getuid() != 0, reason="chown to another uid needs root")
def test_file_owned_by_another_user_is_refused(seg):
    os.chown(shm_path(seg), 4242, -1)
    with pytest.raises(SegmentOwnerError):
        Segment.attach(seg.name)


@pytest.mark.parametrize("field", ["tasks_off", "arena_off", "total_size"])
def test_inconsistent_offsets_are_refused(seg, field):
    poke_u64(seg, field, getattr(seg.header, field) - 64)
    with pytest.raises(SegmentCorruptError):
        Segment.attach(seg.name)


def test_half_initialised_segment_is_refused(seg):
    poke_u32(seg, "ready", 0)
    with pytest.raises(SegmentCorruptError):
        Segment.attach(seg.name)


@pytest.mark.parametrize("kw", [
    dict(nslots=0),
    dict(nworkers=0),
    dict(classes=[SizeClass(1024, 4), SizeClass(256, 4)]),   # not ascending
    dict(classes=[SizeClass(100, 4)]),                        # not a multiple of 64
    dict(classes=[SizeClass(256, 0)]),
])
def test_invalid_config_leaves_nothing_behind(kw):
    name = new_segment_name()
    args = dict(nslots=16, nworkers=2, nfuncs=2, classes=[SizeClass(256, 4)])
    args.update(kw)
    with pytest.raises(SegmentError):
        Segment.create(name, **args)
    assert not os.path.exists(shm_path(name))


def test_segment_larger_than_dev_shm_fails_at_create_not_on_first_touch():
    # Regression: a failed posix_fallocate fell back to ftruncate, which makes
    # a sparse file that SIGBUSes the first process touching a missing page.
    vfs = os.statvfs(SHM)
    too_big = vfs.f_blocks * vfs.f_frsize * 2
    count = too_big // (1 << 30) + 1
    name = new_segment_name()
    with pytest.raises(SegmentError, match="full"):
        Segment.create(name, nslots=4, nworkers=1, nfuncs=1,
                       classes=[SizeClass(1 << 30, count)], populate=False)
    assert not os.path.exists(shm_path(name))


def test_size_matches_what_create_maps():
    cfg = ffi.new("czmp_config_t *")
    cfg.nslots, cfg.nworkers, cfg.nfuncs, cfg.nclasses = 100, 3, 5, 1
    cfg.class_size[0], cfg.class_count[0] = 4096, 10
    size = lib.czmp_segment_size(cfg)
    assert size > 100 * 512 + 10 * 4096 and size % 4096 == 0
    cfg.nslots = 0
    assert lib.czmp_segment_size(cfg) == 0


def test_detach_then_unlink_removes_the_name(make_segment):
    s = make_segment()
    s.detach()
    s.detach()  # idempotent
    s.unlink()
    assert not os.path.exists(shm_path(s))
    s.unlink()  # already gone: still no error


def test_process_start_time_identifies_a_process():
    assert lib.czmp_process_start_time(os.getpid()) > 0
    assert lib.czmp_process_start_time(os.getpid()) == lib.czmp_process_start_time(os.getpid())
    assert lib.czmp_process_start_time(0x7FFFFFF0) == 0


def _backed_bytes(seg) -> int:
    return os.stat(shm_path(seg)).st_blocks * 512


def test_the_pool_is_backed_on_first_use_not_at_creation(make_segment):
    """Issue 18: fallocating the whole pool at creation cost ~0.15 s per 500 MiB of start-up."""
    # Given a 64 MiB pool of 1 MiB chunks
    s = make_segment(classes=[SizeClass(1 << 20, 64)])
    assert _backed_bytes(s) < 8 << 20  # the slot table etc., not the pool
    # When one chunk is allocated for 300 KiB
    out = ffi.new("uint64_t *")
    assert lib.czmp_arena_alloc(s.raw, 300 << 10, 1, out) == 0
    # Then about that much is backed, and writing it all cannot SIGBUS
    grown = _backed_bytes(s)
    assert (300 << 10) <= grown < (8 << 20) + (1 << 20)
    ffi.memmove(lib.czmp_arena_ptr(s.raw, out[0]), b"x" * (300 << 10), 300 << 10)
    # And the pre-fault steps back the rest, a step at a time
    cursor = ffi.new("uint64_t *")
    while (rc := lib.czmp_arena_prefault(s.raw, cursor, 16 << 20)) == 1:
        pass
    assert rc == 0 and _backed_bytes(s) >= 64 << 20


def _mapped_bytes(name: str) -> int:
    """Bytes of this process's address space that map the segment file ``name``."""
    total = 0
    with open("/proc/self/maps") as f:
        for line in f:
            if f"/dev/shm/{name}" in line:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                total += hi - lo
    return total


def test_detach_unmaps_all_of_a_segment_bigger_than_its_unmap_step(make_segment):
    # Given a segment of several MiB and an odd size (detach unmaps it in 4 MiB
    # steps, from the end, so a thread of the app never waits long for the mm lock)
    seg = make_segment(classes=(SizeClass(4096, 3), SizeClass(1 << 20, 9)))
    name = seg.name
    assert _mapped_bytes(name) > 9 << 20
    # When it is detached
    seg.detach()
    # Then no byte of it stays mapped
    assert _mapped_bytes(name) == 0
