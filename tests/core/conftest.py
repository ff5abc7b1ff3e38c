"""Fixtures for tests/core: a hand-moved clock and a fresh world on it."""

from __future__ import annotations

import pytest

from tests.clock import Clock

from ._support import World, make_world


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def world(clock: Clock) -> World:
    return make_world(clock=clock)


@pytest.fixture(autouse=True)
def _on_each_core(each_core: str) -> str:
    """Every core test runs on the pure and on the native core (tests/conftest.py)."""
    return each_core
