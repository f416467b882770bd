"""``catzilla-mp top`` against files another local user (or a bug) planted: issue 12.6.

Each test builds the hostile file from a copy of a real engine's segment, so
everything but the one planted defect is valid. Tests that need a file owned
by another uid run as root (os.chown) and skip otherwise.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading

import pytest

from catzilla_mp._native import ffi
from catzilla_mp.errors import SegmentCorruptError, SegmentOwnerError
from catzilla_mp.observability.safe_view import SafeSegmentView
from catzilla_mp.observability.top import Sampler, render
from catzilla_mp.segment_janitor import SHM_DIR, parse_segment_name

OTHER_UID = 54321
as_root = pytest.mark.skipif(os.getuid() != 0, reason="making a file owned by another uid needs root")


@pytest.fixture
def segment_copy(make_engine, tmp_path):
    """(dir, name): a byte copy of a live engine's segment, named as the engine's, mode 0600."""
    engine = make_engine(workers=1, min_workers=1)
    assert engine.add_task(pow, 2, 3).wait(30) == 8
    name = engine._backend.seg.name.lstrip("/")
    dst = tmp_path / name
    shutil.copyfile(os.path.join(SHM_DIR, name), dst)
    os.chmod(dst, 0o600)
    return tmp_path, name


def test_issue_12_6_a_valid_copy_is_read(segment_copy):
    d, name = segment_copy
    with SafeSegmentView(name, shm_dir=str(d)) as view:
        assert [w.pid for w in view.workers()] and view.queue_depths()["normal"] == 0
        assert "catzilla_mp top" in render(view, Sampler())


@as_root
def test_issue_12_6_a_file_owned_by_another_uid_is_refused_even_for_root(segment_copy):
    d, name = segment_copy
    os.chown(d / name, OTHER_UID, OTHER_UID)
    with pytest.raises(SegmentOwnerError, match=f"owned by uid {OTHER_UID}"):
        SafeSegmentView(name, shm_dir=str(d))


@as_root
def test_issue_12_6_a_file_whose_name_claims_another_uid_is_refused(segment_copy):
    d, name = segment_copy
    p = parse_segment_name(name)
    forged = f"czmp_{OTHER_UID}_{p.pid}_{p.start_time}_{p.token}"
    os.rename(d / name, d / forged)
    with pytest.raises(SegmentOwnerError):
        SafeSegmentView(forged, shm_dir=str(d))


def test_issue_12_6_a_fifo_is_refused_without_hanging(segment_copy):
    d, name = segment_copy
    os.unlink(d / name)
    os.mkfifo(d / name, 0o600)
    outcome: list = []
    t = threading.Thread(target=lambda: outcome.append(_try(name, d)), daemon=True)
    t.start()
    t.join(30)
    assert outcome and isinstance(outcome[0], SegmentCorruptError), outcome
    assert "not a regular file" in str(outcome[0])


def test_issue_12_6_a_symlink_is_not_followed(segment_copy, tmp_path):
    d, name = segment_copy
    real = tmp_path / "elsewhere"
    os.rename(d / name, real)
    os.symlink(real, d / name)
    with pytest.raises(SegmentCorruptError, match="symbolic link"):
        SafeSegmentView(name, shm_dir=str(d))


def test_issue_12_6_a_group_writable_file_is_refused(segment_copy):
    d, name = segment_copy
    os.chmod(d / name, 0o660)
    with pytest.raises(SegmentOwnerError, match="mode 660"):
        SafeSegmentView(name, shm_dir=str(d))


def test_issue_12_6_a_file_truncated_under_top_ends_it_with_an_error_not_sigbus(segment_copy):
    d, name = segment_copy
    view = SafeSegmentView(name, shm_dir=str(d))
    try:
        os.truncate(d / name, ffi.sizeof("czmp_header_t") + 64)
        with pytest.raises(SegmentCorruptError, match="truncated|ends before"):
            render(view, Sampler())
    finally:
        view.close()


def test_issue_12_6_a_worker_pid_of_0xffffffff_is_shown_as_unknown(segment_copy):
    d, name = segment_copy
    with SafeSegmentView(name, shm_dir=str(d)) as view:
        h = view.header
        off = h.workers_off + ffi.offsetof("czmp_worker_t", "pid")
    with open(d / name, "r+b") as f:
        f.seek(off)
        f.write((0xFFFFFFFF).to_bytes(ffi.sizeof("uint32_t"), sys.byteorder))
    with SafeSegmentView(name, shm_dir=str(d)) as view:
        [w] = [w for w in view.workers(include_empty=True) if w.index == 0]
        assert w.pid == 0 and not w.alive and w.state == "bad pid"
        assert "bad pid" in render(view, Sampler(), width=200)


def test_issue_12_6_a_name_that_is_not_ours_is_refused(tmp_path):
    (tmp_path / "passwd").write_text("root:x:0:0")
    with pytest.raises(SegmentCorruptError, match="not the name"):
        SafeSegmentView("passwd", shm_dir=str(tmp_path))
    with pytest.raises(SegmentCorruptError, match="not the name"):
        SafeSegmentView(f"czmp_0_{1 << 40}_1_ab", shm_dir=str(tmp_path))


@as_root
def test_issue_12_6_the_top_command_refuses_a_planted_segment_in_dev_shm(segment_copy):
    # Given a file in /dev/shm named like an engine of this uid, owned by another user
    d, name = segment_copy
    p = parse_segment_name(name)
    planted = os.path.join(SHM_DIR, f"czmp_{os.getuid()}_{p.pid}_{p.start_time}_{'f' * 12}")
    shutil.copyfile(d / name, planted)
    try:
        os.chmod(planted, 0o600)
        os.chown(planted, OTHER_UID, OTHER_UID)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(x for x in sys.path if x))
        out = subprocess.run([sys.executable, "-m", "catzilla_mp.cli", "top",
                              os.path.basename(planted), "--once"],
                             capture_output=True, text=True, env=env, timeout=60)
    finally:
        os.unlink(planted)
    # Then top refuses it, naming the owner, and exits 1
    assert out.returncode == 1, out
    assert f"owned by uid {OTHER_UID}" in out.stderr


def _try(name, d):
    try:
        SafeSegmentView(name, shm_dir=str(d)).close()
    except Exception as exc:  # noqa: BLE001
        return exc
    return None
