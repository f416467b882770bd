"""The process backend: worker processes over one shared-memory segment.

    payloads.py    Payloads: a task's bytes in a slot, an arena chunk or a segment of its own
    worker.py      the worker loop (forked by the zygote, or run as ``python -m catzilla_mp.workers``)
    zygote.py      Zygote: a preloaded process that forks workers on request
    supervisor.py  Supervisor: starts, reaps, scales and kills the workers
    backend.py     ProcessBackend: submit, collect, retry parking, crash recovery

Imports point down that list: the backend makes the supervisor, the
supervisor starts workers, both use payloads; none of them imports the
lifecycle or the API (the backend is given a TaskHost).
"""
