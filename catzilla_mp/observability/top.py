"""``catzilla-mp top``: a live terminal view of a running engine, from another shell.

It attaches read-only to the engine's shared memory (safe_view.py): no
socket, no cooperation from the app, no way to disturb it. It finds the
segment by name, by the owner's pid, or, with no argument, takes the only
(or newest) live engine of this user. One frame is rendered as plain text;
the live mode redraws it with ANSI escapes every ``--interval`` seconds, like
top, until q or Ctrl-C, or until the engine goes away.

What it shows comes from the segment alone: queue depth per priority,
slot states, and per worker its pid, state, current slot (and task id,
priority, how long it has run), tasks done/failed by this incarnation, the
age of its native heartbeat, and CPU %/RSS from psutil. Task names are not
in shared memory (functions travel pickled, and an observer must never
unpickle), so the dashboard, not top, is the place for them.
"""
from __future__ import annotations

import os
import select
import sys
import time
from typing import IO, Optional

import psutil

from ..errors import SegmentError
from .safe_view import SafeSegmentView, find_segments
from .shm_view import WorkerInfo

CLEAR = "\x1b[H\x1b[2J"
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"
BOLD, DIM, RESET = "\x1b[1m", "\x1b[2m", "\x1b[0m"


class TargetError(Exception):
    """No engine (or more than one candidate) matches what the user asked for."""


def resolve(target: Optional[str]) -> str:
    """Segment name for ``target``: a segment name, an owner pid, or None for the newest engine."""
    if target and not target.isdigit():
        name = target.lstrip("/")
        if name.startswith("/dev/shm/"):
            name = name[len("/dev/shm/"):]
        return name.split("/")[-1]
    pid = int(target) if target else None
    found = find_segments(pid)
    if not found:
        who = f"process {pid}" if pid else "this user"
        raise TargetError(f"no running catzilla_mp engine of {who} in /dev/shm")
    if len(found) > 1 and pid is None:
        names = "\n  ".join(str(f) for f in found)
        raise TargetError(f"several engines are running; name one (or its pid):\n  {names}")
    return str(found[0])


class Sampler:
    """CPU % and RSS per worker pid, kept across frames (cpu_percent needs two looks)."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    def sample(self, pid: int) -> tuple[Optional[float], Optional[int]]:
        if not pid:
            return None, None
        p = self._procs.get(pid)
        try:
            if p is None:
                p = self._procs[pid] = psutil.Process(pid)
                p.cpu_percent(None)
            return p.cpu_percent(None), p.memory_info().rss
        except psutil.Error:
            self._procs.pop(pid, None)
            return None, None


def render(view: SafeSegmentView, sampler: Sampler, color: bool = False, width: int = 100) -> str:
    """One frame of text (re-reads the view's copies first)."""
    if hasattr(view, "refresh"):
        view.refresh()
    b, d, r = (BOLD, DIM, RESET) if color else ("", "", "")
    h = view.header
    parsed = view.parsed
    owner = f"pid {parsed.pid}" if parsed else "pid ?"
    up = max(0.0, time.time() - h.created_ns / 1e9)
    state = "shutting down" if view.shutting_down else ("running" if view.owner_alive() else "owner gone")
    lines = [
        f"{b}catzilla_mp top{r}  {view.name}",
        f"owner {owner} · {state} · up {_duration(up)} · {time.strftime('%H:%M:%S')}",
        "",
    ]
    q = view.queue_depths()
    lines.append(f"{b}queues{r}   " + "  ".join(f"{k} {v}" for k, v in q.items())
                 + f"   total {sum(q.values())}   results pending {view.results_pending()}")
    slots = view.slot_states()
    if slots is not None:
        lines.append(f"{b}slots{r}    " + "  ".join(f"{k} {v}" for k, v in slots.items() if v or k == "free")
                     + f"   (of {h.nslots})")
    workers = view.workers()
    live = [w for w in workers if w.alive]
    done = sum(w.tasks_done for w in workers)
    failed = sum(w.tasks_failed for w in workers)
    busy = sum(1 for w in live if w.current_slot is not None)
    lines.append(f"{b}workers{r}  {len(live)} live, {busy} busy, of {h.nworkers} records"
                 f"   tasks done {done}  failed {failed} {d}(current incarnations){r}")
    lines.append("")
    lines.append(f"{b}{'IDX':>4} {'PID':>8}  {'STATE':<9} {'SLOT':>6} {'TASK':>8} {'PRIO':<8} "
                 f"{'RUNNING':>8} {'DONE':>8} {'FAILED':>7} {'BEAT':>6} {'CPU%':>6} {'RSS':>9}{r}")
    for w in workers:
        lines.append(_worker_line(w, sampler))
    if not workers:
        lines.append(f"{d}  (no worker records in use){r}")
    return "\n".join(line[:width] if not color else line for line in lines) + "\n"


def _worker_line(w: WorkerInfo, sampler: Sampler) -> str:
    cpu, rss = sampler.sample(w.pid) if w.alive else (None, None)
    state = w.state if w.alive or not w.pid else "gone"
    return (f"{w.index:>4} {w.pid or '-':>8}  {state:<9} "
            f"{_opt(w.current_slot):>6} {('#' + str(w.task_id)) if w.task_id else '-':>8} "
            f"{w.priority or '-':<8} {_secs(w.running_s):>8} {w.tasks_done:>8} {w.tasks_failed:>7} "
            f"{_secs(w.heartbeat_age_s):>6} {'-' if cpu is None else f'{cpu:.0f}':>6} {_mib(rss):>9}")


def _opt(v) -> str:
    return "-" if v is None else str(v)


def _secs(v: Optional[float]) -> str:
    return "-" if v is None else (f"{v:.1f}s" if v < 100 else _duration(v))


def _mib(v: Optional[int]) -> str:
    return "-" if v is None else f"{v / (1 << 20):.1f}M"


def _duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def run(target: Optional[str], *, interval: float = 1.0, once: bool = False,
        out: IO[str] = sys.stdout, color: Optional[bool] = None) -> int:
    """The ``top`` command. Returns the exit status."""
    try:
        name = resolve(target)
        view = SafeSegmentView(name)
    except TargetError as exc:
        print(f"catzilla-mp top: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - any attach failure (missing, corrupt, foreign) is reported
        print(f"catzilla-mp top: cannot attach to {target or 'an engine'}: {exc}", file=sys.stderr)
        return 1
    tty = out.isatty()
    color = tty if color is None else color
    sampler = Sampler()
    with view:
        try:
            if once:
                sampler_warm(view, sampler)
                out.write(render(view, sampler, color=color))
                out.flush()
                return 0
            return _live(view, sampler, interval, out, color, tty)
        except SegmentError as exc:  # the file shrank or changed under us: say so, no traceback
            print(f"catzilla-mp top: {exc}", file=sys.stderr)
            return 1


def sampler_warm(view: SafeSegmentView, sampler: Sampler) -> None:
    """Take a first CPU sample, so a single frame shows real CPU % rather than zeros."""
    for w in view.workers():
        if w.alive:
            sampler.sample(w.pid)
    time.sleep(0.2)


def _live(view: SafeSegmentView, sampler: Sampler, interval: float, out: IO[str], color: bool,
          tty: bool) -> int:
    keys = _Keys() if tty and sys.stdin.isatty() else None
    out.write(HIDE_CURSOR if tty else "")
    try:
        while True:
            width = os.get_terminal_size(out.fileno()).columns if tty else 200
            frame = render(view, sampler, color=color, width=width)
            out.write((CLEAR if tty else "") + frame + ("" if tty else "\n"))
            out.flush()
            if not view.exists() or not view.owner_alive():
                out.write("the engine has stopped\n")
                return 0
            if keys is not None:
                if keys.wait_quit(interval):
                    return 0
            else:
                time.sleep(interval)
    except KeyboardInterrupt:
        return 0
    finally:
        if keys is not None:
            keys.restore()
        out.write(SHOW_CURSOR if tty else "")
        out.flush()


class _Keys:
    """Single keypresses from the terminal (q quits) without echo, restored on exit."""

    def __init__(self) -> None:
        import termios
        import tty

        self.fd = sys.stdin.fileno()
        self._saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)

    def wait_quit(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return False
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready and os.read(self.fd, 32).lower().startswith(b"q"):
                return True

    def restore(self) -> None:
        import termios

        termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
