"""Every Python block of docs/native-tasks.md runs as written (as tests/test_readme.py does for the README)."""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

from native_jobs import needs_numba

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "native-tasks.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_the_doc_shows_every_form():
    text = "\n".join(BLOCKS)
    for form in ("compile_to_c=True", "@engine.task(compile_to_c=True)", "compile_c(",
                 "NativeCompileError", "native_threads_per_worker", "enable_c_compilation=False"):
        assert form in text


_RUNNER = """
import sys, traceback
blocks = sys.argv[1:]
for i, path in enumerate(blocks):
    code = open(path).read()
    try:
        exec(compile(code, path, "exec"), {"__name__": "__main__"})
    except BaseException:
        traceback.print_exc()
        sys.exit(f"block {i} failed")
"""


@needs_numba
def test_every_doc_example_runs(tmp_path):
    # one interpreter runs the blocks in turn, each in a namespace of its own
    # (each block starts its own engine): the imports are paid once
    paths = []
    for index, block in enumerate(BLOCKS):
        script = tmp_path / f"native_tasks_{index}.py"
        script.write_text(block)
        paths.append(str(script))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
               CATZILLA_MP_NATIVE_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-c", _RUNNER, *paths], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
