"""Fixtures for every test folder: which core (pure Python or native) a test runs on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sealedbus.core import backend

CORES = [
    pytest.param("pure"),
    pytest.param(
        "native",
        marks=pytest.mark.skipif(backend.NATIVE is None, reason="native core not built"),
    ),
]


@pytest.fixture(params=CORES)
def each_core(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs the test once per core; Sealers and Openers made inside use that core."""
    with backend.using(request.param):
        yield request.param
