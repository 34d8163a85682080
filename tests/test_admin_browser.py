"""The admin page in a real browser: headless Chromium (Debian's package) driven by Playwright,
against the service under gunicorn and the emulator on loopback ports.

Screenshots of each step go to ``test-artifacts/admin/``. Without Chromium the test is skipped,
except in CI (``CI=true``), where a missing browser is a failure.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from app.keys import SHARED, callback_urls
from scripts.local import EMULATOR_AUTH, EMULATOR_CREDENTIALS, Stack, running, wait_idle
from tests.servers import free_port

pytestmark = pytest.mark.system  # real servers: `pytest -m 'not system'` skips them

CHROMIUM = os.environ.get("CONFHOOK_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "admin"
PASSWORD = "browser-" + secrets.token_urlsafe(12)
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]

if not (shutil.which(CHROMIUM) or Path(CHROMIUM).exists()):
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium package")
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from tests.conftest import POSTGRES_URL

    drop = None
    if POSTGRES_URL:
        from tests.conftest import fresh_postgres_database

        url, drop = fresh_postgres_database()
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('browser') / 'confhook.db'}"
    live = Stack(free_port(), free_port(), url, secrets.token_urlsafe(32),
                 "browser-" + secrets.token_urlsafe(16), admin_password=PASSWORD,
                 emulator_args=["--retry-delay", "0.2", "--media-ms", "300"],
                 log_dir=tmp_path_factory.mktemp("browser-logs"))
    with running(live):
        yield live
    if drop:
        drop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1280, "height": 900})
        yield context
        context.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    page = browser.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # HTTP errors the test provokes (a wrong password, a bad form) log "Failed to load
    # resource"; anything else logged as an error (a CSP violation, a script error) counts.
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error"
            and not msg.text.startswith("Failed to load resource") else None)
    yield page
    page.close()
    # The strict Content-Security-Policy must not block anything the pages use.
    assert errors == [], errors


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def provider_create(stack: Stack, **body: Any) -> str:
    """Create a conference on the emulator directly, as another system would."""
    response = requests.post(
        f"{stack.emulator_url}/v1/users/{EMULATOR_CREDENTIALS['user']}/conferences",
        json={"from": "+19195550000", **body}, timeout=5,
        auth=(EMULATOR_CREDENTIALS["token"], EMULATOR_CREDENTIALS["secret"]))
    assert response.status_code == 201, response.text
    return response.headers["Location"].rstrip("/").rsplit("/", 1)[-1]


def test_an_operator_session(stack: Stack, page: Any) -> None:
    base = stack.service_url

    # Every page asks for the password first.
    page.goto(f"{base}/admin/")
    expect(page).to_have_url(re.compile(r"/admin/sign-in"))
    page.get_by_label("Admin password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("That password is not right.")
    page.get_by_label("Admin password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{base}/admin/")
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    expect(page.locator("main")).to_contain_text("Database")
    shot(page, "1-dashboard-empty")

    # Create a conference through the form; the emulator creates it.
    page.get_by_role("link", name="New conference").click()
    page.get_by_label("Hosting number (E.164)").fill("not a number")
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_role("alert")).to_contain_text("from")
    page.get_by_label("Hosting number (E.164)").fill("+19195551212")
    page.get_by_label("Tag").fill("browser-weekly")
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_role("status")).to_contain_text("created on the provider as")
    conference_id = re.search(r"created on the provider as (\S+)\.",
                              page.get_by_role("status").inner_text()).group(1)  # type: ignore[union-attr]
    local_id = page.url.rstrip("/").rsplit("/", 1)[-1]

    # The emulator plays a conference; the open page refreshes itself as members join.
    response = requests.post(f"{stack.emulator_url}/_emulator/scenarios", auth=EMULATOR_AUTH,
                             timeout=5, json={
        "conferenceId": conference_id, "members": 3, "stepMs": 700})
    assert response.status_code == 202, response.text
    page.evaluate("window.loadedOnce = true")
    lanes = page.locator("svg.timeline g.lane")
    expect(lanes.first).to_be_visible(timeout=20_000)
    expect(lanes).to_have_count(3, timeout=30_000)
    assert page.evaluate("window.loadedOnce === true"), "the page was reloaded"
    wait_idle(stack)
    expect(page.locator(".state").first).to_have_text("completed", timeout=20_000)
    expect(page.locator("svg.timeline .mark-completed")).to_have_count(1)
    expect(page.locator("#members tbody tr")).to_have_count(3)
    expect(page.get_by_role("button", name="Terminate on the provider")).to_have_count(0)
    shot(page, "2-conference-timeline")

    # Open one of its events: the raw payload and where it came from.
    page.locator("table.events a").first.click()
    expect(page).to_have_url(re.compile(r"/admin/events/\d+$"))
    expect(page.locator("main")).to_contain_text(conference_id)
    expect(page.locator("pre")).to_contain_text('"eventType"')
    shot(page, "3-event")

    # Another system created a conference pointed at the shared URL: its events are unmatched.
    shared, _ = callback_urls({"CONFHOOK_SECRET_KEY": stack.secret_key,
                               "CONFHOOK_PUBLIC_URL": base, "CONFHOOK_FALLBACK_URL": base},
                              SHARED)
    outside = provider_create(stack, tag="outside", callbackUrl=shared)
    wait_idle(stack)
    page.get_by_role("link", name="Problems").click()
    row = page.locator("table.events tbody tr", has_text=outside)
    expect(row).to_have_count(1)
    expect(row).to_contain_text("unknown_conference")
    shot(page, "4-problems")

    # Track it, then re-match its waiting event from the Problems page.
    page.get_by_role("link", name="New conference").click()
    page.get_by_label("Provider conference id").fill(outside)
    page.get_by_role("button", name="Track").click()
    expect(page.get_by_role("status")).to_contain_text(f"Now tracking {outside}")
    expect(page.get_by_role("status")).to_contain_text("1 stored event(s) name it")
    page.get_by_role("link", name="Problems").click()
    page.locator("table.events tbody tr", has_text=outside).get_by_role(
        "button", name="Re-match").click()
    expect(page.get_by_role("status")).to_contain_text("unmatched → matched")
    expect(page.locator("table.events tbody")).to_contain_text(
        "No unmatched, conflicting or invalid events.")

    # The dashboard counts what happened.
    page.get_by_role("link", name="Dashboard").click()
    expect(page.locator('svg.chart rect.bar:not([height="0.0"])').first).to_be_visible()
    shot(page, "5-dashboard")

    # The conference list filters by tag, and a search by provider id opens the conference.
    page.get_by_role("link", name="Conferences").click()
    page.get_by_label("Search").fill("browser-weekly")
    page.get_by_label("Search").press("Enter")
    expect(page.locator("main table.list tbody tr")).to_have_count(1)
    expect(page.locator("main table.list tbody")).to_contain_text(conference_id)
    page.get_by_label("Search").fill(conference_id)
    page.get_by_label("Search").press("Enter")
    expect(page).to_have_url(f"{base}/admin/conferences/{local_id}")

    # Signing out ends the session.
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/admin/sign-in"))
    page.goto(f"{base}/admin/problems")
    expect(page).to_have_url(re.compile(r"/admin/sign-in\?next="))
