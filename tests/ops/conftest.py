from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._stack import Stack, Traffic, running_stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Traffic]]:
    with running_stack(tmp_path_factory.mktemp("stack")) as (running, _kds, traffic):
        yield running, traffic
        assert traffic.errors == [], traffic.errors
