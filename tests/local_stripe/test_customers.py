"""Customers: Stripe's v1 API through the real SDK, and the local route that creates a
customer with a chosen id (tests and the demo use fixed ids)."""

from __future__ import annotations

import re

import pytest
import requests
import stripe as stripe_sdk


def test_create_retrieve_and_list_like_stripe(stripe, client):
    first = client.v1.customers.create({"name": "Ada", "email": "ada@example.com", "metadata": {"org": "42"}})
    second = client.v1.customers.create()

    assert re.fullmatch(r"cus_[A-Za-z0-9]{14}", first.id)
    assert (first.object, first.name, first.email, first.livemode) == ("customer", "Ada", "ada@example.com", False)
    assert first.metadata.to_dict() == {"org": "42"}
    assert client.v1.customers.retrieve(first.id).to_dict() == first.to_dict()
    assert [c.id for c in client.v1.customers.list().data] == [second.id, first.id]
    assert [c.id for c in client.v1.customers.list({"email": "ada@example.com"}).data] == [first.id]
    page = client.v1.customers.list({"limit": 1})
    assert ([c.id for c in page.data], page.has_more) == ([second.id], True)
    assert [c.id for c in page.auto_paging_iter()] == [second.id, first.id]


def test_an_unknown_customer_is_missing(stripe, client):
    with pytest.raises(stripe_sdk.InvalidRequestError) as caught:
        client.v1.customers.retrieve("cus_x")

    assert (caught.value.http_status, caught.value.code, caught.value.param) == (404, "resource_missing", "id")
    assert caught.value.user_message == "No such customer: 'cus_x'"


def test_a_deleted_customer_answers_its_deleted_form_and_leaves_the_list(stripe, client):
    customer = client.v1.customers.create({"name": "Gone"})

    deleted = client.v1.customers.delete(customer.id)

    assert deleted.to_dict() == {"id": customer.id, "object": "customer", "deleted": True}
    assert client.v1.customers.retrieve(customer.id).deleted is True
    assert client.v1.customers.list().data == []
    with pytest.raises(stripe_sdk.InvalidRequestError) as caught:
        client.v1.customers.delete(customer.id)
    assert (caught.value.http_status, caught.value.code) == (404, "resource_missing")


def test_unknown_customer_parameters_are_refused(stripe, client):
    with pytest.raises(stripe_sdk.InvalidRequestError) as caught:
        client.v1.customers.create({"id": "cus_chosen"})
    assert (caught.value.code, caught.value.param) == ("parameter_unknown", "id")


def test_local_route_creates_a_customer_with_a_chosen_id(stripe, client):
    def create(body: dict) -> requests.Response:
        return requests.post(f"{stripe.url}/_local/customers", json=body, timeout=5)

    made = create({"id": "cus_test", "name": "Test org"})
    assert made.status_code == 200
    assert (made.json()["id"], made.json()["name"]) == ("cus_test", "Test org")
    assert client.v1.customers.retrieve("cus_test").name == "Test org"
    assert create({"id": "cus_test"}).json() == made.json()  # already there: answered as it is

    client.v1.customers.delete("cus_test")
    assert create({"id": "cus_test"}).status_code == 400  # Stripe never reuses an id
    for bad in ({}, {"id": ""}, {"id": "cus_y", "plan": "gold"}, {"id": "cus_z", "metadata": "x"}):
        assert create(bad).status_code == 400


def test_testing_helper_creates_customers_once(stripe, client):
    created = stripe.create_customers("cus_one", "cus_two")
    again = stripe.create_customers("cus_two")

    assert [c["id"] for c in created] == ["cus_one", "cus_two"]
    assert again == created[1:]
    assert {c.id for c in client.v1.customers.list().data} == {"cus_one", "cus_two"}
