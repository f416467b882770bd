"""Durable-journal tests (issue 14): engines that keep their tasks in SQLite across restarts."""
from __future__ import annotations

import pathlib

import pytest

SMALL = dict(memory_pool_mb=8, queue_size=256, retry_backoff_base=0.01, retry_backoff_cap=0.05,
             workers=1)


@pytest.fixture
def journal_path(tmp_path: pathlib.Path) -> str:
    return str(tmp_path / "journal.db")
