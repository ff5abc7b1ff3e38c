"""Fixtures for the key-service semantics suite: every test runs against each back end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clock import Clock

from ._backends import BACKENDS, Backend, make_backend


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=BACKENDS)
def ks(request: pytest.FixtureRequest, clock: Clock, tmp_path: Path) -> Iterator[Backend]:
    backend, close = make_backend(request.param, clock, tmp_path)
    yield backend
    close()
