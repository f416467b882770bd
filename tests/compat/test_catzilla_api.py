"""Issue 13, items 1, 3, 4, 5, 6: a Catzilla app switches by one line (real Catzilla 0.2.3 types)."""
from __future__ import annotations

import enum
import inspect

import pytest

import compat_jobs as jobs

cz = pytest.importorskip("catzilla.background_tasks")

import catzilla_mp  # noqa: E402
from catzilla_mp import BackgroundTaskApp, BackgroundTasks, TaskPriority, UnknownTaskError  # noqa: E402
from catzilla_mp.app import create_task_system  # noqa: E402


class App(BackgroundTaskApp):
    pass


@pytest.fixture
def app():
    a = App()
    yield a
    a.disable_background_tasks(wait_for_completion=False, timeout=5)


def small(**kw):
    return dict(workers=1, memory_pool_mb=16, queue_size=128, **kw)


# -- item 1: Catzilla's own TaskPriority ------------------------------------------------

def test_issue_13_1_catzillas_task_priority_is_accepted_by_add_task_and_task(app):
    app.enable_background_tasks(**small())
    result = app.add_task(jobs.add, 1, 2, priority=cz.TaskPriority.HIGH)
    assert result.priority is TaskPriority.HIGH
    assert result.wait(30) == 3

    @app.task(priority=cz.TaskPriority.CRITICAL)
    def decorated(x):
        return x

    assert decorated._task_config.priority is TaskPriority.CRITICAL


def test_issue_13_1_any_enum_matching_by_name_or_value_and_strings_are_accepted():
    class ByName(enum.Enum):
        LOW = "whatever"

    class ByValue(enum.IntEnum):
        URGENT = 1

    assert TaskPriority.parse(ByName.LOW) is TaskPriority.LOW
    assert TaskPriority.parse(ByValue.URGENT) is TaskPriority.HIGH
    assert TaskPriority.parse("critical") is TaskPriority.CRITICAL
    assert TaskPriority.parse(cz.TaskPriority.NORMAL) is TaskPriority.NORMAL

    class Wrong(enum.Enum):
        NOPE = 9

    with pytest.raises(ValueError, match="unknown priority"):
        TaskPriority.parse(Wrong.NOPE)


# -- item 3: the bare decorator -------------------------------------------------------------

def test_issue_13_3_app_task_works_bare_empty_and_with_options(app):
    app.enable_background_tasks(**small())

    @app.task
    def bare(x):
        return x + 1

    @app.task()
    def empty(x):
        return x + 2

    @app.task(priority=TaskPriority.LOW, max_retries=0)
    def configured(x):
        return x + 3

    assert bare(1) == 2 and empty(1) == 3 and configured(1) == 4  # still plain functions
    assert bare._task_config.priority is TaskPriority.NORMAL
    assert configured._task_config.priority is TaskPriority.LOW
    assert app.add_task(jobs.square, 4).wait(30) == 16
    assert bare.submit(1).wait(30) == 2


def test_issue_13_3_engine_task_and_module_task_work_bare(make_engine):
    engine = make_engine()

    @engine.task
    def bare(x):
        return x

    assert bare._is_background_task

    system = catzilla_mp.get_global_task_system()
    try:
        @catzilla_mp.task
        def module_bare(x):
            return x

        assert module_bare._is_background_task
    finally:
        system.shutdown(wait_for_completion=False, timeout=5)


# -- item 4: the framework's documented spellings ------------------------------------------

def test_issue_13_4_enable_background_tasks_takes_initial_workers_and_every_catzilla_option(app):
    app.enable_background_tasks(initial_workers=1, max_workers=2, queue_size=128,
                                min_workers=1, enable_auto_scaling=False, memory_pool_mb=16,
                                enable_c_compilation=True, enable_profiling=False)
    assert app.tasks.workers == 1 and app.tasks.max_workers == 2
    assert app.add_task(jobs.add, 2, 2).wait(30) == 4


def test_issue_13_4_workers_and_initial_workers_that_disagree_are_an_error(app):
    with pytest.raises(ValueError, match="initial_workers"):
        app.enable_background_tasks(workers=2, initial_workers=3, **{"memory_pool_mb": 16})
    assert app.tasks is None


def test_issue_13_4_create_task_system_takes_initial_workers():
    engine = create_task_system(initial_workers=1, memory_pool_mb=16, queue_size=64)
    try:
        assert engine.workers == 1
    finally:
        engine.shutdown(wait_for_completion=False, timeout=5)


# -- item 5: get_task_result with the TaskResult itself ---------------------------------------

def test_issue_13_5_get_task_result_accepts_the_task_result_or_its_id(app):
    app.enable_background_tasks(**small())
    result = app.add_task(jobs.add, 5, 5)
    assert app.get_task_result(result) is result
    assert app.get_task_result(result.task_id) is result
    assert app.get_task_result(result).wait(30) == 10
    with pytest.raises(UnknownTaskError):
        app.get_task_result("task_nope")


# -- item 6: every public name of catzilla.background_tasks -------------------------------------

def _public_names() -> set[str]:
    import typing

    names = {n for n, v in vars(cz).items()
             if not n.startswith("_") and getattr(v, "__module__", cz.__name__) == cz.__name__
             and not inspect.ismodule(v) and not isinstance(v, typing.TypeVar)}
    return names | {"HAS_C_EXTENSION"}


def test_issue_13_6_every_public_name_of_catzilla_background_tasks_is_importable():
    missing = [n for n in sorted(_public_names()) if not hasattr(catzilla_mp, n)]
    assert missing == []
    from catzilla_mp import TaskCompiler  # noqa: F401 - the import itself is the test


def _params(fn) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("path", [
    "BackgroundTasks.__init__", "BackgroundTasks.add_task", "BackgroundTasks.task",
    "BackgroundTasks.shutdown", "TaskResult.__init__", "TaskResult.wait",
    "TaskResult.add_callback", "TaskFuture.__init__", "TaskCompiler.can_compile_to_c",
    "TaskCompiler.compile_task", "create_task_system", "add_task", "task",
])
def test_issue_13_6_signatures_take_every_catzilla_argument_in_its_place(path):
    def resolve(root):
        obj = root
        for part in path.split("."):
            obj = getattr(obj, part)
        return obj

    theirs = [p for p in _params(resolve(cz)) if p[1] not in (inspect.Parameter.VAR_KEYWORD,)]
    ours = _params(resolve(catzilla_mp))
    names = [p[0] for p in ours]
    positional = [p[0] for p in ours if p[1] in (inspect.Parameter.POSITIONAL_ONLY,
                                                 inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for name, kind, default in theirs:
        if name in ("self",) or kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        if kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:
            assert name in positional, f"{path}: {name} is not positional here"
            assert positional.index(name) == [p[0] for p in theirs if p[1] is kind].index(name)
        else:
            assert name in names or any(p[1] is inspect.Parameter.VAR_KEYWORD for p in ours)


def test_issue_13_6_task_result_is_constructible_with_catzillas_two_arguments(engine):
    result = catzilla_mp.TaskResult("task_x", engine)
    assert result.task_id == "task_x"
    assert result.is_ready() is False
    assert result.priority is TaskPriority.NORMAL


def test_issue_17_task_compiler_answers_honestly_whether_numba_can_try():
    import importlib.util

    compiler = catzilla_mp.TaskCompiler()
    has_numba = importlib.util.find_spec("numba") is not None
    assert compiler.can_compile_to_c(jobs.add) is has_numba
    assert compiler.can_compile_to_c(len) is False  # a builtin: nothing to compile
    compiled = compiler.compile_task(jobs.add)
    assert (compiled is not None) is has_numba
    if compiled is not None:
        assert compiled.fn is jobs.add and compiler.compile_task(jobs.add) is compiled
    assert compiler.compile_task(len) is None
    assert isinstance(catzilla_mp.HAS_C_EXTENSION, bool)


def test_catzilla_docs_on_success_and_on_error_callbacks_run(engine):
    seen = []
    ok = engine.add_task(jobs.add, 1, 1)
    ok.on_success(lambda v: seen.append(("ok", v)))
    ok.on_error(lambda e: seen.append(("err", e)))
    ok.wait(30)
    bad = engine.add_task(jobs.fail_with, "value", max_retries=0)
    bad.on_error(lambda e: seen.append(("err", type(e))))
    with pytest.raises(ValueError):
        bad.wait(30)
    assert ("ok", 2) in seen and ("err", ValueError) in seen and len(seen) == 2


def test_issue_13_1_3_4_5_on_catzilla_mp_catzilla_the_framework_app_class():
    """The one-line switch: ``from catzilla_mp import Catzilla``, then Catzilla's own spellings."""
    from catzilla_mp import Catzilla

    app = Catzilla(show_banner=False)
    try:
        app.enable_background_tasks(initial_workers=1, max_workers=2, queue_size=64,
                                    memory_pool_mb=16)

        @app.task
        def double(x):
            return 2 * x

        result = app.add_task(jobs.add, 20, 1, priority=cz.TaskPriority.HIGH)
        assert app.get_task_result(result).wait(30) == 21
        assert double.submit(4).wait(30) == 8
    finally:
        app.disable_background_tasks(wait_for_completion=False, timeout=5)


def test_max_workers_1_alone_gives_one_worker_as_catzillas_defaults_allow():
    """Catzilla's enable_background_tasks(max_workers=1) keeps its default
    min_workers=2; that must give a one-worker engine, not a ValueError, and
    the CPU count must not start more workers than the cap."""
    engine = BackgroundTasks(max_workers=1, memory_pool_mb=8)
    try:
        o = engine.options
        assert (o.workers, o.min_workers, o.max_workers) == (1, 1, 1)
        assert engine.add_task(pow, 2, 5).wait(60) == 32
    finally:
        engine.shutdown()
    with pytest.raises(ValueError, match="min_workers \\(3\\) is above max_workers \\(1\\)"):
        BackgroundTasks(min_workers=3, max_workers=1, memory_pool_mb=8)
