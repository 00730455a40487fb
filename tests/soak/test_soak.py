"""The soak run of issue 6, short: the whole service under load, every fault once, a share
of the events voided meanwhile, then the reconciliation. Nothing lost, nothing billed twice,
every void complete, every total equal to the unit.

``python -m soak`` runs as a subprocess, exactly as ``make soak`` runs it; its JSON report
is read back and checked here, so a failure names what went wrong.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from shared.queue import SWEEP_SECONDS
from soak.faults import FAULT_NAMES
from soak.voids import LATER_DELAY_SECONDS
from worker.tasks import STALE_AFTER

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LOAD_SECONDS = 45
# The longest a reporter backs off after Stripe refused (``maximum=`` in worker.reporting).
STRIPE_BACKOFF_CAP_SECONDS = 60
# Start and seeding (~20 s), the load, and a drain that may wait out a Stripe backoff and
# then the sweep (every SWEEP_SECONDS, for rows still recorded STALE_AFTER after their
# recording), three times over.
DRAIN_TIMEOUT_SECONDS = int(3 * (STRIPE_BACKOFF_CAP_SECONDS + SWEEP_SECONDS + STALE_AFTER.total_seconds()))
# The voids planned last are asked up to LATER_DELAY_SECONDS after the load.
RUN_TIMEOUT_SECONDS = 60 + LOAD_SECONDS + LATER_DELAY_SECONDS[1] + DRAIN_TIMEOUT_SECONDS + 60
# Whichever test runs first waits for the whole soak (a module fixture).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def soak_report(tmp_path_factory) -> dict:
    report_path = tmp_path_factory.mktemp("soak") / "report.json"
    process = subprocess.Popen(
        [
            sys.executable, "-m", "soak", "--duration", str(LOAD_SECONDS),
            "--drain-timeout", str(DRAIN_TIMEOUT_SECONDS), "--report-json", str(report_path),
        ],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        output, _ = process.communicate(timeout=RUN_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        # SIGINT, not SIGKILL: the soak stops everything it started before it exits.
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
        pytest.fail(f"the soak did not finish within {RUN_TIMEOUT_SECONDS}s\n{output[-6000:]}")
    assert process.returncode == 0, output[-8000:]
    return json.loads(report_path.read_text())


def test_every_fault_was_injected_under_load(soak_report):
    assert sorted(fault["name"] for fault in soak_report["faults"]) == sorted(FAULT_NAMES)
    assert [fault for fault in soak_report["faults"] if fault["error"]] == []
    # Each kind of request was sent, and the faults were felt at the edge.
    attempts = soak_report["requests"]["attempts_by_kind_and_outcome"]
    assert {"single", "batch", "replay_single", "replay_batch", "invalid", "conflict"} <= attempts.keys()
    outcomes = soak_report["requests"]["attempts_by_outcome"]
    assert outcomes.get("503", 0) > 0  # Redis down: nothing accepted, retried
    assert outcomes.get("connection refused", 0) > 0  # web restarting: retried


def test_nothing_was_lost_or_billed_twice(soak_report):
    assert soak_report["drain"]["drained"], soak_report["drain"]
    assert soak_report["problems"] == [] and soak_report["passed"]
    assert soak_report["lost"]["total"] == 0, soak_report["lost"]
    assert soak_report["duplicates"]["total"] == 0, soak_report["duplicates"]
    assert set(soak_report["unexpected"].values()) == {0}, soak_report["unexpected"]
    assert set(soak_report["unequal"].values()) == {0}, soak_report["unequal"]
    events = soak_report["events"]
    accepted = events["accepted"] + events["ambiguous_found_accepted"]
    assert accepted > 1000
    # Every accepted event one row; each reported (one meter event Stripe counts) or voided.
    assert events["rows_recorded"] == events["reported"] + events["voided"] == accepted
    assert events["stripe_meter_events_counted_of_rows"] == events["reported"]


def test_voids_under_load_all_complete_and_nothing_of_them_is_billed(soak_report):
    voids = soak_report["voids"]
    assert soak_report["void_drain"]["drained"], soak_report["void_drain"]
    assert voids["asked"] > 20, voids
    # Every kind of void was asked: at once and later, once, again, and twice at once.
    assert set(voids["asked_by_timing_and_kind"]) == {"soon", "later"}, voids["asked_by_timing_and_kind"]
    kinds = {kind for by_kind in voids["asked_by_timing_and_kind"].values() for kind in by_kind}
    assert kinds == {"single", "repeated", "concurrent"}, voids["asked_by_timing_and_kind"]
    # Voided straight after acceptance, some found the event still queued and waited.
    assert voids["queued_409_retried_after_retry_after"] > 0, voids
    # Every void the client was answered for is in the database, and complete.
    assert voids["in_database"] == voids["confirmed_by_an_answer"] == voids["asked"] == voids["completed"], voids
    assert voids["pending"] == voids["failed"] == 0, voids
    assert voids["rows_voided"] == voids["completed"] == soak_report["events"]["voided"]
    assert {"never_sent", "stripe_cancel"} <= voids["completed_by_method"].keys(), voids["completed_by_method"]
    assert set(voids["checks"].values()) == {0}, voids["checks"]
    for count in ("not_found_for_accepted_event", "given_up", "inconsistent_answers", "unexpected_answers"):
        assert voids[count] == 0, voids["examples"]


def test_every_organization_total_is_equal_in_the_database_at_stripe_and_in_the_ledger(soak_report):
    organizations = soak_report["organizations"]
    assert len(organizations) >= 2
    for organization in organizations:
        assert organization["events_expected"] > 0
        # Decimal strings with as many places as their sum needed: compared as numbers.
        assert Decimal(organization["agent700_cost_database"]) == Decimal(organization["agent700_cost_load_generator"]), organization
        # What Stripe bills (its summaries, and its meter events net of cancels and negative
        # events) is the database's reported rows and the ledger's events not voided.
        assert (
            organization["stripe_value_sum_stripe"]
            == organization["stripe_value_sum_stripe_meter_events"]
            == organization["stripe_value_sum_database"]
            == organization["stripe_value_sum_load_generator"]
        ), organization
        assert organization.get("stripe_summaries_read", True), organization
        assert organization["equal"]
    latency = soak_report["latency_seconds_acceptance_to_report"]
    # Reported rows, and voided rows that were reported before their void.
    assert latency["count"] >= soak_report["events"]["reported"]
    assert 0 <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
