"""GET /docs in a real browser: Debian's Chromium, driven by Playwright, against the real
web process (gunicorn, ``tests.processes.GunicornProcess``). The page renders every
operation of /openapi.json, loads nothing from anywhere but the service, and its
"Try it out" on POST /api/billing/external-usage, with a pasted App Password, sends a
real request that is accepted (202 shown, the event on the intake stream); so do the void
and the usage totals (GET /api/billing/usage).

Playwright uses the system browser (``executable_path``), never one of its own; without
Chromium the test fails rather than skips (``make test`` installs it).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from playwright.sync_api import Page, sync_playwright

from ingest_api import openapi
from shared import db, models
from tests.support.api_caller import record_as_worker
from tests.support.service_processes import GunicornProcess
from tests.support.timestamps import rfc3339

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# As root, on a machine without a GPU or a network beyond loopback: no sandbox, and
# none of Chromium's own calls home (refused here, and slow to fail).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 30_000


@pytest.fixture
def web(committed_database, settings, stripe, tmp_path):
    server = GunicornProcess(settings, stripe.url, tmp_path / "web", workers=1)
    try:
        yield server.start()
    finally:
        server.stop()


@dataclass
class Browser:
    page: Page
    requested: list[str]  # every URL the page asked for
    directory: Path  # where screenshots go


@pytest.fixture
def browser(tmp_path):
    """A page of a headless Chromium with a fresh profile (in ``tmp_path``)."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (make test does: apt-get install chromium)")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path / "chromium-profile",
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1200},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(WAIT_MS)
            opened = Browser(page, [], tmp_path)
            page.on("request", lambda request: opened.requested.append(request.url))
            yield opened
        finally:
            with contextlib.suppress(Exception):  # to look at after a failure; never hides one
                page.screenshot(path=tmp_path / "docs-page.png", full_page=True)
            context.close()


def test_the_docs_page_shows_every_operation_and_tries_a_usage_post_a_void_and_the_totals(web, browser, billing, settings):
    # An event recorded before the page is opened (never sent to Stripe): voided below.
    to_void = billing.event()
    record_as_worker(settings, billing, to_void)
    page = browser.page
    page.goto(f"{web.url}/docs")

    # Every operation of the document is shown, each under its path.
    page.locator(".opblock").first.wait_for()
    shown = {text.replace("\u200b", "") for text in page.locator(".opblock-summary-path").all_inner_texts()}
    assert shown == set(openapi.document()["paths"]), shown

    # Authorize with the App Password, as an operator pastes it.
    page.get_by_role("button", name="Authorize").first.click()
    dialog = page.locator(".modal-ux")
    dialog.get_by_label("auth-bearer-value").fill(billing.app_password)
    dialog.get_by_role("button", name="Apply credentials").click()
    dialog.get_by_role("button", name="Close").click()

    # Try it out on the POST, with an Idempotency-Key and a body of the billing world.
    operation = page.locator("#operations-usage-recordUsage")
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    operation.locator('tr[data-param-name="Idempotency-Key"] input').fill("docs-page-try-it-1")
    operation.locator("textarea.body-param__text").fill(json.dumps(billing.body(), indent=2))
    with page.expect_response(lambda r: r.request.method == "POST" and r.url == f"{web.url}/api/billing/external-usage") as sent:
        operation.get_by_role("button", name="Execute").click()
    response = sent.value
    assert response.request.headers["authorization"] == f"Bearer {billing.app_password}"
    assert response.status == 202, response.text()
    event_id = response.json()["id"]

    # The page shows the answer: 202 and the event's id.
    live = operation.locator(".live-responses-table .response")
    live.locator(".response-col_status").filter(has_text="202").wait_for()
    assert event_id in live.inner_text()

    # Accepted for real: the event is on the intake stream, as sent from the page.
    queued = billing.queued()
    assert [str(event.id) for event in queued] == [event_id], queued
    assert queued[0].idempotency_key == "docs-page-try-it-1"
    assert queued[0].caller_user_id == billing.caller.id

    # What an operator sees, the pasted credential masked (docs/try-it.png is a copy).
    page.evaluate("window.scrollTo(0, 0)")
    top, answer = operation.bounding_box(), live.bounding_box()
    page.screenshot(
        path=browser.directory / "try-it.png",
        full_page=True,
        clip={"x": 0, "y": top["y"] - 8, "width": top["width"] + 2 * top["x"], "height": answer["y"] + answer["height"] - top["y"] + 24},
        mask=[operation.locator(".curl-command")],
        mask_color="#333333",
    )

    # Try it out on the void, with the recorded event's id and a reason.
    void = page.locator("#operations-usage-voidUsage")
    void.locator(".opblock-summary").click()
    void.get_by_role("button", name="Try it out").click()
    void.locator('tr[data-param-name="event_id"] input').fill(str(to_void.id))
    void.locator("textarea.body-param__text").fill(json.dumps({"reason": "Tried from the docs page"}, indent=2))
    void_url = f"{web.url}/api/billing/external-usage/{to_void.id}/void"
    with page.expect_response(lambda r: r.request.method == "POST" and r.url == void_url) as sent:
        void.get_by_role("button", name="Execute").click()
    response = sent.value
    assert response.request.headers["authorization"] == f"Bearer {billing.app_password}"
    assert response.status == 200, response.text()
    record = response.json()
    assert (record["id"], record["status"], record["void"]["method"]) == (str(to_void.id), "voided", "never_sent")

    # The page shows the answer: 200 and the voided record.
    live = void.locator(".live-responses-table .response")
    live.locator(".response-col_status").filter(has_text="200").wait_for()
    shown = live.inner_text()
    assert "voided" in shown and "Tried from the docs page" in shown, shown

    # Voided for real: the void is the caller's, with the reason typed into the page.
    with db.transaction(settings.database_url) as session:
        (written,) = session.scalars(sa.select(models.UsageVoid)).all()
        assert (written.row_id, written.reason, written.requested_by) == (to_void.id, "Tried from the docs page", str(billing.caller.id))
        assert session.get(models.UserBillableRequestLog, to_void.id).status == "voided"

    # Try it out on the usage totals: the organization, a window around the voided
    # event, grouped by model (a multiple choice on the page).
    totals = page.locator("#operations-usage-usageTotals")
    totals.locator(".opblock-summary").click()
    totals.get_by_role("button", name="Try it out").click()
    now = dt.datetime.now(dt.UTC)
    totals.locator('tr[data-param-name="organization_id"] input').fill(str(billing.organization.id))
    totals.locator('tr[data-param-name="from"] input').fill(rfc3339(now - dt.timedelta(days=1)))
    totals.locator('tr[data-param-name="to"] input').fill(rfc3339(now + dt.timedelta(minutes=1)))
    totals.locator('tr[data-param-name="group_by"] select').select_option(["model_name"])
    totals_url = f"{web.url}/api/billing/usage?"
    with page.expect_response(lambda r: r.request.method == "GET" and r.url.startswith(totals_url)) as sent:
        totals.get_by_role("button", name="Execute").click()
    response = sent.value
    assert response.request.headers["authorization"] == f"Bearer {billing.app_password}"
    assert response.status == 200, response.text()
    answer = response.json()
    # The voided event is counted; the one posted above is still queued, so it is not.
    assert (answer["organization_id"], answer["group_by"]) == (str(billing.organization.id), ["model_name"])
    assert (answer["total"]["events"], answer["total"]["by_state"]["voided"]["events"]) == (1, 1), answer
    assert [group["key"] for group in answer["groups"]] == [{"model_name": "gpt-4o-mini"}]
    live = totals.locator(".live-responses-table .response")
    live.locator(".response-col_status").filter(has_text="200").wait_for()
    assert "gpt-4o-mini" in live.inner_text()

    # Nothing was loaded from anywhere but the service.
    origins = {f"{urlsplit(url).scheme}://{urlsplit(url).netloc}" for url in browser.requested}
    assert origins == {web.url}, browser.requested
