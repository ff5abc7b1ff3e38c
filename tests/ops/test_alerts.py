"""The alerts: valid rules, each with a runbook section in docs/operations.md, each unit-tested
with ``promtool test rules`` (fires when it should, quiet when it should not)."""

from __future__ import annotations

import re
from typing import Any

import yaml

from ._tools import CHART, HELM_TESTS, ROOT, run, tool

RULES = CHART / "files" / "alerts.yaml"
RULE_TESTS = HELM_TESTS / "alerts.test.yaml"


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    found = set()
    for heading in re.findall(r"^#+\s+(.+?)\s*$", markdown, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def test_rules_are_valid() -> None:
    out = run(tool("promtool"), "check", "rules", RULES).stdout
    assert f"SUCCESS: {len(alerts())} rules found" in out


def test_every_alert_fires_and_stays_quiet_in_promtool_unit_tests() -> None:
    result = run(tool("promtool"), "test", "rules", RULE_TESTS, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    cases: dict[str, list[bool]] = {}
    for test in tests:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(bool(case["exp_alerts"]))
    for rule in alerts():
        outcomes = cases.get(rule["alert"], [])
        assert True in outcomes, f"{rule['alert']}: no test where it fires"
        # exp_alerts is exact: a firing case also checks that the series beside it stay quiet;
        # a case expecting nothing checks the alert waits for its `for` or its threshold
        assert False in outcomes, f"{rule['alert']}: no test where it stays quiet"


def test_a_broken_rule_fails_the_unit_tests(tmp_path: Any) -> None:
    """The unit tests can fail: raise one threshold out of reach and they must."""
    broken = RULES.read_text().replace("> 600", "> 60000")
    assert broken != RULES.read_text()
    (tmp_path / "alerts.yaml").write_text(broken)
    test = RULE_TESTS.read_text().replace("../sealedbus-kds/files/alerts.yaml", "alerts.yaml")
    (tmp_path / "alerts.test.yaml").write_text(test)
    result = run(tool("promtool"), "test", "rules", tmp_path / "alerts.test.yaml", check=False)
    assert result.returncode != 0
    assert "SealedbusKeyDestructionOverdue" in result.stdout + result.stderr


def test_every_alert_has_a_runbook_section_in_operations_md() -> None:
    sections = anchors((ROOT / "docs" / "operations.md").read_text())
    for rule in alerts():
        url = rule["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page == "docs/operations.md", url
        assert anchor in sections, f"{rule['alert']}: no section #{anchor} in docs/operations.md"
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
