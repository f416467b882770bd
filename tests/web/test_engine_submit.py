"""The engine's side of the web integrations: unguessable task ids, async submission."""
from __future__ import annotations

import asyncio
import os
import re
import threading
import time

import pytest

from catzilla_mp import QueueFullError


def test_issue_12_1_task_ids_are_unguessable_random_tokens(make_engine):
    # Given tasks submitted from two threads
    engine = make_engine(mode="thread", workers=1)
    ids = [engine.add_task(int).task_id for _ in range(600)]
    other: list[str] = []
    t = threading.Thread(target=lambda: other.extend(engine.add_task(int).task_id
                                                     for _ in range(300)))
    t.start()
    t.join()
    everything = ids + other
    # Then each id is "task_" and 128 random bits, unique, with no pid or counter in it
    assert len(set(everything)) == len(everything)
    for tid in everything:
        assert re.fullmatch(r"task_[0-9a-f]{32}", tid), tid
    assert str(os.getpid()) not in "".join(ids[:5])
    # And consecutive ids share nothing more than chance does (a prefix+counter would)
    common = [len(os.path.commonprefix([a, b])) - len("task_") for a, b in zip(ids, ids[1:])]
    assert max(common) < 8


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_issue_12_1_a_forked_child_draws_other_ids_than_its_parent(make_engine):
    engine = make_engine(mode="thread", workers=1)
    engine.add_task(int)  # this thread now holds a block of ids
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the ids its own code would draw next, without an engine
        try:
            from catzilla_mp import engine as engine_mod
            os.write(w, "\n".join(
                engine_mod._new_task_id() if i == 0 else next(engine_mod._id_blocks.ids)
                for i in range(20)).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        child = set(f.read().split())
    os.waitpid(pid, 0)
    parent = {engine.add_task(int).task_id for _ in range(20)}
    assert len(child) == 20 and not (child & parent)


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_issue_11_9_add_task_async_waits_for_room_without_blocking_the_loop(make_engine, mode):
    # Given an engine whose only task place is taken by a running task
    engine = make_engine(mode=mode, workers=1, min_workers=1, queue_size=1,
                         queue_full_timeout=60)
    gate = threading.Event()
    blocker = engine.add_task(time.sleep, 1.5) if mode == "process" else \
        engine.add_task(gate.wait, 60)

    async def scenario():
        ticks = 0
        submit = asyncio.ensure_future(engine.add_task_async(pow, 2, 5, max_retries=0))
        # When the loop keeps serving other coroutines while the submission waits
        deadline = time.monotonic() + 60
        while not submit.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            ticks += 1
            if ticks == 20:
                gate.set()  # the blocker ends; its place frees up
        return ticks, await submit

    ticks, task = asyncio.run(scenario())
    # Then the loop ran meanwhile, and the task went in once there was room
    assert ticks >= 20
    assert task.wait(timeout=60) == 32
    blocker.wait(timeout=60)


def test_issue_11_9_add_task_async_gives_up_after_queue_full_timeout(make_engine):
    engine = make_engine(mode="thread", workers=1, min_workers=1, queue_size=1,
                         queue_full_timeout=0.3)
    gate = threading.Event()
    engine.add_task(gate.wait, 60)
    try:
        with pytest.raises(QueueFullError, match="0.3 s"):
            asyncio.run(engine.add_task_async(pow, 2, 5))
    finally:
        gate.set()
