"""Issue 13, item 17: py.typed is shipped and a type checker accepts the README's examples."""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

import catzilla_mp

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

SNIPPET = '''
from catzilla_mp import BackgroundTaskApp, BackgroundTasks, TaskPriority, TaskResult


class App(BackgroundTaskApp):
    pass


app = App()


@app.task
def bare(x: int) -> int:
    return x


@app.task(priority="high", retry_backoff="linear", retry_on=(OSError,))
def configured(name: str) -> str:
    return name


r: TaskResult[int] = bare.submit(1)
s: TaskResult[str] = configured.submit("a")
n: int = bare(2)
with BackgroundTasks(workers=1) as engine:
    squares = list(engine.imap(abs, [-1, -2], max_in_flight=2))
    engine.add_task(abs, -1, priority=TaskPriority.LOW, memory_limit_mb=50)
'''


def test_issue_13_17_the_package_ships_py_typed():
    assert (pathlib.Path(catzilla_mp.__file__).parent / "py.typed").is_file()


def _mypy(tmp_path: pathlib.Path, sources: dict[str, str]) -> subprocess.CompletedProcess:
    pytest.importorskip("mypy")
    for name, text in sources.items():
        (tmp_path / name).write_text(text)
    env = dict(os.environ, MYPYPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", os.devnull,
         "--follow-imports=silent", "--ignore-missing-imports", "--python-version", "3.11",
         *sources], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_issue_13_17_mypy_accepts_the_readme_examples(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    proc = _mypy(tmp_path, {f"readme_{i}.py": b for i, b in enumerate(blocks)})
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_issue_13_17_mypy_accepts_the_compat_api(tmp_path):
    proc = _mypy(tmp_path, {"snippet.py": SNIPPET})
    assert proc.returncode == 0, proc.stdout[-3000:]
