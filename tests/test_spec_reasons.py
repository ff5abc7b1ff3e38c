"""SPEC.md section 8 (the reason table), the Reason enum and the opening vectors agree: every
reason has a refusal vector, and no vector or code uses a reason the table lacks."""

from __future__ import annotations

import re
from pathlib import Path

from sealedbus.errors import Reason
from tests.core._support import REASON_CLASS
from tests.vectors import runner

SPEC = Path(__file__).parent.parent / "SPEC.md"


def spec_reasons() -> dict[str, str]:
    """``reason -> class`` from the table of SPEC.md's "Error reasons" section."""
    text = SPEC.read_text()
    section = re.search(r"^## \d+\. Error reasons$(.*?)^## ", text, re.S | re.M)
    assert section is not None, "SPEC.md has no '## N. Error reasons' section"
    rows = re.findall(r"^\| `([a-z_]+)` \| (\w+) \|", section.group(1), re.M)
    assert rows, "no reason rows in the table"
    table = dict(rows)
    assert len(table) == len(rows), "a reason is listed twice"
    return table


def test_spec_table_matches_the_code() -> None:
    table = spec_reasons()
    assert set(table) == {r.value for r in Reason}
    for reason, cls in table.items():
        assert REASON_CLASS[Reason(reason)].__name__ == cls, reason


def test_every_reason_has_a_refusal_vector() -> None:
    used = {v["reason"] for v in runner.load("negative.json")["vectors"]}
    missing = set(spec_reasons()) - used
    assert not missing, f"reasons without a negative vector: {sorted(missing)}"


def test_every_vector_reason_is_in_the_table() -> None:
    table = spec_reasons()
    unknown = {
        v["reason"]
        for v in runner.load("negative.json")["vectors"]
        if v["reason"] is not None and v["reason"] not in table
    }
    assert not unknown, f"vectors use reasons SPEC.md does not list: {sorted(unknown)}"
