"""``python -m bench.workflows``: a chain's hand-off between steps, worker-to-worker against through the app.

In process mode a chain step's result goes from the worker that ran it
straight into the next step's slot, which that worker queues
(worker-to-worker, issue 15: native/slots.c czmp_tasks_feed). The way it
went before, and still goes where the direct path is not possible, is
worker -> app (the collector unpickles it) -> the engine's callback thread
(queues the next step, pickled again) -> a worker. Figures, each the median
over interleaved rounds in one run (so both paths see the same load):

    direct_handoff_us    a chain of STEPS no-op steps (workflows.chain), wired before its
                         first step may start (it waits on a file): from one step's start
                         (time.monotonic() in its worker; CLOCK_MONOTONIC is system-wide)
                         to the next one's
    app_handoff_us       the same chain with the direct path off (Workflows.direct_feed =
                         False): each hop through the app, as before issue 15
    ratio                app_handoff_us / direct_handoff_us
    app_loop_handoff_us  the same steps chained by hand in the app: wait for a result, add_task
                         the next step with it (what code without chain() does)
    one_way_us           add_task in the app to the task's start in a worker: one hop over the
                         rings, the floor of any hand-off

direct_fed / app_fed count the hops each path really took (the workflows'
counters), so a figure is never credited to the wrong path.
``--quick`` runs fewer rounds. The machine may be shared: the spread
(p25..p75) is printed beside each median.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

STEPS = 50


def step(prev=None):
    """A chain step: its start time."""
    return time.monotonic()


def gated_step(gate):
    """The first step of a chain: waits until ``gate`` exists (the chain is wired), then starts."""
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.0002)
    return time.monotonic()


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4)
    return q[0], statistics.median(xs), q[2]


def _gated_chain(engine, tmp: str, n: int) -> list[float]:
    """Wire a chain of n steps behind a gate, open it, return the gaps between step starts."""
    from catzilla_mp.workflows import sig

    gate = os.path.join(tmp, f"gate-{n}")
    results = [engine.add_task(gated_step, gate)]
    for _ in range(STEPS - 1):
        results.append(sig(step).apply(engine, depends_on=_feed(results[-1])))
    with open(gate, "w"):
        pass
    starts = [r.wait(60) for r in results]
    os.unlink(gate)
    return [b - a for a, b in zip(starts, starts[1:])]


def run(rounds: int, workers: int = 2) -> dict:
    from catzilla_mp import BackgroundTasks

    direct_gaps: list[float] = []
    app_gaps: list[float] = []
    loop_gaps: list[float] = []
    one_way: list[float] = []
    with BackgroundTasks(workers=workers, memory_pool_mb=32, queue_size=1024) as engine, \
            tempfile.TemporaryDirectory(prefix="czmp-bench-") as tmp:
        for _ in range(20):  # warm up every worker
            engine.add_task(step).wait(30)
        wf = engine._workflow_state()
        graph = wf.graph
        fed = {True: [0, 0], False: [0, 0]}  # direct_feed -> [direct hops, app hops]
        k = 0
        for _ in range(rounds):
            # A and A': the same chain, worker-to-worker then through the app
            for direct in (True, False):
                wf.direct_feed = direct
                d0, a0 = graph.direct_feeds, graph.app_feeds
                gaps = _gated_chain(engine, tmp, k)
                k += 1
                # the last step's count is made by a callback thread: let it land
                deadline = time.monotonic() + 5
                while (graph.direct_feeds - d0 + graph.app_feeds - a0 < STEPS - 1
                       and time.monotonic() < deadline):
                    time.sleep(0.001)
                fed[direct][0] += graph.direct_feeds - d0
                fed[direct][1] += graph.app_feeds - a0
                (direct_gaps if direct else app_gaps).extend(gaps)
            wf.direct_feed = True
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
    for key, xs in (("direct_handoff_us", direct_gaps), ("app_handoff_us", app_gaps),
                    ("app_loop_handoff_us", loop_gaps), ("one_way_us", one_way)):
        lo, mid, hi = _quartiles([x * 1e6 for x in xs])
        out[key] = round(mid, 1)
        out[key + "_p25"] = round(lo, 1)
        out[key + "_p75"] = round(hi, 1)
    out["ratio"] = round(out["app_handoff_us"] / out["direct_handoff_us"], 2)
    out["direct_run_fed"] = {"direct": fed[True][0], "app": fed[True][1]}
    out["app_run_fed"] = {"direct": fed[False][0], "app": fed[False][1]}
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
    for key in ("direct_handoff_us", "app_handoff_us", "app_loop_handoff_us", "one_way_us"):
        print(f"{key:22s} {res[key]:9.1f}   (p25 {res[key + '_p25']:.1f}, p75 {res[key + '_p75']:.1f})")
    print(f"ratio (app / direct)   {res['ratio']:9.2f}")
    print(f"hops fed: direct run {res['direct_run_fed']}, app run {res['app_run_fed']}")
    print(f"rounds={res['rounds']} steps={res['steps']} workers={res['workers']}")


if __name__ == "__main__":
    main()
