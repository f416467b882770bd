"""Run workloads on peers in child processes, interleaved, with a timeout on each workload.

    parent (python -m bench / bench.engine)             child (python -m bench.runner SPEC)
    ───────────────────────────────────────             ───────────────────────────────────
    for rep in reps:                                    import one peer, start its engine
      for peer in peers:          ── SPEC (json) ──►    for workload in SPEC:
        run_trial(peer, workloads)                        run it against the engine
          read one line per workload ◄── "@@ {...}" ──    print its metrics (or its error)
          past a workload's timeout: kill the           shut the engine down
          child's process group, note the timeout,
          go on with the next workload in a new child

One child per (peer, repetition) keeps peers from disturbing each other (no pool of one
lingers while another is measured) and lets the parent kill a hung peer with everything it
started: the child leads its own process group. Repetitions alternate peers (A B A B ...),
so a slow phase of the machine lands on all of them rather than on one.
"""
from __future__ import annotations

import dataclasses
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

from bench import peers as peers_mod
from bench import workloads as wl

ROOT = Path(__file__).resolve().parent.parent
_TAG = "@@ "
#: Seconds a child may take to import its peer and start its engine, on top of the
#: first workload's own timeout.
START_GRACE = 20.0


# ------------------------------------------------------------------------------- child side

def _emit(obj: dict) -> None:
    sys.stdout.write(_TAG + json.dumps(obj) + "\n")
    sys.stdout.flush()


def child_main(spec: dict) -> int:
    """Run ``spec['workloads']`` on ``spec['peer']``; one result line each."""
    peer_cls = peers_mod.BY_NAME[spec["peer"]]
    params = wl.Params(**spec["params"])
    engine = None
    for name in spec["workloads"]:
        work = wl.BY_NAME[name]
        began = time.perf_counter()
        deadline = began + params.timeout
        try:
            if work.engine == "own":
                metrics = work.run(peer_cls, params, deadline)
            elif work.engine == "creates":
                if engine is not None:
                    engine.shutdown()
                metrics, engine = work.run(peer_cls, params, deadline)
            else:
                if engine is None:
                    engine = peer_cls(workers=spec.get("workers", 2))
                    engine.start()
                metrics = work.run(engine, params, deadline)
                if work.engine == "ends":
                    engine = None
            _emit({"workload": name, "ok": True, "metrics": metrics,
                   "wall_s": time.perf_counter() - began})
        except BaseException as exc:  # report every failure; the parent decides what next
            # After a timeout the engine may be wedged, and shutting it down could hang too:
            # leave, and let the parent clear the process group and go on in a fresh child.
            fatal = isinstance(exc, (TimeoutError, KeyboardInterrupt))
            _emit({"workload": name, "ok": False, "fatal": fatal,
                   "error": f"{type(exc).__name__}: {exc or 'no message'}",
                   "trace": traceback.format_exc(limit=6)})
            if fatal:
                os._exit(3)
    if engine is not None:
        engine.shutdown()
    _emit({"done": True})
    return 0


# ------------------------------------------------------------------------------ parent side

def _kill_group(proc: subprocess.Popen) -> None:
    """Stop the child and everything it started (its process group): TERM, then KILL."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return  # leader and every process it started are gone already
    try:
        proc.wait(timeout=3.0)
        time.sleep(0.2)  # workers orphaned by the leader get the same moment to exit
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _child_env() -> dict:
    env = dict(os.environ)
    # Workers started by spawn/loky import bench.workloads by name: they need the repo root.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _one_child(peer: str, names: list, params: wl.Params, workers: int,
               out: dict, log: Callable[[str], None]) -> list:
    """Start one child for ``names``; fill ``out``; return the names it did not get to."""
    spec = {"peer": peer, "workloads": names, "params": dataclasses.asdict(params),
            "workers": workers}
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "bench.runner", json.dumps(spec)],
                                cwd=str(ROOT), env=_child_env(), stdout=subprocess.PIPE,
                                stderr=err, start_new_session=True)
        pending = list(names)
        deadline = time.monotonic() + START_GRACE + params.timeout + 5.0
        buf = b""
        try:
            while pending:
                rest = deadline - time.monotonic()
                if rest <= 0:
                    out[pending[0]] = {"ok": False, "error": f"timed out after {params.timeout:.0f} s"}
                    log(f"    {peer}/{pending[0]}: TIMEOUT, killing the peer's processes")
                    return pending[1:]
                ready, _, _ = select.select([proc.stdout], [], [], min(rest, 0.5))
                if not ready:
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:  # child exited
                    proc.wait(timeout=10)
                    err.seek(0)
                    tail = err.read().decode(errors="replace").strip().splitlines()[-3:]
                    out[pending[0]] = {"ok": False, "error": f"child exited rc={proc.returncode}: "
                                       + " | ".join(tail)}
                    log(f"    {peer}/{pending[0]}: {out[pending[0]]['error']}")
                    return pending[1:]
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    text = line.decode(errors="replace")
                    if not text.startswith(_TAG):
                        continue
                    msg = json.loads(text[len(_TAG):])
                    if "workload" in msg:
                        out[msg["workload"]] = msg
                        pending.remove(msg["workload"])
                        deadline = time.monotonic() + params.timeout + 5.0
                        if not msg["ok"]:
                            log(f"    {peer}/{msg['workload']}: {msg['error']}")
                        if msg.get("fatal"):
                            return pending  # the child leaves now; a fresh one goes on
            # Everything reported: give the child time to shut its engine down.
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log(f"    {peer}: shutdown took over 30 s; killed")
            return []
        finally:
            _kill_group(proc)
            proc.stdout.close()


def run_trial(peer: str, names: list, params: wl.Params, workers: int = 2,
              log: Callable[[str], None] = print) -> dict:
    """Every workload in ``names`` on ``peer``, restarting the child after a hang or crash."""
    out: dict = {}
    rest = list(names)
    while rest:
        rest = _one_child(peer, rest, params, workers, out, log)
    return out


def run_suite(peer_classes: list, names: list, params: wl.Params, reps: int,
              budget_s: Optional[float] = None, log: Callable[[str], None] = print) -> dict:
    """Interleave repetitions over peers; return {peer: {workload: {samples, errors}}}."""
    results = {p.name: {n: {"samples": {}, "errors": []} for n in names} for p in peer_classes}
    t0 = time.monotonic()
    for rep in range(reps):
        spent = time.monotonic() - t0
        # Start another repetition only if one more (as long as the mean so far) fits.
        if budget_s is not None and rep > 0 and spent + spent / rep > budget_s:
            log(f"  time budget of {budget_s:.0f} s: stopping after {rep} repetition(s)")
            break
        for peer in peer_classes:
            t1 = time.monotonic()
            trial = run_trial(peer.name, names, params, log=log)
            for name, msg in trial.items():
                slot = results[peer.name][name]
                if msg.get("ok"):
                    for key, value in msg["metrics"].items():
                        slot["samples"].setdefault(key, []).append(value)
                else:
                    slot["errors"].append(msg["error"])
            log(f"  rep {rep + 1}/{reps} {peer.label:<28} {time.monotonic() - t1:5.1f} s")
    return results


class ForeignLoad:
    """CPU used by processes other than this one and its (waited-for) children, over a span.

    Every figure here is skewed when something else runs on the machine (on a shared
    development VM, it often does); the report states how much else ran.
    """

    def __init__(self) -> None:
        self._t0 = time.monotonic()
        self._busy0, self._own0 = self._busy(), self._own()

    @staticmethod
    def _busy() -> float:
        """Seconds of CPU the whole machine has spent not idle, from /proc/stat."""
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return float("nan")
        ticks = [int(x) for x in fields]
        idle = ticks[3] + ticks[4]  # idle + iowait
        # steal (index 7) is the hypervisor's; guest counts (8, 9) are inside user already.
        return (sum(ticks[:8]) - idle - ticks[7]) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        import resource
        total = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            ru = resource.getrusage(who)
            total += ru.ru_utime + ru.ru_stime
        return total

    def percent(self) -> float:
        """Other processes' CPU since construction, in % of one core (>= 0)."""
        span = time.monotonic() - self._t0
        other = (self._busy() - self._busy0) - (self._own() - self._own0)
        return max(0.0, 100.0 * other / span) if span > 0 else 0.0


def summarize(results: dict, baseline: str = "catzilla_mp") -> dict:
    """Add median/min/max per metric, and each peer's ratio (peer / baseline median)."""
    summary = {}
    for peer, per_work in results.items():
        summary[peer] = {}
        for name, slot in per_work.items():
            stats = {}
            for key, values in slot["samples"].items():
                stats[key] = {"median": statistics.median(values), "min": min(values),
                              "max": max(values), "n": len(values), "samples": values}
            summary[peer][name] = {"metrics": stats, "errors": slot["errors"]}
    base = summary.get(baseline, {})
    for peer, per_work in summary.items():
        for name, entry in per_work.items():
            for key, st in entry["metrics"].items():
                ref = base.get(name, {}).get("metrics", {}).get(key)
                st["ratio"] = (st["median"] / ref["median"]
                               if ref and ref["median"] else None)
    return summary


if __name__ == "__main__":
    sys.exit(child_main(json.loads(sys.argv[1])))
