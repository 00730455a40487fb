"""Screenshots of Flower as an operator sees it, for the operations guide.

    .venv/bin/python scripts/flower_screenshots.py [--flower http://127.0.0.1:5555] [--out docs]

Against a running local run (``make run``, which keeps Flower's password in ``var/``):
sends events through the web (one for an organization without a Stripe customer, so a
failure shows too), waits for them to be reported, then opens Flower in headless
Chromium (Debian's ``chromium``): its Tasks page, the search for one event (its record
and report tasks), the record task's page (its result names the events), the reports
retrying while the local Stripe server answers 429 (one retry's page, with Stripe's reason), and the Broker page with a backlog.
Writes ``flower-*.png`` into ``docs/``.
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


def flask(*args: str) -> str:
    """What an operator command printed (a listing's JSON whole, else its last line)."""
    output = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "ingest_api", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    return output if "--json" in args else output.splitlines()[-1]


def post(url: str, token: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def flower_api(flower: str, user: str, password: str, path: str) -> str:
    request = urllib.request.Request(f"{flower}{path}")
    request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--web", default="http://127.0.0.1:8000")
    parser.add_argument("--flower", default="http://127.0.0.1:5555")
    parser.add_argument("--stripe", default="http://127.0.0.1:12111", help="the local Stripe server of the run")
    parser.add_argument("--out", default=str(ROOT / "docs"))
    args = parser.parse_args()
    user, _, password = (ROOT / "var" / "flower_basic_auth").read_text().strip().partition(":")
    local_stripe = args.stripe

    token = flask("seed-demo")
    organizations = json.loads(flask("orgs", "list", "--json"))["organizations"]
    demo = next(o for o in organizations if o["stripe_customer_id"])
    users = json.loads(flask("users", "list", "--json"))["users"]
    superadmin = next(u for u in users if u["email"].startswith("demo-superadmin"))
    unbilled = next((o for o in organizations if o["name"] == "No customer yet"), None)
    unbilled_id = unbilled["id"] if unbilled else flask("orgs", "create", "--name", "No customer yet")
    # Usage is billed only to an organization its user belongs to (adding it again changes nothing).
    flask("members", "add", "--user", superadmin["id"], "--org", unbilled_id, "--role", "member")
    body = {
        "user_id": superadmin["id"], "organization_id": demo["id"], "model_name": "gpt-4o-mini",
        "input_tokens": 1200, "output_tokens": 350, "service_name": "transcription",
    }
    url = f"{args.web}/api/billing/external-usage"
    ids = [post(url, token, body | {"input_tokens": 1000 + n})["id"] for n in range(12)]
    post(f"{url}/batch", token, {"events": [body | {"output_tokens": n} for n in range(40)]})
    post(url, token, body | {"organization_id": unbilled_id})
    time.sleep(5)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(http_credentials={"username": user, "password": password}, viewport={"width": 1500, "height": 900})
        page = context.new_page()
        page.goto(f"{args.flower}/tasks")
        page.wait_for_timeout(3000)
        page.screenshot(path=Path(args.out) / "flower-tasks.png")
        # Searching an event id: the task that recorded it and the one that reported it.
        page.get_by_placeholder("state:FAILURE worker:celery@hostname").fill(ids[3])
        page.wait_for_timeout(3000)
        page.screenshot(path=Path(args.out) / "flower-search.png")
        found = json.loads(flower_api(args.flower, user, password, f"/api/tasks?search={ids[3]}"))
        record = next(uuid for uuid, task in found.items() if task["name"] == "billing.record")
        page.goto(f"{args.flower}/task/{record}")
        page.wait_for_timeout(2000)
        page.screenshot(path=Path(args.out) / "flower-task.png", full_page=True)
        # Stripe refusing for now: the reports retry with Stripe's reason, rows wait.
        post(f"{local_stripe}/_local/faults", token, {"status": 429, "fail_next": 1_000_000})
        for n in range(5):
            post(f"{url}/batch", token, {"events": [body | {"output_tokens": 100 + n * 10 + k} for k in range(10)]})
        time.sleep(6)
        retried = json.loads(flower_api(args.flower, user, password, "/api/tasks?state=RETRY&limit=1"))
        page.goto(f"{args.flower}/task/{next(iter(retried))}")
        page.wait_for_timeout(2000)
        page.screenshot(path=Path(args.out) / "flower-retry.png", full_page=True)
        for n in range(20):  # a burst, so that the intake holds some for a moment
            post(f"{url}/batch", token, {"events": [body | {"input_tokens": 5000 + n * 100 + k} for k in range(100)]})
        page.goto(f"{args.flower}/broker")
        page.wait_for_timeout(1500)
        page.screenshot(path=Path(args.out) / "flower-broker.png")
        post(f"{local_stripe}/_local/faults", token, {"fail_next": 0})
        browser.close()
    print(f"screenshots in {args.out}; searched for {ids[3]}")


if __name__ == "__main__":
    main()
