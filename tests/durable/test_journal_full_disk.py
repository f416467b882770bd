"""A durable engine whose disk fills up: submissions are refused with JournalError,
outcomes wait in memory until they can be written, and nothing is lost or run twice.

The journal lives on a 1 MiB tmpfs mounted for the test (root only: skipped
elsewhere); a filler file takes the rest of its space.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import time

import pytest

import durable_jobs
from catzilla_mp import BackgroundTasks, JournalError
from catzilla_mp.backends.journal import FLUSH_S

SMALL = dict(memory_pool_mb=8, queue_size=256, workers=1, mode="process")


@pytest.fixture
def small_disk(tmp_path: pathlib.Path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir(mode=0o700)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk: pathlib.Path) -> pathlib.Path:
    """Take every free byte of ``disk`` (until ENOSPC); the file to delete for space."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def _runs(log_dir: pathlib.Path) -> list[str]:
    try:
        return [line.split()[0] for line in (log_dir / "runs.log").read_text().splitlines()]
    except FileNotFoundError:
        return []


def test_a_full_disk_refuses_new_tasks_keeps_outcomes_until_space_returns_and_loses_none(
        small_disk, tmp_path, caplog):
    journal = str(small_disk / "journal.db")
    logs = tmp_path / "logs"
    logs.mkdir()
    gate = tmp_path / "gate"
    engine = BackgroundTasks(**SMALL, durable=journal)
    try:
        # Given a task journaled and running while there is room
        running = engine.add_task(durable_jobs.after_gate, str(logs), "running", str(gate))
        deadline = time.monotonic() + 30
        while "running" not in _runs(logs) and time.monotonic() < deadline:
            time.sleep(0.01)
        # When the disk fills up
        filler = _fill(small_disk)
        # Then a new task is refused with a typed error, not queued
        with pytest.raises(JournalError, match="cannot write the journal"):
            engine.add_task(durable_jobs.size_of, b"x" * (256 << 10))
        # And the running task still finishes; its outcome waits to be written
        gate.touch()
        assert running.wait(30) == "running"
        time.sleep(10 * FLUSH_S)
        # When space comes back, new tasks are taken again
        filler.unlink()
        after = engine.add_task(durable_jobs.size_of, b"y" * (256 << 10))
        assert after.wait(30) == 256 << 10
        deadline = time.monotonic() + 30
        while "work again" not in caplog.text and time.monotonic() < deadline:
            time.sleep(FLUSH_S)
        # And the writer thread said so once when it began, once when it ended
        assert caplog.text.count("journal write failed") == 1
        assert caplog.text.count("journal writes work again") == 1
    finally:
        engine.shutdown()
    # Then a restart finds both outcomes and runs neither again
    engine = BackgroundTasks(**SMALL, durable=journal)
    try:
        assert engine.get_task_result(running.task_id).wait(0) == "running"
        assert engine.get_task_result(after.task_id).wait(0) == 256 << 10
        time.sleep(10 * FLUSH_S)
        assert _runs(logs) == ["running"]
    finally:
        engine.shutdown()
