"""catzilla_mp.Catzilla in-process: Catzilla's task API, backed by catzilla_mp."""
from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("catzilla")

import catzilla  # noqa: E402

from catzilla_mp import Catzilla, TaskPriority, TaskResult  # noqa: E402
from catzilla_mp.app import ALREADY_ENABLED, NOT_ENABLED  # noqa: E402
from catzilla_mp.records import EngineStats  # noqa: E402


def double(x):
    return 2 * x


def _app() -> Catzilla:
    return Catzilla(production=True, show_banner=False, log_requests=False)


def test_it_is_a_catzilla_app_whose_task_methods_are_catzilla_mps():
    app = _app()
    assert isinstance(app, catzilla.Catzilla)
    for name in ("enable_background_tasks", "add_task", "task", "get_task_stats"):
        assert getattr(Catzilla, name) is not getattr(catzilla.Catzilla, name)
    # Catzilla's messages before enabling
    with pytest.raises(RuntimeError, match="not enabled"):
        app.add_task(pow, 2, 3)
    with pytest.raises(RuntimeError, match="not enabled"):
        app.get_task_stats()
    with pytest.raises(RuntimeError) as info:
        app.task()
    assert str(info.value) == NOT_ENABLED


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_enable_then_add_task_task_and_stats_work_in_both_modes(mode):
    app = _app()
    app.enable_background_tasks(workers=1, min_workers=1, mode=mode)
    try:
        with pytest.raises(RuntimeError) as info:
            app.enable_background_tasks(mode=mode)
        assert str(info.value) == ALREADY_ENABLED
        assert app._task_system_enabled and app.tasks is not None
        r = app.add_task(pow, 2, 10, priority=TaskPriority.HIGH, delay_ms=0, max_retries=0,
                         timeout_ms=5000, compile_to_c=None)
        assert isinstance(r, TaskResult)
        assert r.wait(timeout=30) == 1024
        assert app.get_task_result(r.task_id) is r
        assert r.meta is None  # submitted outside a request: no request tag

        # module-level: a decorated local function cannot be pickled by value
        # (the engine's decorator hangs a closure over itself on it)
        app.task(priority=TaskPriority.LOW, max_retries=0)(double)
        assert double._task_config.priority is TaskPriority.LOW
        assert app.add_task(double, 21).wait(timeout=30) == 42
        assert isinstance(app.get_task_stats(), EngineStats)
    finally:
        app.disable_background_tasks()
    assert app.tasks is None and not app._task_system_enabled


def test_without_catzilla_the_import_error_names_the_extra():
    code = ("import sys; sys.modules['catzilla'] = None\n"
            "try:\n    from catzilla_mp import Catzilla\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert 'pip install -e ".[catzilla]"' in out.stdout, out


def test_issue_13_2_enable_gives_an_existing_catzilla_app_the_engine():
    import catzilla_mp

    # Given an app made with the framework's own class
    app = catzilla.Catzilla(production=True, show_banner=False, log_requests=False)

    @app.get("/hello")
    def hello(request):
        return {"hi": True}

    # When catzilla_mp is enabled on it
    assert catzilla_mp.enable(app, mode="thread", workers=1) is app
    try:
        # Then its task API is catzilla_mp's, its own routes are kept, and it is still a Catzilla app
        assert isinstance(app, catzilla.Catzilla) and type(app).__name__ == "Catzilla"
        assert app.add_task(pow, 2, 5).wait(timeout=30) == 32
        assert isinstance(app.get_task_stats(), EngineStats)
        assert [r["path"] for r in app.routes()] == ["/hello"]   # engine routes come at listen
        app.install_task_routes()
        assert "/tasks/{task_id}" in [r["path"] for r in app.routes()]
        with pytest.raises(RuntimeError, match="already enabled"):
            catzilla_mp.enable(app, mode="thread")
    finally:
        app.disable_background_tasks()
    with pytest.raises(TypeError, match="catzilla.Catzilla"):
        catzilla_mp.enable(object())


def test_issue_13_7_the_engines_routes_wait_for_startup_and_a_clash_names_both():
    from catzilla_mp import RouteConflictError

    app = _app()

    @app.get("/tasks/stats")
    def my_stats(request):
        return {}

    assert not any(r["path"].startswith("/tasks/{") for r in app.routes())
    with pytest.raises(RouteConflictError, match=r"/tasks/stats \(czmp_task_stats\).*my_stats"):
        app.install_task_routes()
    assert [r["path"] for r in app.routes()] == ["/tasks/stats"]   # nothing half-added


def test_issue_13_2_enable_on_a_catzilla_mp_app_refuses_options_it_would_ignore():
    import catzilla_mp

    app = _app()
    with pytest.raises(TypeError, match="authorize"):
        catzilla_mp.enable(app, mode="thread", authorize=lambda r: True)
    assert app.tasks is None
    catzilla_mp.enable(app, mode="thread", workers=1)
    try:
        assert app.add_task(pow, 3, 2).wait(timeout=30) == 9
    finally:
        app.disable_background_tasks()
