"""A Huey app on SqliteHuey for the peer comparison (test_huey_peer.py, bench/durable.py).

``make(path)`` builds the Huey instance and registers the tasks; the enqueuing
process and the consumer process both call it, so the registries agree.
"""
from __future__ import annotations

import os
import time


def make(path: str):
    from huey import SqliteHuey

    huey = SqliteHuey("czmp-peer", filename=path)

    @huey.task(name="long_once")
    def long_once(log_dir: str, key: str, x: int) -> int:
        with open(os.path.join(log_dir, "runs.log"), "a") as f:
            f.write(f"{key} {os.getpid()}\n")
        marker = os.path.join(log_dir, f"started-{key}")
        if not os.path.exists(marker):
            with open(marker, "w"):
                pass
            time.sleep(300)
        return -x

    @huey.task(name="noop")
    def noop(x: int) -> int:
        return x

    return huey, {"long_once": long_once, "noop": noop}


def consume(path: str, workers: int) -> None:
    """Run a consumer of the Huey at ``path`` until a signal stops it."""
    huey, _ = make(path)
    consumer = huey.create_consumer(workers=workers, worker_type="thread",
                                    periodic=False, check_worker_health=False)
    print("CONSUMING", flush=True)
    consumer.run()


#: ``python -c CONSUMER PATH WORKERS`` runs a consumer (tasks named as this module's)
CONSUMER = "import sys, huey_app; huey_app.consume(sys.argv[1], int(sys.argv[2]))"
