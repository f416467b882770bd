"""Structured logs through the standard ``logging`` module, quiet unless asked.

Everything goes to the ``catzilla_mp`` logger tree:

    catzilla_mp          the engine: worker start/stop/crash, timeouts, scaling (supervisor.py)
    catzilla_mp.tasks    task events: retries, final failures, timeouts, crashes (this module)

Each record carries ``extra=`` fields (``event``, ``task_id``, ``task``,
``priority``, ``attempt``, ``error_type``, ``worker``, ``pid`` ...), so a JSON
or key=value formatter can ship them as fields; :func:`configure_logging`
installs one of each for people who have no logging setup of their own.
A NullHandler keeps the library silent until the application configures
logging (the library never configures the root logger).
"""
from __future__ import annotations

import json
import logging
import sys
from typing import IO, TYPE_CHECKING, Any, Optional

from ..errors import TaskTimeoutError, WorkerCrashedError
from .text import escape_controls, safe_str

if TYPE_CHECKING:
    from ..engine import BackgroundTasks
    from ..results import TaskResult

ENGINE_LOGGER = "catzilla_mp"
TASK_LOGGER = "catzilla_mp.tasks"

logging.getLogger(ENGINE_LOGGER).addHandler(logging.NullHandler())

# Attributes every LogRecord has: whatever else a record holds came from extra=.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class TaskEventLogger:
    """A monitor listener that logs the task events worth a line.

    Successful completions and submissions are not logged (at thousands per
    second they would drown everything else): they are what metrics are for.
    """

    def __init__(self, engine: "BackgroundTasks", logger: Optional[logging.Logger] = None) -> None:
        self.engine = engine
        self.log = logger or logging.getLogger(TASK_LOGGER)
        engine.monitor.add_listener(self.on_event)

    def close(self) -> None:
        self.engine.monitor.remove_listener(self.on_event)

    def on_event(self, event: str, task: "TaskResult", detail: Any) -> None:
        if event not in ("retrying", "failed"):
            return
        kind = _kind(detail)
        level = logging.WARNING if event == "failed" or kind != "error" else logging.INFO
        if not self.log.isEnabledFor(level):
            return
        extra = {
            "event": f"task_{kind}" if kind != "error" else f"task_{event}",
            "task_id": task.task_id, "task": task.name,
            "priority": task.priority.name.lower(), "attempt": task.attempt,
            "max_retries": task.max_retries, "worker": task.worker_id,
            "error_type": type(detail).__name__, "retrying": event == "retrying",
        }
        what = {"timeout": "timed out", "crash": "lost its worker", "error": "failed"}[kind]
        then = f"; retry {task.attempt}/{task.max_retries}" if event == "retrying" else ""
        self.log.log(level, "task %s (%s) %s: %s: %s%s", task.task_id, task.name, what,
                     type(detail).__name__, safe_str(detail, 300), then, extra=extra)


def _kind(exc: Any) -> str:
    if isinstance(exc, TaskTimeoutError):
        return "timeout"
    if isinstance(exc, WorkerCrashedError):
        return "crash"
    return "error"


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a record got through ``extra=``."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class KeyValueFormatter(logging.Formatter):
    """``time level logger message key=value ...`` with the record's extra fields.

    One record is one line, whatever it carries: control characters in the
    message and in values are escaped (``\n`` -> ``\x0a``), values with
    spaces, quotes or ``=`` are JSON-quoted, and a traceback becomes an
    ``exc_info=`` field. A task's error text cannot forge a line.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.getMessage())
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        fields = extra_fields(record)
        if record.exc_info:
            fields["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            fields["stack_info"] = self.formatStack(record.stack_info)
        if fields:
            line += " " + " ".join(f"{escape_controls(str(k))}={_kv(v)}"
                                   for k, v in sorted(fields.items()))
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": record.created, "level": record.levelname, "logger": record.name,
               "message": record.getMessage()}
        out.update(extra_fields(record))
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def _kv(v: Any) -> str:
    s = safe_str(v, 4000)
    if not s or any(c in s for c in ' "=\\') or escape_controls(s) != s:
        return json.dumps(s)  # escapes every control character and quote
    return s


def configure_logging(level: int | str = logging.INFO, *, json_lines: bool = False,
                      stream: Optional[IO[str]] = None) -> logging.Handler:
    """Send catzilla_mp's logs to ``stream`` (default stderr); returns the handler added.

    For apps without a logging setup of their own; apps that have one only
    need to set the ``catzilla_mp`` logger's level.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else KeyValueFormatter())
    logger = logging.getLogger(ENGINE_LOGGER)
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler
