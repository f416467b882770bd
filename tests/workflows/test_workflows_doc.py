"""Every Python code block of docs/workflows.md runs as written (as tests/test_readme.py does)."""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "workflows.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_the_workflows_doc_has_an_example_per_feature():
    text = "\n".join(BLOCKS)
    for feature in ("depends_on=", "chain(", "chord(", "job_id=", "rate_limit=", "periodic(",
                    "/ws"):
        assert feature in text, feature


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_workflows_doc_example_runs(index, tmp_path):
    script = tmp_path / f"workflows_{index}.py"
    script.write_text(BLOCKS[index])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
