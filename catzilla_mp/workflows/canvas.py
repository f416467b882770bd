"""The canvas: signatures, chain, group and chord, as Celery users know them.

    sig(fn, *args, **kwargs)            a call not yet made; .set(priority=..., ...) adds add_task options
    chain(s1, s2, s3).apply(engine)     s1 runs; its result is s2's first argument; s2's is s3's
                                        -> the last step's TaskResult
    group(s1, s2).apply(engine)         all at once -> GroupResult (a list of TaskResults)
    chord(group(s1, s2), cb).apply(engine)
                                        cb([r1, r2]) once every member completed -> cb's TaskResult

    apply ──► engine.add_task(step, depends_on=Dependencies(previous, feed)) for every step
              (dependencies.py holds each step until its parents complete, then queues it)

A group inside a chain fans out and back in: ``chain(a, group(b, c), d)``
gives a's result to b and to c, and d gets ``[b's, c's]``.

A failed or cancelled step fails (DependencyFailedError) or cancels
(DependencyCancelledError) every step after it, each error naming the step
before it. Cancelling the chain's last TaskResult cancels only that step.

Hand-off: in process mode each later step is stored waiting in a slot of
its own, and the worker that finishes a step feeds its result to the next
and queues it, without the app (worker-to-worker, issue 15: see
dependencies.py and native/slots.c). Where that is not possible (other
backends, groups and chords, a result too big for the pool;
docs/workflows.md lists the cases) the result goes through the app: the
collector unpickles it and the next step is queued from the engine's
callback thread (pickled again). bench/workflows.py measures both.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Union

from ..results import TaskResult
from .dependencies import Dependencies

#: add_task's options a signature may carry (the rest of .set()'s keywords are refused).
OPTIONS = frozenset({
    "priority", "delay_ms", "max_retries", "timeout_ms", "retry_backoff", "retry_on", "retry_if",
    "memory_limit_mb", "enable_profiling", "job_id", "unique_for", "rate_limit",
})


class Signature:
    """A task call not yet made: ``fn(*args, **kwargs)`` with add_task options.

    Made by ``sig(fn, *args, **kwargs)``; immutable (``set`` returns a new one).
    """

    __slots__ = ("fn", "args", "kwargs", "options")

    def __init__(self, fn: Callable, args: tuple = (), kwargs: Optional[dict] = None,
                 options: Optional[dict] = None) -> None:
        if not callable(fn):
            raise TypeError(f"a signature wraps a callable, not {type(fn).__name__}")
        self.fn = fn
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.options = dict(options or {})

    def set(self, **options: Any) -> "Signature":
        """A copy with add_task options (priority, timeout_ms, max_retries, rate_limit, ...).

        Raises:
            TypeError: a name that is not an add_task option.
        """
        unknown = set(options) - OPTIONS
        if unknown:
            raise TypeError(f"not add_task options: {', '.join(sorted(unknown))} "
                            f"(options: {', '.join(sorted(OPTIONS))})")
        return Signature(self.fn, self.args, self.kwargs, {**self.options, **options})

    def apply(self, engine: Any, *, depends_on: Any = None) -> TaskResult:
        """Submit the call to ``engine`` (after ``depends_on``, if given); its TaskResult."""
        extra = {} if depends_on is None else {"depends_on": depends_on}
        return engine.add_task(self.fn, *self.args, **self.options, **extra, **self.kwargs)

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", repr(self.fn))
        return f"sig({name}, *{self.args!r}, **{self.kwargs!r})"


def sig(fn: Callable, *args: Any, **kwargs: Any) -> Signature:
    """``fn(*args, **kwargs)`` as a Signature, to put in a chain, group or chord.

    In a chain, the previous step's result comes first: ``chain(sig(f, 1),
    sig(g, 2))`` runs ``g(f(1), 2)``.
    """
    return Signature(fn, args, kwargs)


StepLike = Union[Signature, "Group", Callable]


def _as_step(step: Any) -> Union[Signature, "Group"]:
    if isinstance(step, (Signature, Group)):
        return step
    if callable(step):
        return Signature(step)
    raise TypeError(f"a canvas step is a sig(...), a group(...) or a callable, "
                    f"not {type(step).__name__}")


class GroupResult(list):
    """The TaskResults of a group, in the group's order."""

    def wait(self, timeout: Optional[float] = None) -> list:
        """Every member's result, in order (raises the first failure met, in order).

        Args:
            timeout: seconds for each member's wait.
        """
        return [r.wait(timeout) for r in self]

    def done(self) -> bool:
        return all(r.done() for r in self)

    def cancel(self) -> int:
        """Cancel the members not yet started; how many were."""
        return sum(1 for r in self if r.cancel())


class Group:
    """Signatures run side by side; ``apply`` returns a GroupResult."""

    def __init__(self, steps: Iterable[Any]) -> None:
        self.steps = [_as_step(s) for s in steps]
        if not self.steps:
            raise ValueError("a group needs at least one signature")
        if any(isinstance(s, Group) for s in self.steps):
            raise TypeError("a group holds signatures, not groups (flatten them)")

    def apply(self, engine: Any, *, depends_on: Any = None) -> GroupResult:
        return GroupResult(s.apply(engine, depends_on=depends_on) for s in self.steps)


def group(*steps: Any) -> Group:
    """Signatures (or one iterable of them) to run side by side."""
    if len(steps) == 1 and not isinstance(steps[0], (Signature, Group)) \
            and not callable(steps[0]):
        steps = tuple(steps[0])
    return Group(steps)


class Chain:
    """Steps run one after another, each given the previous one's result."""

    def __init__(self, steps: Iterable[Any]) -> None:
        self.steps = [_as_step(s) for s in steps]
        if not self.steps:
            raise ValueError("a chain needs at least one step")

    def apply(self, engine: Any, *, depends_on: Any = None) -> Union[TaskResult, GroupResult]:
        """Submit every step (the first at once, the rest held); the last step's result."""
        prev: Any = None
        for i, step in enumerate(self.steps):
            deps = depends_on if i == 0 else _feeding(prev)
            prev = step.apply(engine, depends_on=deps)
        return prev


def _feeding(prev: Union[TaskResult, GroupResult]) -> Dependencies:
    if isinstance(prev, GroupResult):
        return Dependencies(prev, feed="list")
    return Dependencies([prev], feed="first")


def chain(*steps: Any) -> Chain:
    """``chain(a, b, c)``: a, then b(a's result), then c(b's result)."""
    return Chain(steps)


class Chord:
    """A group, then a callback given the list of the group's results."""

    def __init__(self, header: Any, body: Any) -> None:
        self.header = header if isinstance(header, Group) else group(header)
        self.body = _as_step(body)
        if isinstance(self.body, Group):
            raise TypeError("a chord's callback is one signature")

    def apply(self, engine: Any, *, depends_on: Any = None) -> TaskResult:
        results = self.header.apply(engine, depends_on=depends_on)
        return self.body.apply(engine, depends_on=Dependencies(results, feed="list"))


def chord(header: Any, body: Any) -> Chord:
    """``chord(group(a, b), cb)``: cb([a's result, b's result]) once both completed."""
    return Chord(header, body)
