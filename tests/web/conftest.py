"""Fixtures of the web tests: a real server per test (see webservers.py)."""
from __future__ import annotations

from typing import Iterator

import pytest

pytest.importorskip("httpx")

from webservers import Server, start_server  # noqa: E402


@pytest.fixture(params=["catzilla", "fastapi"])
def server(request, tmp_path) -> Iterator[Server]:
    srv = start_server(request.param, tmp_path)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def make_server(tmp_path):
    """``make_server(kind, mode=..., debug=...)``; every server is stopped at teardown."""
    started: list[Server] = []

    def make(kind: str, **kw) -> Server:
        srv = start_server(kind, tmp_path, **kw)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
def hostile(tmp_path):
    """``hostile(kind, **settings)``: hostile_app.py on a real server, stopped at teardown."""
    from webservers import start_hostile

    started: list[Server] = []

    def make(kind: str, wait: bool = True, **settings) -> Server:
        srv = start_hostile(kind, tmp_path, wait=wait, **settings)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()
