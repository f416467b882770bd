"""Producer and consumer processes of the multi-process stress test.

Run as ``python stress_procs.py producer|consumer ...`` (see test_stress.py).
Both sides derive an item's size and bytes from its id alone, so a consumer
can check every payload it receives without any side channel:

* producers fill a task slot (inline args for small items, an arena chunk of
  the fitting class for larger ones; func_id carries the CRC-32) and submit it
  at a pseudo-random priority; they recycle slots by collecting results and
  releasing them;
* consumers take tasks as worker ``index``, check length, bytes and CRC, count
  the id in their own ``seen`` array, finish the slot, and write ``seen`` to a
  file when the shutdown flag ends their loop.
"""
from __future__ import annotations

import random
import sys
import zlib

from catzilla_mp._core import HANDLE_CHUNK, HANDLE_INLINE, Segment, SizeClass, holder_slot
from catzilla_mp._native import ffi, lib

#: Size classes of the stress segment, and item sizes drawn across them:
#: inline (<= CZMP_INLINE_ARGS), then each chunk class.
CLASSES = (SizeClass(256, 1024), SizeClass(1024, 1024), SizeClass(4096, 512), SizeClass(16384, 256))
SIZES = ([8, 33, 64, 120, 200] * 3 + [201, 256] * 2 + [700, 1024] + [3000, 4096] + [9000, 16384])
NSLOTS = 1024
BATCH = 64

_rng = random.Random(1234)
NOISE = bytes(_rng.getrandbits(8) for _ in range(1 << 15))
SIZE_TABLE = [_rng.choice(SIZES) for _ in range(4099)]


def size_of(item: int) -> int:
    return SIZE_TABLE[item % len(SIZE_TABLE)]


def payload_of(item: int) -> bytes:
    size = size_of(item)
    off = (item * 7919) % (len(NOISE) - 16384)
    return (item.to_bytes(8, "little") + NOISE[off:off + size])[:size]


def producer(seg_name: str, index: int, nproducers: int, first: int, count: int) -> int:
    seg = Segment.attach(seg_name)
    S = seg.raw
    free = [i for i in range(NSLOTS) if i % nproducers == index]
    out = ffi.new("uint32_t[]", BATCH)
    one = ffi.new("uint32_t[1]")
    rng = random.Random(index)
    submit_inline, submit = lib.czmp_tasks_submit_inline, lib.czmp_tasks_submit
    item, end = first, first + count
    while item < end:
        if not free:
            n = lib.czmp_results_collect(S, out, BATCH, 50_000_000)
            for k in range(n):
                idx = out[k]
                if lib.czmp_slot_release(S, idx, lib.czmp_slot_state(S, idx)) == 0:
                    free.append(idx)
            continue
        idx = free.pop()
        data = payload_of(item)
        crc = zlib.crc32(data)
        prio = rng.randrange(4)
        if len(data) <= lib.CZMP_INLINE_ARGS:
            rc = submit_inline(S, prio, idx, crc, item, data, len(data))
        else:
            try:
                h = seg.alloc(len(data), holder_slot(idx))
            except MemoryError:
                free.append(idx)
                free_more(seg, free, out)
                continue
            ffi.memmove(lib.czmp_arena_ptr(S, h), data, len(data))
            s = seg.slot(idx)
            s.func_id, s.task_id, s.args_handle, s.args_len = crc, item, h, len(data)
            one[0] = idx
            rc = submit(S, prio, one, 1)
        assert rc == 1, f"submit of slot {idx} returned {rc}"
        item += 1
    seg.detach()
    return 0


def free_more(seg, free, out) -> None:
    """Arena full: recycle finished slots (and their chunks) until one comes back."""
    n = lib.czmp_results_collect(seg.raw, out, BATCH, 50_000_000)
    for k in range(n):
        idx = out[k]
        if lib.czmp_slot_release(seg.raw, idx, lib.czmp_slot_state(seg.raw, idx)) == 0:
            free.append(idx)


def consumer(seg_name: str, worker: int, total: int, seen_path: str) -> int:
    seg = Segment.attach(seg_name)
    S = seg.raw
    seen = bytearray(total)
    bad = 0
    out = ffi.new("uint32_t[]", BATCH)
    rec = seg.worker(worker)
    take, finish = lib.czmp_tasks_take, lib.czmp_tasks_finish
    while True:
        n = take(S, worker, out, BATCH, 100_000_000)
        if n <= 0:
            if seg.header.shutdown:
                break
            continue
        for k in range(n):
            idx = out[k]
            s = seg.slot(idx)
            item, ln, h, crc = s.task_id, s.args_len, s.args_handle, s.func_id
            kind = h >> 56
            if kind == HANDLE_INLINE:
                data = ffi.buffer(s.args_inline, ln)[:]
            elif kind == HANDLE_CHUNK:
                data = ffi.buffer(lib.czmp_arena_ptr(S, h), ln)[:]
            else:
                data = b""
            if item >= total or data != payload_of(item) or zlib.crc32(data) != crc:
                bad += 1
            else:
                seen[item] = min(seen[item] + 1, 255)
            assert finish(S, worker, idx) == 0
        rec.tasks_done += n   # only this process writes its record
    with open(seen_path, "wb") as f:
        f.write(seen)
    print(bad, flush=True)
    seg.detach()
    return 0


if __name__ == "__main__":
    role, args = sys.argv[1], sys.argv[2:]
    if role == "producer":
        sys.exit(producer(args[0], int(args[1]), int(args[2]), int(args[3]), int(args[4])))
    sys.exit(consumer(args[0], int(args[1]), int(args[2]), args[3]))
