"""The C core against its model: rings, slots and arena under random operations and kills.

The state machine is in core_model.py (its docstring lists the rules and
invariants). CI runs ``CZMP_MODEL_EXAMPLES`` examples (default 200) of up
to ``CZMP_MODEL_STEPS`` (50) steps each, about 15 s here;
``python -m bench.model --examples N`` runs it longer.
"""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, settings

from core_model import CoreMachine

#: Examples per CI run: each is a fresh segment and up to STEPS operations.
EXAMPLES = int(os.environ.get("CZMP_MODEL_EXAMPLES", "200"))
STEPS = int(os.environ.get("CZMP_MODEL_STEPS", "50"))
#: CZMP_MODEL_SHRINK=0 reports the first failing run as found (long runs:
#: shrinking one that fails late can take minutes).
PHASES = (tuple(Phase) if os.environ.get("CZMP_MODEL_SHRINK", "1") != "0"
          else (Phase.explicit, Phase.reuse, Phase.generate))


@pytest.mark.timeout_guard(300)
def test_the_core_agrees_with_its_model_through_random_operations_and_kills():
    TestCase = CoreMachine.TestCase
    TestCase.settings = settings(
        max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, database=None,
        suppress_health_check=list(HealthCheck), print_blob=True, phases=PHASES)
    TestCase("runTest").runTest()
