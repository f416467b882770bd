"""``python -m bench.engine``: the process engine's own figures against ProcessPoolExecutor.

Measures, in one run and on the same workloads as ``python -m bench`` (``bench.workloads``),
catzilla_mp and ``concurrent.futures.ProcessPoolExecutor`` with 2 workers each, repetitions
interleaved, and prints a table (or ``--json``: one JSON object) with the medians:

    noop_tasks_per_s        20,000 no-op tasks submitted one by one, end to end
    submit_per_s            single add_task calls per second (during that run)
    batch_submit_per_s      tasks per second through add_tasks (PPE: map)
    round_trip_us_p50/p99   one no-op at a time, submit to result
    cpu_speedup             pure-Python CPU-bound tasks, 2 workers over serial
    cpu_speedup_ceiling     the same split over 2 bare processes, no engine: the machine's
                            limit, for reading cpu_speedup on a shared or noisy host
    idle_cpu_percent        app process + all its children, engine idle (% of one core)
    payload_mib_per_s       16 MiB bytes arguments delivered to workers
    numpy_payload_mib_per_s 16 MiB NumPy arrays delivered to workers
    first_result_ms         a new engine (2 workers): constructor to the first result
    replacement_ms          one of 2 workers SIGKILLed while tasks are queued: until a
                            new worker completes a task (PPE: none, it breaks)
    shutdown_ms             shutdown of the idle engine after all the above

each also as ``ppe_<key>`` for ProcessPoolExecutor. ``--quick`` runs in under 60 s.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import socket
import sys
import time

from bench import peers as peers_mod
from bench import runner
from bench import workloads as wl

#: key -> (workload, metric)
KEYS = {
    "noop_tasks_per_s": ("noop_single", "tasks_per_s"),
    "submit_per_s": ("noop_single", "submit_per_s"),
    "batch_tasks_per_s": ("noop_batch", "tasks_per_s"),
    "batch_submit_per_s": ("noop_batch", "batch_submit_per_s"),
    "round_trip_us_p50": ("round_trip", "p50_us"),
    "round_trip_us_p99": ("round_trip", "p99_us"),
    "cpu_speedup": ("cpu_speedup", "speedup"),
    "cpu_speedup_ceiling": ("cpu_ceiling", "speedup"),
    "idle_cpu_percent": ("idle_cpu", "cpu_percent"),
    "payload_mib_per_s": ("payload_bytes", "mib_per_s"),
    "numpy_payload_mib_per_s": ("payload_numpy", "mib_per_s"),
    "first_result_ms": ("startup", "first_result_ms"),
    "replacement_ms": ("replacement", "replacement_ms"),
    "shutdown_ms": ("shutdown", "shutdown_ms"),
}

#: The targets of the process-engine issue, as (kind, bound): "min"/"max" absolute, or
#: "x_ppe": at least that multiple of ProcessPoolExecutor's figure.
TARGETS = {
    "noop_tasks_per_s": ("x_ppe", 10.0),
    "submit_per_s": ("min", 300_000),
    "batch_submit_per_s": ("min", 1_000_000),
    "round_trip_us_p50": ("max", 30.0),
    "cpu_speedup": ("min", 1.9),
    "idle_cpu_percent": ("max", 1.0),
    "payload_mib_per_s": ("x_ppe", 5.0),
    "numpy_payload_mib_per_s": ("x_ppe", 5.0),
    # issue 18: start-up to the first result, a killed worker's replacement
    # serving (ProcessPoolExecutor has none: it breaks), shutdown after the run
    "first_result_ms": ("max", 60.0),
    "replacement_ms": ("max", 30.0),
    "shutdown_ms": ("max", 30.0),
}

#: In running order: "startup" makes the engine the others use, "shutdown" ends it.
WORKLOADS = ["startup", "noop_single", "noop_batch", "round_trip", "cpu_speedup", "cpu_ceiling",
             "payload_bytes", "payload_numpy", "idle_cpu", "replacement", "shutdown"]

#: (params, repetitions, time budget for the repetitions in seconds)
MODES = {
    # One repetition: 20,000 no-ops twice through ProcessPoolExecutor alone take ~12 s here.
    "quick": (dataclasses.replace(wl.QUICK, noop_tasks=20_000, round_trips=1_000, timeout=25.0),
              1, None),
    "full": (dataclasses.replace(wl.FULL, noop_tasks=20_000), 5, 600.0),
}


def measure(quick: bool, log=lambda s: None) -> dict:
    """Run the workloads; return the flat result object (medians, errors, context)."""
    params, reps, budget = MODES["quick" if quick else "full"]
    peers = [peers_mod.CatzillaMP, peers_mod.ProcessPool]
    foreign = runner.ForeignLoad()
    out = {"host": socket.gethostname().split(".")[0],
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "workers": 2, "mode": "quick" if quick else "full", "errors": []}
    runnable = []
    for peer in peers:
        why = peer.missing()
        if why:
            out["errors"].append(f"{peer.name} skipped: {why}")
        else:
            runnable.append(peer)
    results = runner.run_suite(runnable, WORKLOADS, params, reps, budget_s=budget, log=log)
    summary = runner.summarize(results)
    out["other_cpu_percent"] = round(foreign.percent(), 1)
    out["reps"] = max((len(v) for p in results.values() for w in p.values()
                       for v in w["samples"].values()), default=0)
    for peer, prefix in ((peers_mod.CatzillaMP, ""), (peers_mod.ProcessPool, "ppe_")):
        entry = summary.get(peer.name, {})
        for key, (work, metric) in KEYS.items():
            st = entry.get(work, {}).get("metrics", {}).get(metric)
            out[prefix + key] = st["median"] if st else None
        for work in WORKLOADS:
            out["errors"] += [f"{peer.name}/{work}: {e}"
                              for e in entry.get(work, {}).get("errors", [])]
    return out


def verdict(res: dict, key: str) -> str:
    """'yes'/'no' against the issue's target, '' when there is none or no figure."""
    if key not in TARGETS or res.get(key) is None:
        return ""
    kind, bound = TARGETS[key]
    value = res[key]
    if kind == "x_ppe":
        ref = res.get("ppe_" + key)
        return "" if not ref else ("yes" if value >= bound * ref else "no")
    return "yes" if (value >= bound if kind == "min" else value <= bound) else "no"


def table(res: dict) -> str:
    from bench.report import fmt
    rows = [f"catzilla_mp engine benchmark — {res['date']} {res['host']} "
            f"({res['mode']}, {res['reps']} reps, 2 workers)", "",
            f"{'key':<26}{'catzilla_mp':>14}{'PPE':>14}{'ratio':>9}  {'target':<16}{'met':>4}"]
    for key in KEYS:
        mine, ppe = res.get(key), res.get("ppe_" + key)
        ratio = fmt(mine / ppe) + "x" if mine is not None and ppe else ""
        kind, bound = TARGETS.get(key, ("", None))
        target = {"x_ppe": f">= {fmt(bound)}x PPE", "min": f">= {fmt(bound)}",
                  "max": f"<= {fmt(bound)}"}.get(kind, "")
        rows.append(f"{key:<26}{fmt(mine):>14}{fmt(ppe):>14}{ratio:>9}  {target:<16}"
                    f"{verdict(res, key):>4}")
    rows.append(f"\nother processes used {fmt(res['other_cpu_percent'])}% of a core meanwhile "
                "(0: undisturbed run)")
    if res["errors"]:
        rows += ["", "errors:"] + [f"  {e}" for e in res["errors"]]
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.engine", description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--quick", action="store_true", help="under 60 s")
    args = ap.parse_args(argv)
    log = (lambda s: print(s, file=sys.stderr)) if args.json else print
    res = measure(args.quick, log=log)
    print(json.dumps(res) if args.json else "\n" + table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
