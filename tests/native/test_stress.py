"""Multi-process stress: 2 producers, 2 consumers, >= 1,000,000 items.

Every item must reach exactly one consumer, intact (bytes and CRC-32), with
payloads spread over inline slots and four chunk classes and over the four
priority rings; afterwards every slot is FREE and no chunk is in use.
CZMP_STRESS_ITEMS=N runs a bigger (or smaller) size.
"""
from __future__ import annotations

import os
import pathlib
import subprocess

import pytest

from catzilla_mp._core import SLOT_FREE, Segment, state_kind
from catzilla_mp.segment_janitor import new_segment_name

import stress_procs as sp

ITEMS = int(os.environ.get("CZMP_STRESS_ITEMS", "1000000"))
PRODUCERS, CONSUMERS = 2, 2
SCRIPT = ("import runpy; runpy.run_path(%r, run_name='__main__')"
          % str(pathlib.Path(sp.__file__).resolve()))


@pytest.mark.timeout_guard(max(300, ITEMS // 2000))
def test_a_million_items_each_received_once_and_intact(spawn, tmp_path):
    seg = Segment.create(new_segment_name(), nslots=sp.NSLOTS, nworkers=CONSUMERS, nfuncs=1,
                         classes=sp.CLASSES, populate=True)
    try:
        run(seg, spawn, tmp_path)
    finally:
        seg.unlink()
        seg.detach()


def run(seg, spawn, tmp_path):
    seen_files = [tmp_path / f"seen{w}" for w in range(CONSUMERS)]
    consumers = [spawn(SCRIPT, "consumer", seg.name, str(w), str(ITEMS), str(seen_files[w]),
                       stdout=subprocess.PIPE, text=True)
                 for w in range(CONSUMERS)]
    share = ITEMS // PRODUCERS
    producers = [spawn(SCRIPT, "producer", seg.name, str(p), str(PRODUCERS), str(p * share),
                       str(ITEMS - p * share if p == PRODUCERS - 1 else share))
                 for p in range(PRODUCERS)]
    for p in producers:
        assert p.wait() == 0, "a producer failed"
    # the producers are gone: the parent recycles what is still finishing
    done = lambda: sum(seg.worker(w).tasks_done for w in range(CONSUMERS))
    while done() < ITEMS:
        assert all(c.poll() is None for c in consumers), "a consumer died"
        release_collected(seg, seg.collect(256, 0.05))
    release_collected(seg, seg.collect(sp.NSLOTS, 0))
    seg.shutdown()
    bad = [int(c.stdout.readline()) for c in consumers]
    assert [c.wait() for c in consumers] == [0] * CONSUMERS
    assert bad == [0] * CONSUMERS, "corrupt payloads received"

    counts = bytearray(ITEMS)
    for f in seen_files:
        for i, v in enumerate(f.read_bytes()):
            if v:
                counts[i] += v
    missing = counts.count(0)
    duplicated = ITEMS - missing - counts.count(1)
    assert (missing, duplicated) == (0, 0)
    not_free = {i: hex(seg.slot_state(i)) for i in range(sp.NSLOTS) if state_kind(seg.slot_state(i)) != SLOT_FREE}
    assert not_free == {}
    # every chunk came back: all holders were slots, all slots released
    assert [c.used for c in seg.class_stats()] == [0] * len(sp.CLASSES)
    assert all(len(seg.task_ring(p)) == 0 for p in range(4))


def release_collected(seg, slots):
    for i in slots:
        assert seg.release(i, seg.slot_state(i))
