"""Fixtures for the KDS tests: an in-process KDS on SQLite with a hand-moved clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ._harness import Kds, make_kds, settle


@pytest.fixture
def kds(tmp_path: Path) -> Iterator[Kds]:
    k = make_kds(tmp_path)
    yield k
    settle()  # background refreshes a test started end before the KDS they ask goes
    k.http.close()
    k.store.dispose()
