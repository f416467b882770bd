"""The worker process's entry point: ``python -m catzilla_mp.workers '<json>'``.

The supervisor (backends/process/supervisor.py) starts every worker with
this command line, named in the design card; the worker loop itself lives in
backends/process/worker.py.
"""
from __future__ import annotations

import sys

from .backends.process.worker import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
