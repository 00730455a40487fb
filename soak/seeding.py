"""The billable world of a soak run, created through the operator command line.

Several organizations with Stripe customer ids, a superadmin (the caller), a user the
usage is attributed to (a member of every organization), the service, two models' prices, an App Password and a JWT. The
prices are kept here as the ``Decimal`` rates the load generator computes costs from.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal

from soak.cluster import ROOT

SERVICE_NAME = "transcription"
PRICES_EFFECTIVE_FROM = "2024-01-01T00:00:00Z"


@dataclass(frozen=True)
class ModelPrice:
    model_name: str
    input_per_token: Decimal
    output_per_token: Decimal
    agent700_input_per_token: Decimal
    agent700_output_per_token: Decimal


# Round rates, and rates using all 18 decimal places (their products need rounding for
# Stripe's value on almost every event, half-even ties included).
MODEL_PRICES = (
    ModelPrice("gpt-4o-mini", Decimal("0.00000015"), Decimal("0.0000006"), Decimal("0.0000003"), Decimal("0.0000012")),
    ModelPrice(
        "precise-model", Decimal("0.000000000000000001"), Decimal("0.123456789012345678"),
        Decimal("0.000000000000000003"), Decimal("0.000000987654321098"),
    ),
)


@dataclass(frozen=True)
class Organization:
    id: str
    stripe_customer_id: str


@dataclass(frozen=True)
class World:
    organizations: tuple[Organization, ...]
    caller_user_id: str
    attributed_user_id: str
    service_name: str
    prices: dict[str, ModelPrice]
    app_password: str
    jwt: str


class OperatorCli:
    """``flask --app ingest_api …`` against the cluster; returns the last line printed."""

    def __init__(self, env: dict[str, str]):
        self.env = env

    def __call__(self, *args: str) -> str:
        completed = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "ingest_api", *args],
            env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=120,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"flask {' '.join(args[:2])} failed: {completed.stderr.strip()}")
        return completed.stdout.strip().splitlines()[-1]


def _stripe_customer(stripe_url: str, customer_id: str) -> None:
    """The customer in the local Stripe server's account, as it would be in Stripe's."""
    request = urllib.request.Request(
        f"{stripe_url}/_local/customers", data=json.dumps({"id": customer_id}).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


def seed(env: dict[str, str], organizations: int, token_ttl_seconds: int) -> World:
    cli = OperatorCli(env)
    # The Stripe side first, as an operator sets it up: the meter, and the customers the
    # organizations are created with (``orgs create`` checks that they exist).
    cli("stripe", "ensure-meter")
    for index in range(organizations):
        _stripe_customer(env["STRIPE_API_BASE"], f"cus_soak{index:02d}")
    # Each command is a process that imports the app (about a second); the independent
    # ones run side by side.
    with ThreadPoolExecutor(max_workers=4) as pool:
        caller = pool.submit(cli, "users", "create", "--email", "soak-superadmin@agent700.example")
        attributed = pool.submit(cli, "users", "create", "--email", "soak-transcriber@agent700.example")
        customer_ids = [f"cus_soak{index:02d}" for index in range(organizations)]
        organization_ids = [
            pool.submit(cli, "orgs", "create", "--name", f"soak-org-{index:02d}", "--stripe-customer-id", customer)
            for index, customer in enumerate(customer_ids)
        ]
        service = pool.submit(cli, "services", "add", "--name", SERVICE_NAME)
        prices = [
            pool.submit(
                cli, "prices", "set", "--model", price.model_name,
                "--input-per-token", str(price.input_per_token), "--output-per-token", str(price.output_per_token),
                "--agent700-input-per-token", str(price.agent700_input_per_token),
                "--agent700-output-per-token", str(price.agent700_output_per_token),
                "--effective-from", PRICES_EFFECTIVE_FROM,
            )
            for price in MODEL_PRICES
        ]
        caller_id = caller.result()
        organizations_seeded = tuple(
            Organization(future.result(), customer) for future, customer in zip(organization_ids, customer_ids, strict=True)
        )
        membership = pool.submit(
            cli, "members", "add", "--user", caller_id, "--org", organizations_seeded[0].id, "--role", "superadmin"
        )
        # Usage is billed only to an organization its user belongs to.
        attributed_memberships = [
            pool.submit(cli, "members", "add", "--user", attributed.result(), "--org", organization.id, "--role", "member")
            for organization in organizations_seeded
        ]
        app_password = pool.submit(cli, "app-passwords", "create", "--user", caller_id, "--name", "soak")
        jwt = pool.submit(cli, "tokens", "mint", "--user", caller_id, "--ttl-seconds", str(token_ttl_seconds))
        for future in (service, *prices, membership, *attributed_memberships):
            future.result()
        return World(
            organizations=organizations_seeded,
            caller_user_id=caller_id,
            attributed_user_id=attributed.result(),
            service_name=SERVICE_NAME,
            prices={price.model_name: price for price in MODEL_PRICES},
            app_password=app_password.result(),
            jwt=jwt.result(),
        )
