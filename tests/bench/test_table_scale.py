"""``bench.table_scale`` at a small size (CI never runs the 50 M one): it fills, measures
every figure at each size, and drops its database. The shape of the results, not timings."""

from __future__ import annotations

from bench import table_scale


def test_a_small_run_measures_everything_at_each_size(postgres_server_url, monkeypatch):
    monkeypatch.setenv("TEST_DATABASE_URL", postgres_server_url)  # the bench's database on this run's server
    results = table_scale.run([0, 20_000], runs=3, record_seconds=0.5)

    assert [result["size"] for result in results] == [0, 20_000]
    empty, filled = results
    assert filled["rows"] >= 20_000
    for result in results:
        for recording in ("recording", "recording_without_roll_up"):
            assert result[recording]["events_per_second"] > 0
        assert result["status_lookup"]["runs"] == 3
        for measure in ("org_month", "org_month_from_rows"):
            assert {"ungrouped", "by_model_day", "org_month_rows"} <= set(result[measure])
        assert set(result["sweep"]) >= {"flag_for_reconciliation", "shards_waiting", "stand_down_work_waiting", "reporter_read"}
        assert result["reconcile_db"]["p99_ms"] > 0
        assert result["migration"]["add_nullable_column_ms"] > 0
    # The roll-ups and the rows agree on the heavy organization's month.
    assert filled["org_month"]["org_month_rows"] == filled["org_month_from_rows"]["org_month_rows"] > 0
    assert filled["org_month"]["by_model_day"]["groups"] == filled["org_month_from_rows"]["by_model_day"]["groups"]
    assert empty["usage_failed"]["failed_rows"] == 0 and filled["usage_failed"]["failed_rows"] == table_scale.FAILED_ROWS
