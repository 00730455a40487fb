"""The alerting rules (``deploy/prometheus/alerts.yml``): Prometheus accepts them
(``promtool check rules``), they pass their unit tests (``promtool test rules`` with
``alerts_test.yml``), and each alert is tested firing and has its runbook in
``docs/operations.md``.

promtool comes from Debian's ``prometheus`` package, which ``make test`` installs when it
is missing. Without it these tests fail rather than skip: an unchecked rules file is how
alerts silently stop working."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = RULES.with_name("alerts_test.yml")
RUNBOOKS = ROOT / "docs" / "operations.md"

# What an operator must be told about, whatever else the file holds.
REQUIRED_ALERTS = {
    "A700PipelineStuck",
    "A700FailedEvents",
    "A700WorkerGone",
    "A700StripeRefusing",
    "A700StripeMeterNotReady",
    "A700StripeErrorReports",
    "A700StripeErrorReportsBlind",
    "A700DependencyDown",
    "A700RedisReplicationLost",
    "A700RedisFailover",
    "A700CallersTurnedAway",
    "A700IntakeBacklogGrowing",
    "A700PoisonEventInIntake",
    "A700EventsAgingOut",
    "A700VoidPending",
    "A700ManualCreditUnacknowledged",
    "A700VoidFailed",
    "A700MetricsAbsent",
}


@pytest.fixture(scope="session", autouse=True)
def process_settings():
    """Overrides the suite's autouse fixture of this name (tests/conftest.py) for this
    module: these tests read files and run promtool; they need no PostgreSQL or Redis."""
    yield


def _promtool(*args: str) -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool is not installed. `make test` installs it (Debian's prometheus package: "
            "apt-get install prometheus); elsewhere install Prometheus's promtool."
        )
    result = subprocess.run(
        [promtool, *args], cwd=RULES.parent, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def _alerting_rules() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _anchors(markdown: str) -> set[str]:
    """The anchors of a Markdown document's headings, as GitHub makes them."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_prometheus_accepts_the_rules():
    assert "SUCCESS" in _promtool("check", "rules", RULES.name)


def test_the_rules_pass_their_unit_tests():
    assert "SUCCESS" in _promtool("test", "rules", RULE_TESTS.name)


def test_every_alert_an_operator_needs_is_there_and_is_shown_firing():
    names = {rule["alert"] for rule in _alerting_rules()}
    assert REQUIRED_ALERTS <= names, f"missing: {sorted(REQUIRED_ALERTS - names)}"
    tested = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing = {
        case["alertname"] for test in tested for case in test.get("alert_rule_test", []) if case.get("exp_alerts")
    }
    assert names <= firing, f"never tested firing: {sorted(names - firing)}"


def test_every_alert_says_what_it_is_and_links_its_runbook():
    anchors = _anchors(RUNBOOKS.read_text())
    for rule in _alerting_rules():
        annotations = rule.get("annotations", {})
        assert {"summary", "description", "runbook"} <= annotations.keys(), rule["alert"]
        assert rule.get("labels", {}).get("severity") in {"page", "ticket"}, rule["alert"]
        document, _, anchor = annotations["runbook"].partition("#")
        assert document == "docs/operations.md", rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in docs/operations.md"
