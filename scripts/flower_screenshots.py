"""Screenshots of Flower as an operator sees it, for the operations guide.

    .venv/bin/python scripts/flower_screenshots.py [--flower http://127.0.0.1:5555] [--out docs]

Against a running local run (``make run``, which keeps Flower's password in ``var/``):
sends a few events through the web (some for an organization without a Stripe customer,
so that failures show too), waits for them to be reported, then opens Flower's Tasks
page, searched for one of the events, and its Broker page in headless Chromium (Debian's
``chromium``), and writes ``flower-tasks.png`` and ``flower-broker.png``.
"""

from __future__ import annotations

import argparse
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
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "ingest_api", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip().splitlines()[-1]


def post(url: str, token: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--web", default="http://127.0.0.1:8000")
    parser.add_argument("--flower", default="http://127.0.0.1:5555")
    parser.add_argument("--out", default=str(ROOT / "docs"))
    args = parser.parse_args()
    user, _, password = (ROOT / "var" / "flower_basic_auth").read_text().strip().partition(":")

    token = flask("seed-demo")
    organizations = json.loads(flask("orgs", "list", "--json"))
    demo = next(o for o in organizations if o["stripe_customer_id"])
    users = json.loads(flask("users", "list", "--json"))
    superadmin = next(u for u in users if u["email"].startswith("demo-superadmin"))
    unbilled = next((o for o in organizations if o["name"] == "No customer yet"), None)
    unbilled_id = unbilled["id"] if unbilled else flask("orgs", "create", "--name", "No customer yet")
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
        page.goto(f"{args.flower}/tasks?search={ids[3]}")
        page.wait_for_timeout(3000)
        page.screenshot(path=Path(args.out) / "flower-search.png")
        page.goto(f"{args.flower}/broker")
        page.wait_for_timeout(2000)
        page.screenshot(path=Path(args.out) / "flower-broker.png")
        browser.close()
    print(f"screenshots in {args.out}; searched for {ids[3]}")


if __name__ == "__main__":
    main()
