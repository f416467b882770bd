"""Jobs of hostile_app.py (module-level, so workers import them by name)."""
from __future__ import annotations

import time


def square(x: int = 3) -> int:
    return x * x


def big(n: int = 2_000_000) -> list:
    """A result of ~15 MB as JSON."""
    return list(range(n))


class NoRepr:
    def __repr__(self):
        raise RuntimeError("repr refused")


def unrepresentable() -> NoRepr:
    return NoRepr()


class NoStr(Exception):
    def __str__(self):
        raise RuntimeError("str refused")


def unprintable() -> None:
    raise NoStr()


def secret_error() -> None:
    raise ValueError("db password=hunter2 rejected")


def user_data() -> dict:
    return {"user": "alice", "ssn": "078-05-1120"}


def sleep(seconds: float = 5.0) -> float:
    time.sleep(seconds)
    return seconds
