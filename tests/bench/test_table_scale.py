"""``bench.table_scale`` at a small size (CI never runs the 50 M one): it fills, measures
every figure at each size, and drops its database. The shape of the results, not timings."""

from __future__ import annotations

import pytest

from bench import table_scale


@pytest.fixture(autouse=True)
def _bench_on_this_runs_server(postgres_server_url, monkeypatch):
    monkeypatch.setenv("TEST_DATABASE_URL", postgres_server_url)  # harness.database() creates its database there


def assert_measured(result: dict) -> None:
    for recording in ("recording", "recording_without_roll_up"):
        assert result[recording]["events_per_second"] > 0
    assert result["status_lookup"]["runs"] == 3
    for measure in ("org_month", "org_month_from_rows"):
        assert {"ungrouped", "by_model_day", "org_month_rows"} <= set(result[measure])
    assert set(result["sweep"]) >= {"flag_for_reconciliation", "shards_waiting", "stand_down_work_waiting", "reporter_read"}
    assert result["reconcile_db"]["p99_ms"] > 0
    assert result["migration"]["add_nullable_column_ms"] > 0


def assert_filled(result: dict, rows: int) -> None:
    assert result["rows"] >= rows
    # The roll-ups and the rows agree on the heavy organization's month.
    assert result["org_month"]["org_month_rows"] == result["org_month_from_rows"]["org_month_rows"] > 0
    assert result["org_month"]["by_model_day"]["groups"] == result["org_month_from_rows"]["by_model_day"]["groups"]
    assert result["usage_failed"]["failed_rows"] == table_scale.FAILED_ROWS


def test_a_small_run_measures_everything_at_each_size():
    results = table_scale.run([0, 20_000], runs=3, record_seconds=0.3)

    assert [result["size"] for result in results] == [0, 20_000]
    for result in results:
        assert_measured(result)
    assert results[0]["usage_failed"]["failed_rows"] == 0
    assert_filled(results[1], 20_000)
    assert "| status lookup p99, ms |" in table_scale.table(results)


def test_the_bulk_fill_leaves_the_indexes_and_the_roll_ups_as_inserting_does():
    [result] = table_scale.run([20_000], runs=3, record_seconds=0.3, bulk=True)

    assert_measured(result)
    assert_filled(result, 20_000)
