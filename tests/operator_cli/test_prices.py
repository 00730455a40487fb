"""``prices list``, ``prices retire`` and ``prices set`` with an ``--effective-from`` in the
past: a row keeps the price it was recorded with, so the commands say (and refuse) when
recorded events are involved."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
import sqlalchemy as sa

from shared import db, models
from tests.support.billing import UsageRecords
from tests.support.operator_commands import assert_refused, count, created_id, price_args

JAN, MAR, JUN = (dt.datetime(2025, month, 1, tzinfo=dt.UTC) for month in (1, 3, 6))


def rfc3339(value: dt.datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def prices(settings) -> list[tuple[str, dt.datetime]]:
    with db.transaction(settings.database_url) as session:
        return session.execute(
            sa.select(models.TextModelCost.model_name, models.TextModelCost.effective_from).order_by(
                models.TextModelCost.model_name, models.TextModelCost.effective_from
            )
        ).all()


# --- prices list ------------------------------------------------------------------------


@pytest.fixture
def catalog(factory):
    """Two models: gpt-4o-mini from January, again from March and from June (in effect
    now); claude from March, open."""
    return {
        "mini_jan": factory.price("gpt-4o-mini", input_cost="0.00000015", effective_from=JAN),
        "mini_mar": factory.price("gpt-4o-mini", input_cost="0.0000002", effective_from=MAR),
        "mini_jun": factory.price("gpt-4o-mini", input_cost="0.00000025", effective_from=JUN),
        "claude": factory.price("claude", agent700_output_cost="0.000030000000000001", effective_from=MAR),
        "later": factory.price("claude", effective_from=dt.datetime.now(dt.UTC) + dt.timedelta(days=30)),
    }


def test_prices_list_shows_each_rows_range(runner, catalog):
    result = runner.invoke(args=["prices", "list"])

    assert result.exit_code == 0, result.output
    header, *rows = [line.split() for line in result.stdout.splitlines()]
    assert header == ["ID", "MODEL", "INPUT", "OUTPUT", "A700_INPUT", "A700_OUTPUT", "EFFECTIVE_FROM", "UNTIL", "NOW"]
    later = catalog["later"]
    assert [row[:2] + row[6:] for row in rows] == [
        [str(catalog["claude"].id), "claude", rfc3339(MAR), rfc3339(later.effective_from), "in", "effect"],
        [str(later.id), "claude", rfc3339(later.effective_from), "open"],
        [str(catalog["mini_jan"].id), "gpt-4o-mini", rfc3339(JAN), rfc3339(MAR)],
        [str(catalog["mini_mar"].id), "gpt-4o-mini", rfc3339(MAR), rfc3339(JUN)],
        [str(catalog["mini_jun"].id), "gpt-4o-mini", rfc3339(JUN), "open", "in", "effect"],
    ]
    # Rates as people read them: exact, without trailing zeros or exponents.
    assert rows[0][2:6] == ["0.00000015", "0.0000006", "0.0000003", "0.000030000000000001"]
    assert rows[3][2] == "0.0000002"


def test_prices_list_one_model_as_json(runner, catalog):
    result = runner.invoke(args=["prices", "list", "--model", "gpt-4o-mini", "--json"])

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [(p["id"], p["effective_from"], p["until"], p["in_effect_now"]) for p in document["prices"]] == [
        (str(catalog["mini_jan"].id), rfc3339(JAN), rfc3339(MAR), False),
        (str(catalog["mini_mar"].id), rfc3339(MAR), rfc3339(JUN), False),
        (str(catalog["mini_jun"].id), rfc3339(JUN), None, True),
    ]
    assert document["prices"][0] | {"id": None} == {
        "id": None, "model_name": "gpt-4o-mini",
        "input_cost_per_token": "0.000000150000000000", "output_cost_per_token": "0.000000600000000000",
        "agent700_input_cost_per_token": "0.000000300000000000",
        "agent700_output_cost_per_token": "0.000001200000000000",
        "effective_from": rfc3339(JAN), "until": rfc3339(MAR), "in_effect_now": False,
    }


def test_prices_list_refuses_an_unknown_model_and_names_the_known_ones(runner, catalog):
    result = runner.invoke(args=["prices", "list", "--model", "gpt-5"])

    assert_refused(result, "No price rows for model 'gpt-5'", "claude, gpt-4o-mini")
    assert result.stdout == ""


def test_prices_list_with_nothing(runner, settings):
    assert runner.invoke(args=["prices", "list"]).stdout == "No prices.\n"
    assert json.loads(runner.invoke(args=["prices", "list", "--json"]).stdout) == {"prices": []}
    assert_refused(runner.invoke(args=["prices", "list", "--model", "x"]), "models with prices: none")


# --- prices retire ----------------------------------------------------------------------


def test_prices_retire_deletes_an_unused_row_and_says_which_applies_now(runner, catalog, settings):
    result = runner.invoke(args=["prices", "retire", "--id", str(catalog["mini_jun"].id)])

    assert created_id(result) == catalog["mini_jun"].id
    assert (catalog["mini_jun"].model_name, JUN) not in prices(settings)
    assert len(prices(settings)) == 4
    assert f"the row effective from {rfc3339(MAR)} ({catalog['mini_mar'].id}) applies there" in result.stderr

    first = runner.invoke(args=["prices", "retire", "--id", str(catalog["claude"].id)])

    assert created_id(first) == catalog["claude"].id
    assert f"model 'claude' has no price in effect from {rfc3339(MAR)} on" in first.stderr


def test_prices_retire_refuses_a_row_events_were_priced_with(runner, factory, settings):
    usage_records = UsageRecords(factory, settings)  # its rows are priced with usage_records.price
    organization = factory.organization()
    for _ in range(3):
        usage_records.log(organization)

    result = runner.invoke(args=["prices", "retire", "--id", str(usage_records.price.id)])

    assert result.exit_code == 1
    assert_refused(result, f"Price row {usage_records.price.id}", "used by 3 recorded event(s)", "keep the price")
    assert len(prices(settings)) == 1


def test_prices_retire_refuses_unknown_or_malformed_ids(runner, catalog, settings):
    unknown = uuid.uuid4()

    assert_refused(runner.invoke(args=["prices", "retire", "--id", str(unknown)]), f"No price row with id {unknown}")
    malformed = runner.invoke(args=["prices", "retire", "--id", "gpt-4o-mini"])
    assert malformed.exit_code == 2
    assert_refused(malformed, "not a valid UUID")
    assert_refused(runner.invoke(args=["prices", "retire"]), "Missing option '--id'")
    assert len(prices(settings)) == 5


def test_prices_retire_help_says_how_queued_events_are_priced(runner):
    help_text = " ".join(runner.invoke(args=["prices", "retire", "--help"]).stdout.split())

    assert "Events still queued (accepted, not yet recorded) are priced by whatever row is in effect" in help_text


def test_the_foreign_key_a_racing_recording_trips_has_the_name_retire_maps(session):
    """PostgreSQL cuts the constraint's name; the command's message depends on the cut name."""
    from operator_cli.prices import LOG_PRICE_FOREIGN_KEY

    names = session.scalars(
        sa.text("SELECT conname FROM pg_constraint WHERE conrelid = 'user_billable_request_logs'::regclass "
                "AND confrelid = 'text_model_costs'::regclass")
    ).all()
    assert names == [LOG_PRICE_FOREIGN_KEY]


# --- prices set --effective-from in the past --------------------------------------------


@pytest.fixture
def recorded(factory, settings):
    """gpt-4o-mini priced from 2020; recorded events in February, April and July 2025."""
    usage_records = UsageRecords(factory, settings)
    organization = factory.organization()
    for occurred_at in (JAN + dt.timedelta(days=40), MAR + dt.timedelta(days=40), JUN + dt.timedelta(days=40)):
        usage_records.log(organization, status=models.UsageStatus.REPORTED, error=None, occurred_at=occurred_at)
    usage_records.log(organization, occurred_at=JUN + dt.timedelta(days=41))  # failed rows were recorded too
    return usage_records


def test_prices_set_in_the_past_refuses_when_recorded_events_fall_in_its_window(runner, recorded, settings):
    result = runner.invoke(args=[*price_args(input_per_token="9"), "--effective-from", rfc3339(MAR)])

    assert result.exit_code == 1
    assert_refused(
        result,
        "3 recorded event(s) of model 'gpt-4o-mini' occurred from 2025-03-01T00:00:00Z on (open)",
        "keep the price they were recorded with",
        "--yes",
    )
    assert len(prices(settings)) == 1


def test_prices_set_in_the_past_counts_only_until_the_next_later_row(runner, factory, recorded, settings):
    factory.price("gpt-4o-mini", effective_from=JUN)

    result = runner.invoke(args=[*price_args(), "--effective-from", rfc3339(MAR)])

    assert_refused(result, "1 recorded event(s)", "from 2025-03-01T00:00:00Z until 2025-06-01T00:00:00Z")


def test_prices_set_in_the_past_with_yes_adds_the_row_and_still_says_it(runner, recorded, settings):
    result = runner.invoke(args=[*price_args(), "--effective-from", rfc3339(MAR), "--yes"])

    assert created_id(result)
    assert "Note: 3 recorded event(s)" in result.stderr and "keep the price they were recorded with" in result.stderr
    assert (("gpt-4o-mini", MAR) in prices(settings))


@pytest.mark.parametrize(
    "model, effective_from",
    [
        ("gpt-4o-mini", JUN + dt.timedelta(days=50)),  # after every recorded event
        ("gpt-4o", JAN),  # another model
        ("gpt-4o-mini", dt.datetime.now(dt.UTC) + dt.timedelta(days=1)),  # not in the past
    ],
)
def test_prices_set_goes_ahead_when_no_recorded_event_falls_in_the_window(runner, recorded, model, effective_from):
    result = runner.invoke(args=[*price_args(model), "--effective-from", rfc3339(effective_from)])

    assert created_id(result)
    assert "recorded event" not in result.stderr


def test_prices_set_names_a_duplicate_time_before_counting_events(runner, recorded, session):
    result = runner.invoke(args=[*price_args(), "--effective-from", "2020-01-01T00:00:00Z"])

    assert_refused(result, "already has a price effective from 2020-01-01")
    assert count(session, models.TextModelCost) == 1
