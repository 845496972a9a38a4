"""The portal in real headless Chromium (Debian's /usr/bin/chromium driven by Playwright) against a
real `custody serve --seed-demo` process: three people in their own browser sessions, TOTP
approvals, a refused request with its reason, the dashboard's charts, and forged form posts.
Screenshots land in tests/artifacts/ (git-ignored)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path

import httpx
import pyotp
import pytest

from conftest import server_process

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (make test installs it)")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """The demo workspace `make run` serves (a relative --home, as there), on a free port; yields
    (base URL, people)."""
    here = tmp_path_factory.mktemp("portal")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTODY_")}
    env["CUSTODY_SCRYPT_LOG_N"] = "14"
    with server_process(["--seed-demo", "--home", ".custody"], env, timeout=180, cwd=here) as base:
        yield base, json.loads((here / ".custody" / "demo-people.json").read_text())


@pytest.fixture(scope="module")
def browser():  # noqa: ANN201
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-background-networking", "--disable-gpu",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield b
        b.close()


def sign_in(browser, base: str, token: str):  # noqa: ANN001, ANN201
    context = browser.new_context(base_url=base, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto("/portal/signin")
    page.fill("#token", token)
    page.click("#signin")
    arrive(page, r"/portal/(dashboard|requests)$")
    return page


def arrive(page, pattern: str) -> None:  # noqa: ANN001
    """Wait for the page a form leads to; on a refusal, fail with what the portal said."""
    try:
        page.wait_for_url(re.compile(pattern), timeout=15000)
    except Exception:  # noqa: BLE001
        pytest.fail(f"expected {pattern}, got {page.url}: {page.inner_text('main')[:500]}")


def fill_request(page, purpose: str, ttl: str) -> None:  # noqa: ANN001
    """A research copy into zone research, on the new-request form."""
    page.select_option("#to", "research")
    page.select_option("#kind", "research")
    page.fill("#purpose", purpose)
    page.fill("#ttl", ttl)


def totp_code(secret: str) -> str:
    """The next step's code: the seed spent codes up to the current step (steps are single use)."""
    totp = pyotp.TOTP(secret)
    return totp.at(time.time() + totp.interval)


def shot(page, name: str) -> None:  # noqa: ANN001
    page.screenshot(path=str(ARTIFACTS / f"portal-{name}.png"), full_page=True)


def test_a_research_clone_asked_approved_and_delivered_in_the_browser(demo, browser) -> None:  # noqa: ANN001
    base, people = demo
    who = people["people"]
    alice = sign_in(browser, base, who["alice"]["token"])
    assert "alice (researcher)" in alice.inner_text("#whoami")
    cookie = next(c for c in alice.context.cookies() if c["name"] == "custody_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and who["alice"]["token"] not in cookie["value"]
    assert who["alice"]["token"] not in alice.url

    alice.goto("/portal/requests/new")
    alice.select_option("#asset", "demo-llm")
    alice.click("#choose")
    offered = alice.locator("#to option").all_inner_texts()
    assert "research" in offered and "eu-research" not in offered  # demo-llm may not leave the US
    fill_request(alice, "probe attention heads", "20h")
    alice.click("#preview")
    preview = alice.inner_text("#preview-result")
    assert "Allowed" in preview and "Needs 2 approvals from ml-lead or security, distinct teams, with MFA" in preview
    shot(alice, "preview")
    alice.click("#submit")
    arrive(alice, r"/portal/requests\?created=")
    rid = alice.url.rsplit("=", 1)[1]
    card = alice.locator(f"#request-{rid}")
    assert "awaiting approval" in card.inner_text()

    for name in ("bob", "carol"):
        approver = sign_in(browser, base, who[name]["token"])
        approver.goto("/portal/approvals")
        item = approver.locator(f"#approval-{rid}")
        text = item.inner_text()
        assert "alice (nlp)" in text and "confidential" in text and "research (research, US, SL3)" in text
        assert "probe attention heads" in text and "MiB" in text
        shot(approver, f"inbox-{name}")
        item.locator("input[name=otp]").fill(totp_code(who[name]["totp_secret"]))
        item.locator("button.approve").click()
        arrive(approver, r"/portal/approvals\?approved=")
        assert f"approved {rid}" in approver.inner_text("main")
        approver.context.close()

    alice.goto("/portal/requests")
    card = alice.locator(f"#request-{rid}")
    assert "approved" in card.inner_text() and "bob (platform, MFA)" in card.inner_text()
    card.locator("button.run").click()
    arrive(alice, r"/portal/requests$")
    card = alice.locator(f"#request-{rid}")
    assert "done" in card.inner_text()
    replica = card.locator(".replica a").inner_text()
    alice.goto("/portal/replicas")
    row = alice.locator(f"#replica-{replica}")
    assert "research" in row.inner_text() and "demo-llm" in row.inner_text()
    assert "expires within 24 h" in row.inner_text() and "soon" in row.get_attribute("class")
    assert "1 active replica expires within 24 h" in alice.inner_text("#expiring")
    shot(alice, "replicas")
    alice.context.close()


def test_a_forbidden_request_shows_the_policy_reason(demo, browser) -> None:  # noqa: ANN001
    base, people = demo
    alice = sign_in(browser, base, people["people"]["alice"]["token"])
    alice.goto("/portal/requests/new")
    fill_request(alice, "a long study", "90d")
    alice.click("#submit")
    error = alice.inner_text(".error")
    assert "denied" in error and "above the 30d that approval rule 'sensitive-copy' allows" in error
    assert "Refused" in alice.inner_text("#preview-result")
    shot(alice, "denied")
    alice.context.close()


def test_the_dashboard_renders_its_charts(demo, browser) -> None:  # noqa: ANN001
    base, people = demo
    carol = sign_in(browser, base, people["people"]["carol"]["token"])
    assert carol.url.endswith("/portal/dashboard")
    charts = carol.locator("svg.chart")
    assert charts.count() == 4
    labels = [charts.nth(i).get_attribute("aria-label") for i in range(4)]
    assert labels == ["Copy attempts per day", "Approval cycle time (requests per bucket)",
                      "Bytes copied out of each zone", "Replicas by kind and zone"]
    assert charts.nth(0).locator("rect.bar").count() >= 2  # allowed and denied today
    assert charts.nth(2).locator("rect.bar").count() >= 1 and charts.nth(3).locator("polyline.line").count() >= 1
    box = charts.nth(0).bounding_box()
    assert box and box["width"] > 300 and box["height"] > 100  # drawn, not collapsed
    assert "alert.break_glass" in carol.inner_text("#alerts")
    shot(carol, "dashboard")
    carol.goto("/portal/ledger")
    assert "Latest checkpoint verified" in carol.inner_text("#checkpoint")
    assert carol.locator("#events tr.event").count() > 10 and "included ✓" in carol.inner_text("#events")
    shot(carol, "ledger")
    carol.context.close()


def test_api_docs_render_offline(demo, browser) -> None:  # noqa: ANN001
    base, _ = demo
    page = browser.new_page(base_url=base)
    page.goto("/docs")
    page.wait_for_selector(".opblock", timeout=15000)
    assert page.locator(".opblock").count() >= 60  # every operation, drawn by the vendored Swagger UI
    shot(page, "api-docs")
    page.close()


def test_forged_form_posts_are_refused(demo, browser) -> None:  # noqa: ANN001
    base, people = demo
    alice = sign_in(browser, base, people["people"]["alice"]["token"])
    form = {"asset": "demo-llm", "to": "research", "kind": "research", "purpose": "forged", "ttl": "1d",
            "action": "submit"}
    no_csrf = alice.request.post(f"{base}/portal/requests/new", form=form, max_redirects=0)
    assert no_csrf.status == 403 and "CSRF check failed" in no_csrf.text()
    alice.goto("/portal/requests/new")
    csrf = alice.locator("input[name=csrf]").first.get_attribute("value")
    cross = alice.request.post(f"{base}/portal/requests/new", form={**form, "csrf": csrf},
                               headers={"Origin": "https://evil.example"}, max_redirects=0)
    assert cross.status == 403
    alice.goto("/portal/requests")
    assert "forged" not in alice.inner_text("main")  # neither created a request
    alice.context.close()


def test_security_headers(demo) -> None:  # noqa: ANN001
    base, _ = demo
    page = httpx.get(f"{base}/portal/signin")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "script-src" not in csp
    assert page.headers["x-frame-options"] == "DENY" and page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-store" and "<script" not in page.text
    tampered = httpx.get(f"{base}/portal/requests", cookies={"custody_session": "A" * 80}, follow_redirects=False)
    assert tampered.status_code == 303 and tampered.headers["location"] == "/portal/signin"


@contextlib.contextmanager
def _signed_in_client(base: str, token: str):  # noqa: ANN202
    with httpx.Client(base_url=base) as c:
        pre = re.search(r'name="csrf" value="([^"]+)"', c.get("/portal/signin").text).group(1)
        assert c.post("/portal/signin", data={"csrf": pre, "token": token}).status_code == 303
        yield c


def test_signing_out_ends_the_session_everywhere(demo) -> None:  # noqa: ANN001
    base, people = demo
    with _signed_in_client(base, people["people"]["dave"]["token"]) as c:
        stolen = c.cookies.get("custody_session")
        assert c.get("/portal/requests").status_code == 200
        csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/portal/requests").text).group(1)
        assert c.post("/portal/signout", data={"csrf": csrf}).status_code == 303
    replay = httpx.get(f"{base}/portal/requests", cookies={"custody_session": stolen}, follow_redirects=False)
    assert replay.status_code == 303 and replay.headers["location"] == "/portal/signin"


def test_odd_query_values_are_refused_not_crashed(demo) -> None:  # noqa: ANN001
    base, people = demo
    with _signed_in_client(base, people["people"]["carol"]["token"]) as c:
        assert c.get("/portal/ledger", params={"before": "²"}).status_code == 200
        assert c.get("/portal/ledger", params={"q": "100%_"}).status_code == 200
        assert "spoofed words" not in c.get("/portal/approvals", params={"approved": "spoofed words"}).text


def test_sign_in_backoff_holds_against_parallel_guesses(env, tmp_path) -> None:  # noqa: ANN001
    """On a server of its own: the backoff is per address, and every test here comes from 127.0.0.1."""
    from concurrent.futures import ThreadPoolExecutor

    from conftest import serving

    with serving(env) as base, httpx.Client(base_url=base) as c:
        pre = re.search(r'name="csrf" value="([^"]+)"', c.get("/portal/signin").text).group(1)

        def guess(i: int) -> int:
            return httpx.post(f"{base}/portal/signin", data={"csrf": pre, "token": f"cst_{i:016x}_wrong"},
                              cookies={"custody_signin": pre}).status_code

        with ThreadPoolExecutor(12) as pool:
            codes = list(pool.map(guess, range(12)))
        assert codes.count(401) == 3 and codes.count(429) == 9, codes  # counted before they are tried
        r = c.post("/portal/signin", data={"csrf": pre, "token": "cst_wrong"})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        r = c.post("/portal/signin", data={"csrf": pre, "token": env.token})
        assert r.status_code == 303  # the right token never waits for others' failures


@pytest.fixture(autouse=True, scope="module")
def _no_stale_artifacts() -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    for old in ARTIFACTS.glob("portal-*.png"):
        old.unlink()
