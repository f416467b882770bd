"""Text from untrusted objects, made safe to show: bounded, never raising, one line.

A task's result and exception are the task's own objects: their ``__str__``
or ``__repr__`` may raise, return megabytes, or contain newlines that would
forge a log line or a header. Everything the web routes, the dashboard and
the logs show of them goes through here.
"""
from __future__ import annotations

import re
import reprlib
from typing import Any

#: Marker appended to text cut at its limit.
TRUNCATED = "…[truncated]"

# C0 and C1 controls, DEL, and the two Unicode line separators: each could
# end a log line or split a key=value field.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape_one(m: "re.Match[str]") -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n`` -> ``\\x0a``)."""
    return _CONTROLS.sub(_escape_one, text)


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with TRUNCATED at the end if cut."""
    return text if len(text) <= limit else text[: max(0, limit - len(TRUNCATED))] + TRUNCATED


def safe_str(obj: Any, limit: int = 2000) -> str:
    """``str(obj)`` within ``limit`` characters; a placeholder if str() raises."""
    try:
        text = str(obj)
        if not isinstance(text, str):
            raise TypeError("__str__ returned a non-string")
    except Exception as exc:  # noqa: BLE001 - the object is untrusted
        text = f"<unprintable {_type_name(obj)}: {_type_name(exc)} in __str__>"
    return clip(text, limit)


class _Repr(reprlib.Repr):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.maxlevel = 4
        self.maxstring = self.maxother = self.maxlong = min(limit, 400)
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = self.maxfrozenset = 50
        self.maxdeque = self.maxarray = 50

    def repr_instance(self, obj: Any, level: int) -> str:
        try:
            text = repr(obj)
            if not isinstance(text, str):
                raise TypeError("__repr__ returned a non-string")
        except Exception as exc:  # noqa: BLE001
            return f"<unrepresentable {_type_name(obj)}: {_type_name(exc)} in __repr__>"
        return clip(text, self.maxother)


def safe_repr(obj: Any, limit: int = 2000) -> str:
    """A bounded repr (long containers and strings elided); never raises."""
    try:
        text = _Repr(limit).repr(obj)
    except Exception as exc:  # noqa: BLE001 - e.g. a container whose __len__ raises
        text = f"<unrepresentable {_type_name(obj)}: {_type_name(exc)}>"
    return clip(text, limit)


def _type_name(obj: Any) -> str:
    try:
        return type(obj).__qualname__
    except Exception:  # noqa: BLE001
        return "object"
