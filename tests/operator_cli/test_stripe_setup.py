"""``stripe ensure-meter``: the billing meter created once, verified after, refused with
what to do when Stripe's meter cannot count the service's events."""

from __future__ import annotations

import stripe as stripe_sdk

from tests.support.operator_commands import assert_refused, last_line


def sdk(stripe) -> stripe_sdk.StripeClient:
    return stripe_sdk.StripeClient("sk_test_setup", base_addresses={"api": stripe.url})


def test_it_creates_the_meter_the_service_needs_once(runner, stripe):
    stripe.reset()  # a new Stripe account: no meter

    meter_id = last_line(runner.invoke(args=["stripe", "ensure-meter"]))
    again = last_line(runner.invoke(args=["stripe", "ensure-meter"]))

    assert again == meter_id
    (meter,) = sdk(stripe).v1.billing.meters.list().data
    assert (meter.id, meter.event_name, meter.status) == (meter_id, "agent700_cost", "active")
    assert meter.default_aggregation.formula == "sum"
    assert meter.customer_mapping.event_payload_key == "stripe_customer_id"
    assert meter.value_settings.event_payload_key == "value"


def test_check_only_creates_nothing(runner, stripe):
    stripe.reset()

    result = runner.invoke(args=["stripe", "ensure-meter", "--check"])

    assert_refused(result, "Stripe has no billing meter for event name 'agent700_cost'")
    assert sdk(stripe).v1.billing.meters.list().data == []


def test_an_inactive_meter_is_refused_with_what_to_do(runner, stripe):
    (meter,) = sdk(stripe).v1.billing.meters.list().data
    sdk(stripe).v1.billing.meters.deactivate(meter.id)

    assert_refused(runner.invoke(args=["stripe", "ensure-meter"]), f"meter {meter.id}", "inactive", "reactivate")


def test_a_meter_that_aggregates_otherwise_is_refused(runner, stripe):
    stripe.reset()
    sdk(stripe).v1.billing.meters.create(
        {"display_name": "counts", "event_name": "agent700_cost", "default_aggregation": {"formula": "count"}}
    )

    assert_refused(runner.invoke(args=["stripe", "ensure-meter"]), "aggregation 'count' (needs 'sum')")


def test_stripe_failing_is_a_clear_error(runner, stripe):
    stripe.set_faults(fail_next=10, status=500)

    assert_refused(runner.invoke(args=["stripe", "ensure-meter"]), "Stripe could not be used")
