"""``python -m bench.model``: the C core against its model, for longer than CI can.

Runs the hypothesis state machine of tests/model/core_model.py (rings,
slots and arena under random operations, with workers SIGKILLed at fault
points) for ``--examples`` examples of up to ``--steps`` steps each. A
failure prints the shortest sequence of operations hypothesis could find
(``--no-shrink`` prints the first one found instead: shrinking a long run
can take minutes) and exits 1.

    python -m bench.model --examples 5000 --steps 200
    python -m bench.model --skip stale_finish,priority   # look past known defects
"""
from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "model"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.model", description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--no-shrink", action="store_true")
    ap.add_argument("--skip", default="", help="comma-separated rules to leave out (see core_model.SKIP)")
    args = ap.parse_args(argv)
    # read by core_model at import
    os.environ["CZMP_MODEL_SKIP"] = args.skip
    from hypothesis import HealthCheck, Phase, seed as hyp_seed, settings

    from core_model import CoreMachine

    phases = (Phase.explicit, Phase.reuse, Phase.generate) if args.no_shrink else tuple(Phase)
    TestCase = CoreMachine.TestCase
    TestCase.settings = settings(max_examples=args.examples, stateful_step_count=args.steps,
                                 deadline=None, database=None, phases=phases,
                                 suppress_health_check=list(HealthCheck), print_blob=True)
    if args.seed is not None:
        TestCase = hyp_seed(args.seed)(TestCase)
    t0 = time.monotonic()
    try:
        TestCase("runTest").runTest()
    except AssertionError as exc:
        print(f"FAILED after {time.monotonic() - t0:.0f} s:\n{exc}", file=sys.stderr)
        return 1
    print(f"{args.examples} examples of up to {args.steps} steps: the core agrees with its model "
          f"({time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
