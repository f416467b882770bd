"""``python -m bench.workflows``: a chain's hand-off between steps, against a round trip through the app.

A chain step's result today goes worker -> app (the collector unpickles it)
-> the engine's callback thread (queues the next step, pickled again) ->
a worker. Three figures, each the median over interleaved rounds, in one run:

    chain_handoff_us     a chain of STEPS no-op steps (workflows.chain): from one step's start
                         (time.monotonic() in its worker; CLOCK_MONOTONIC is system-wide)
                         to the next one's
    app_loop_handoff_us  the same steps chained by hand in the app: wait for a result, add_task
                         the next step with it (what code without chain() does)
    one_way_us           add_task in the app to the task's start in a worker: one hop over the
                         rings, the floor of a direct worker-to-worker hand-off (a worker would
                         push the next step onto the same rings)

``--quick`` runs fewer rounds. The machine is shared: the spread (p25..p75)
is printed beside each median.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

STEPS = 50


def step(prev=None):
    """A chain step: its start time (the previous steps' times ride along, a short list)."""
    return time.monotonic()


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4)
    return q[0], statistics.median(xs), q[2]


def run(rounds: int, workers: int = 2) -> dict:
    from catzilla_mp import BackgroundTasks
    from catzilla_mp.workflows import sig

    chain_gaps: list[float] = []
    loop_gaps: list[float] = []
    one_way: list[float] = []
    with BackgroundTasks(workers=workers, memory_pool_mb=32, queue_size=1024) as engine:
        for _ in range(20):  # warm up every worker
            engine.add_task(step).wait(30)
        for _ in range(rounds):
            # A: workflows.chain -- every step's start, read back through the TaskResults
            results = []
            prev = engine.add_task(step)
            results.append(prev)
            for _ in range(STEPS - 1):
                prev = sig(step).apply(engine, depends_on=_feed(prev))
                results.append(prev)
            starts = [r.wait(60) for r in results]
            chain_gaps += [b - a for a, b in zip(starts, starts[1:])]
            # B: the same chain by hand through the app
            starts = [engine.add_task(step).wait(60)]
            for _ in range(STEPS - 1):
                starts.append(engine.add_task(step, starts[-1]).wait(60))
            loop_gaps += [b - a for a, b in zip(starts, starts[1:])]
            # C: one hop, app to worker
            for _ in range(STEPS):
                t0 = time.monotonic()
                one_way.append(engine.add_task(step).wait(60) - t0)
    out = {}
    for key, xs in (("chain_handoff_us", chain_gaps), ("app_loop_handoff_us", loop_gaps),
                    ("one_way_us", one_way)):
        lo, mid, hi = _quartiles([x * 1e6 for x in xs])
        out[key] = round(mid, 1)
        out[key + "_p25"] = round(lo, 1)
        out[key + "_p75"] = round(hi, 1)
    out["rounds"], out["steps"], out["workers"] = rounds, STEPS, workers
    return out


def _feed(prev):
    from catzilla_mp.workflows import Dependencies

    return Dependencies([prev], feed="first")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    res = run(rounds=3 if args.quick else 10)
    if args.json:
        print(json.dumps(res))
        return
    for key in ("chain_handoff_us", "app_loop_handoff_us", "one_way_us"):
        print(f"{key:22s} {res[key]:9.1f}   (p25 {res[key + '_p25']:.1f}, p75 {res[key + '_p75']:.1f})")
    print(f"rounds={res['rounds']} steps={res['steps']} workers={res['workers']}")


if __name__ == "__main__":
    main()
