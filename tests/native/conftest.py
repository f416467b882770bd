"""Fixtures of the native tests: a fresh segment per test, always unlinked."""
from __future__ import annotations

import pytest

from catzilla_mp._core import Segment, SizeClass
from catzilla_mp.segment_janitor import new_segment_name

#: Small classes so tests can exhaust them; three classes to exercise spill.
DEFAULT_CLASSES = (SizeClass(256, 8), SizeClass(1024, 4), SizeClass(65536, 2))


@pytest.fixture
def make_segment():
    """``make_segment(**create_kwargs)`` -> a created Segment; unlinked and detached at teardown."""
    made = []

    def create(**kw):
        kw.setdefault("nslots", 16)
        kw.setdefault("nworkers", 4)
        kw.setdefault("nfuncs", 4)
        kw.setdefault("classes", DEFAULT_CLASSES)
        kw.setdefault("populate", False)
        seg = Segment.create(new_segment_name(), **kw)
        made.append(seg)
        return seg

    yield create
    for seg in made:
        seg.unlink()
        seg.detach()


@pytest.fixture
def seg(make_segment):
    return make_segment()
