"""The janitor removes dead owners' segments and nothing else."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from catzilla_mp._core import Segment
from catzilla_mp._native import lib
from catzilla_mp.segment_janitor import (
    SegmentName,
    new_segment_name,
    owner_lock_held,
    parse_segment_name,
    side_segment_name,
    sweep_dead_segments,
)

SHM = "/dev/shm"


def dead_pid_and_start() -> tuple[int, int]:
    """A pid that existed a moment ago, with its start time; the process is gone."""
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                       capture_output=True, text=True, check=True)
    pid = int(p.stdout)
    # its start time can only be later than ours; any value not matching works
    return pid, lib.czmp_process_start_time(os.getpid()) + 1


def touch(name: str) -> str:
    path = os.path.join(SHM, name)
    with open(path, "wb") as f:
        f.write(b"\0" * 64)
    os.chmod(path, 0o600)
    return path


@pytest.fixture
def scratch():
    """Names created in a test; removed at teardown whatever the janitor did."""
    names: list[str] = []
    yield names
    for n in names:
        try:
            os.unlink(os.path.join(SHM, n))
        except FileNotFoundError:
            pass


def test_new_name_names_this_process():
    parsed = parse_segment_name(new_segment_name())
    assert parsed is not None and parsed.suffix is None
    assert parsed.uid == os.getuid() and parsed.pid == os.getpid()
    assert parsed.start_time == lib.czmp_process_start_time(os.getpid())
    assert new_segment_name() != new_segment_name()


def test_side_segment_names_share_the_prefix():
    base = new_segment_name()
    side = side_segment_name(base, "x17")
    assert side.startswith(base + "_")
    assert parse_segment_name(side).base == base
    with pytest.raises(ValueError):
        side_segment_name(side, "x1")       # side of a side
    with pytest.raises(ValueError):
        side_segment_name(base, "bad/name")


@pytest.mark.parametrize("name", ["czmp", "czmp_1_2_3", "czmpx_1_2_3_ab", "catzilla_1_2_3_ab",
                                  "czmp_a_2_3_ab", "czmp_1_2_3_XYZ"])
def test_foreign_names_do_not_parse(name):
    assert parse_segment_name(name) is None


def test_sweep_removes_a_dead_owners_segment_and_side_segments(scratch):
    pid, start = dead_pid_and_start()
    base = str(SegmentName(os.getuid(), pid, start, "abc123"))
    scratch += [base, side_segment_name(base, "x1"), side_segment_name(base, "x2")]
    for n in scratch:
        touch(n)
    removed = sweep_dead_segments()
    assert sorted(removed) == sorted(scratch)
    assert not any(os.path.exists(os.path.join(SHM, n)) for n in scratch)


def test_sweep_removes_a_reused_pid_with_another_start_time(scratch):
    # our own pid, but a start time that is not ours: the owner died and its
    # pid was reused by us
    name = str(SegmentName(os.getuid(), os.getpid(), 1, "abc123"))
    scratch.append(name)
    touch(name)
    assert sweep_dead_segments() == [name]


def test_sweep_keeps_a_live_owners_real_segment(make_segment):
    seg = make_segment()
    side = side_segment_name(seg.name, "x9")
    touch(side)
    try:
        assert sweep_dead_segments() == []
        Segment.attach(seg.name).detach()
        assert os.path.exists(os.path.join(SHM, side))
    finally:
        os.unlink(os.path.join(SHM, side))


def test_sweep_ignores_names_outside_the_scheme(scratch):
    scratch += ["czmp_not_ours", "czmp_1_2_3"]
    for n in scratch:
        touch(n)
    assert sweep_dead_segments() == []


def test_sweep_leaves_other_users_alone(scratch):
    pid, start = dead_pid_and_start()
    other_uid = os.getuid() + 4242
    name = str(SegmentName(other_uid, pid, start, "abc123"))
    scratch.append(name)
    touch(name)
    assert sweep_dead_segments() == []


@pytest.mark.skipif(os.getuid() != 0, reason="chown needs root")
def test_sweep_trusts_the_file_owner_over_the_name(scratch):
    pid, start = dead_pid_and_start()
    name = str(SegmentName(os.getuid(), pid, start, "abc123"))
    scratch.append(name)
    os.chown(touch(name), 4242, -1)
    assert sweep_dead_segments() == []


def test_sweep_removes_what_a_sigkilled_creator_left(spawn, scratch):
    code = ("import os, sys, signal\n"
            "from catzilla_mp._core import Segment, SizeClass\n"
            "from catzilla_mp.segment_janitor import new_segment_name\n"
            "n = new_segment_name()\n"
            "Segment.create(n, nslots=8, nworkers=1, nfuncs=1, classes=[SizeClass(256, 4)])\n"
            "print(n, flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    p = spawn(code, stdout=subprocess.PIPE, text=True)
    name = p.stdout.readline().strip()
    scratch.append(name)
    assert p.wait() == -9
    assert os.path.exists(os.path.join(SHM, name))
    assert sweep_dead_segments() == [name]


OWNER_ELSEWHERE = """
import sys
from catzilla_mp._core import Segment, SizeClass
seg = Segment.create(sys.argv[1], nslots=8, nworkers=1, nfuncs=1, classes=[SizeClass(256, 4)],
                     populate=False)
print("ready", flush=True)
sys.stdin.readline()      # live until the test says so; then die without cleaning up
import os, signal
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_issue_10_9_a_live_owner_in_another_pid_namespace_keeps_its_segment(spawn, scratch):
    """An engine in another container: its pid means nothing in our /proc, yet it lives.

    Simulated by a live process that creates a segment under a name whose
    pid and start time are of a process that is gone here (as a pid of
    another namespace would be). The janitor must keep the segment and its
    side segments while the creator holds the owner lock, and remove them
    once it died.
    """
    pid, start = dead_pid_and_start()
    name = str(SegmentName(os.getuid(), pid, start, "f00d"))
    side = side_segment_name(name, "x3")
    scratch += [name, side]
    p = spawn(OWNER_ELSEWHERE, "/" + name, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    touch(side)
    assert sweep_dead_segments() == []
    assert os.path.exists(os.path.join(SHM, name)) and os.path.exists(os.path.join(SHM, side))
    Segment.attach(name).detach()        # still usable by its workers
    p.stdin.write("go\n")
    p.stdin.flush()
    assert p.wait() == -9
    assert sweep_dead_segments() == [name, side]


def test_the_creator_holds_the_owner_lock_while_workers_attach(make_segment):
    """The lock is the creator's: an attach neither takes it nor disturbs it."""
    seg = make_segment()
    other = Segment.attach(seg.name)
    try:
        assert owner_lock_held(os.path.join(SHM, seg.name))
    finally:
        other.detach()
    assert owner_lock_held(os.path.join(SHM, seg.name))
