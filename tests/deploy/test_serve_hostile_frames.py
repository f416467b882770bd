"""A ``catzilla-mp serve`` server given garbage by one connection keeps serving the others.

The socket only admits the server's own user (SO_PEERCRED), and a pickle from
that user is trusted as the user's own code is (SECURITY.md). What a server
must still survive is a buggy or half-written client: frames that are not
pickles, pickles of the wrong shape, absurd field values, a connection cut
mid-frame. Each may end that one connection; none may stop the dispatcher,
leak a task into the index, or keep another client's task from running.
"""
from __future__ import annotations

import os
import pickle
import shutil
import socket
import struct
import tempfile

import pytest

import served_jobs
from catzilla_mp import BackgroundTasks
from catzilla_mp.backends.remote import PROTOCOL_VERSION
from catzilla_mp.server import TaskServer

SERVER = dict(memory_pool_mb=8, queue_size=256, workers=1, min_workers=1,
              enable_auto_scaling=False)


@pytest.fixture
def served():
    d = tempfile.mkdtemp(prefix="czmp-h-")  # short: a socket path is at most 107 bytes
    path = os.path.join(d, "run", "s.sock")
    server = TaskServer(path, **SERVER)
    try:
        yield server, path
    finally:
        server.close()
        shutil.rmtree(d, ignore_errors=True)


def _frame(obj) -> bytes:
    data = obj if isinstance(obj, bytes) else pickle.dumps(obj)
    return struct.pack(">I", len(data)) + data


def _hello() -> bytes:
    return _frame(("hello", PROTOCOL_VERSION, os.getpid()))


def _spec(tid, fn=served_jobs.slow_square, args=(3, 0.0), prio=2, delay=0):
    return (tid, fn, args, {}, prio, delay, 0, 0, {}, None)


HOSTILE = {
    "not a frame length": b"\xff\xff\xff\xff" + b"x" * 64,
    "not a pickle": _frame(b"\x00garbage that is no pickle at all"),
    "a pickle of no tuple": _frame(42),
    "an empty tuple": _frame(()),
    "a hello of another shape": _frame(("hello",)),
    "cut in the middle of a frame": _hello() + struct.pack(">I", 1000) + b"x" * 10,
    "a submit of no list": _hello() + _frame(("submit", 7)),
    "a submit of short specs": _hello() + _frame(("submit", [("t-short", None)])),
    "a task id that is unhashable": _hello() + _frame(("submit", [_spec(["t"])])),
    "a priority out of range": _hello() + _frame(("submit", [_spec("t-prio", prio=99)])),
    "a priority of the wrong type": _hello() + _frame(("submit", [_spec("t-ptype", prio="x")])),
    "a delay of the wrong type": _hello() + _frame(("submit", [_spec("t-delay", delay="soon")])),
    "a function that is not callable": _hello() + _frame(("submit", [_spec("t-fn", fn=5)])),
    "a request of no known kind": _hello() + _frame(("req", 1, "format-disk", ())),
    "a request with no payload": _hello() + _frame(("req", 2, "watch", ())),
    "a cancel of a stranger's id": _hello() + _frame(("req", 3, "cancel", ("nobody", True))),
    "a message of no known kind": _hello() + _frame(("launch",)),
}


@pytest.mark.parametrize("garbage", list(HOSTILE.values()), ids=list(HOSTILE))
def test_garbage_from_one_connection_leaves_the_server_serving_the_others(served, garbage):
    server, path = served
    good = BackgroundTasks(server=path)
    try:
        # Given a connection that sends garbage, then hangs up
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bad:
            bad.connect(path)
            bad.sendall(garbage)
            bad.settimeout(1.0)
            try:
                while bad.recv(65536):
                    pass  # whatever the server answers, until it closes or goes quiet
            except (socket.timeout, OSError):
                pass
        # Then another client's tasks still run, several at once, through the dispatcher
        results = [good.add_task(served_jobs.slow_square, i, 0.0) for i in range(5)]
        assert [r.wait(60) for r in results] == [i * i for i in range(5)]
        # And no task of the bad connection stays indexed on the server once it is gone
        stats = server.stats()
        assert stats.get("queued", 0) == 0, stats
        assert not [tid for tid in server._index if str(tid).startswith("t-")
                    and server._index[tid].final is None and server._index[tid].task is None]
    finally:
        good.shutdown()
