"""Task functions of the durable-journal tests: module-level, so a restarted app finds them by name."""
from __future__ import annotations

import os
import time


def note_run(log_dir: str, key: str) -> None:
    """Append one line per execution: the tests count how often each task ran."""
    with open(os.path.join(log_dir, "runs.log"), "a") as f:
        f.write(f"{key} {os.getpid()}\n")


def quick(log_dir: str, key: str, x: int) -> int:
    note_run(log_dir, key)
    time.sleep(0.02)
    return x * x


def long_once(log_dir: str, key: str, x: int) -> int:
    """Hangs on its first run (it is killed there); returns at once when run again."""
    note_run(log_dir, key)
    marker = os.path.join(log_dir, f"started-{key}")
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        time.sleep(300)
    return -x


def fail_always(x: int) -> int:
    raise ValueError(f"bad {x}")


def slow(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


def fail_first(log_dir: str, key: str) -> str:
    """Fails on its first run, succeeds on later ones."""
    note_run(log_dir, key)
    marker = os.path.join(log_dir, f"failed-{key}")
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        raise RuntimeError("first attempt fails")
    return "second time lucky"


def size_of(data: bytes) -> int:
    return len(data)


def after_gate(log_dir: str, key: str, gate: str) -> str:
    """Runs once the file ``gate`` exists; notes each run."""
    note_run(log_dir, key)
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.005)
    return key
