"""A propagated ContextVar in a module of its own: Ray workers import it to find the variable."""
from __future__ import annotations

import contextvars

from catzilla_mp import propagate_context

request: contextvars.ContextVar = propagate_context(contextvars.ContextVar("czmp_ray_request"))
