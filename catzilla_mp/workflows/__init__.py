"""Workflows on the engine: dependencies and the canvas, unique jobs, rate limits, schedules.

Each concept is a module; the engine reaches them through ``core.Workflows``
(one per engine, made on first use) and gives them a WorkflowHost
(host.py), nothing else:

    dependencies.py  depends_on=: a task held until its parents complete
    canvas.py        sig, chain, group, chord (built on depends_on)
    unique.py        job_id= / unique_for=: one TaskResult per key
    ratelimit.py     rate_limit="100/s": tasks over the limit are delayed
    schedule.py      engine.schedule / @app.periodic: cron (cronsim) or every=
    core.py          Workflows: the state of one engine

docs/workflows.md shows each with an example.
"""
from __future__ import annotations

from .canvas import Chain, Chord, Group, GroupResult, Signature, chain, chord, group, sig
from .dependencies import Dependencies
from .ratelimit import RateLimit
from .schedule import MISSED_POLICIES, Schedule

__all__ = ["Chain", "Chord", "Dependencies", "Group", "GroupResult", "MISSED_POLICIES",
           "RateLimit", "Schedule", "Signature", "chain", "chord", "group", "sig"]
