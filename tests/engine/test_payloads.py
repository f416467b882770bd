"""Big payloads: byte-exact round trips on every path, recycled segments, nothing left behind.

The paths a payload takes (payloads.py): inline in the slot, an arena chunk,
or a segment of its own, which the app recycles. Sizes are picked just below
and above each threshold of a small engine (memory_pool_mb=4: chunks up to
1 MiB, so anything bigger goes to a segment of its own).
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import payload_jobs as jobs
from catzilla_mp import WorkerCrashedError
from catzilla_mp.backends.process.payloads import SHM_DIR
from catzilla_mp.segment_janitor import sweep_dead_segments
from catzilla_mp.serialization import BIG_BUFFER

np = pytest.importorskip("numpy")

MIB = 1 << 20
INLINE = 200  # czmp.h CZMP_INLINE_ARGS
#: Around each threshold: inline area, out-of-band buffers, largest chunk, own segment.
SIZES = [0, 1, INLINE - 40, INLINE + 1, BIG_BUFFER - 1, BIG_BUFFER, BIG_BUFFER + 1,
         MIB + 4096, 3 * MIB + 17]


def externals(engine) -> list[str]:
    prefix = engine._backend.seg.name + "_x"
    return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(prefix))


def expected(value):
    view = memoryview(value)
    raw = view.tobytes(order="A") if not view.contiguous else bytes(view.cast("B")) if view.nbytes else b""
    return view.nbytes, hashlib.sha256(raw).hexdigest()


@pytest.fixture
def small(make_engine):
    return make_engine(workers=2, memory_pool_mb=4)


@pytest.mark.parametrize("size", SIZES)
def test_bytes_bytearray_and_memoryview_arrive_and_return_byte_exact(small, size):
    data = os.urandom(size)
    for value in (data, bytearray(data), memoryview(data)):
        kind, n, sha = small.add_task(jobs.digest, value).wait(60)
        assert (n, sha) == expected(value)
        back = small.add_task(jobs.echo, value).wait(60)
        assert bytes(back) == data


@pytest.mark.parametrize("size", [0, 8, BIG_BUFFER, 3 * MIB + 8])
def test_numpy_arrays_of_every_layout_arrive_and_return_byte_exact(small, size):
    rng = np.random.default_rng(size)
    flat = rng.random(size // 8)
    readonly = flat.copy()
    readonly.flags.writeable = False
    square = rng.random((max(1, int((size // 8) ** 0.5)),) * 2)
    arrays = [flat, readonly, flat[::2], np.asfortranarray(square), square.T[1:],
              flat.view(np.uint8)]
    for arr in arrays:
        back = small.add_task(jobs.echo, arr).wait(60)
        assert isinstance(back, np.ndarray)
        assert back.dtype == arr.dtype and back.shape == arr.shape
        assert np.array_equal(back, arr)
        if arr.flags.writeable:  # a private copy, not a view of shared memory
            assert back.flags.writeable


def test_a_released_segment_is_reused_and_never_shows_the_previous_payload(small):
    # Given a big payload of bytes "a" that went through a segment of its own
    first = b"a" * (6 * MIB)
    assert small.add_task(jobs.digest, first).wait(60)[1:] == expected(first)
    kept = externals(small)
    assert len(kept) == 1  # released, kept as a spare (not unlinked)
    # When a shorter payload of "b" reuses that segment
    second = b"b" * (5 * MIB)
    assert small.add_task(jobs.digest, second).wait(60)[1:] == expected(second)
    # Then the same segment carried it, and the task saw only its own bytes
    assert externals(small) == kept
    assert small.add_task(jobs.echo, second).wait(60) == second


def test_a_big_result_comes_back_byte_exact_and_its_segment_is_unlinked_once_read(small):
    data = os.urandom(5 * MIB)
    assert small.add_task(jobs.echo, data).wait(60) == data
    assert len(externals(small)) == 1  # the arguments' spare only
    assert small.add_task(jobs.filled, 5 * MIB, 7).wait(60) == b"\x07" * (5 * MIB)
    assert len(externals(small)) == 1


def test_many_big_payloads_in_flight_keep_at_most_a_few_spares(small):
    blobs = [bytes([i]) * (2 * MIB + i) for i in range(10)]
    results = [small.add_task(jobs.digest, b) for b in blobs]
    assert [r.wait(60)[1:] for r in results] == [expected(b) for b in blobs]
    assert len(externals(small)) <= len(small._backend.payloads.spares) <= 4


def test_spares_are_removed_at_shutdown(make_engine):
    engine = make_engine(workers=1, memory_pool_mb=4)
    engine.add_task(jobs.digest, b"x" * (3 * MIB)).wait(60)
    prefix = engine._backend.seg.name + "_x"
    assert any(n.startswith(prefix) for n in os.listdir(SHM_DIR))
    engine.shutdown(wait_for_completion=True, timeout=30)
    assert not [n for n in os.listdir(SHM_DIR) if n.startswith(prefix)]


def test_shutdown_unlinks_the_spares_at_once_and_leaves_their_unmapping_to_a_thread(make_engine):
    # Given an engine keeping a spare segment from a big payload
    engine = make_engine(workers=1, memory_pool_mb=4)
    engine.add_task(jobs.digest, b"x" * (3 * MIB)).wait(60)
    payloads = engine._backend.payloads
    prefix = engine._backend.seg.name + "_x"
    # When shutdown's half of dropping them runs
    kept = payloads.unlink_spares()
    # Then their names are gone at once, and the mappings are handed over still
    # open (freeing their pages is the unmap thread's work, not shutdown's)
    assert len(kept) == 1 and not kept[0].map.closed
    assert not [n for n in os.listdir(SHM_DIR) if n.startswith(prefix)]
    assert len(payloads.spares) == 0
    for spare in kept:
        spare.close()
    assert kept[0].map.closed


def test_a_worker_killed_mid_payload_leaves_nothing_in_dev_shm(make_engine):
    engine = make_engine(workers=1, memory_pool_mb=4)
    prefix = engine._backend.seg.name + "_x"
    r = engine.add_task(jobs.die_after_reading, b"k" * (3 * MIB))
    with pytest.raises(WorkerCrashedError):
        r.wait(60)
    # the replacement worker serves the next big payload byte-exact
    data = os.urandom(3 * MIB)
    assert engine.add_task(jobs.digest, data).wait(60)[1:] == expected(data)
    engine.shutdown(wait_for_completion=True, timeout=30)
    assert not [n for n in os.listdir(SHM_DIR) if n.startswith(prefix)]


def test_spares_of_an_app_killed_with_sigkill_are_swept_by_the_janitor(tmp_path):
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent("""
        import os, signal, sys
        from catzilla_mp import BackgroundTasks
        e = BackgroundTasks(workers=1, memory_pool_mb=4, queue_size=32)
        e.add_task(len, b"s" * (3 << 20)).wait(60)
        print(e._backend.seg.name, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    name = out.stdout.split()[0]
    assert [n for n in os.listdir(SHM_DIR) if n.startswith(name + "_x")]  # the spare, left
    deadline = time.monotonic() + 30  # its worker dies with it; the owner lock goes with it
    while time.monotonic() < deadline:
        sweep_dead_segments()
        if not [n for n in os.listdir(SHM_DIR) if n.startswith(name)]:
            break
        time.sleep(0.2)
    assert not [n for n in os.listdir(SHM_DIR) if n.startswith(name)]
