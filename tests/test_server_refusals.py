"""What the server refuses, over HTTP against a real `custody serve`: expired and suspended sessions,
sign-in and form posts without their CSRF value or from another site, roles on the new reads,
internal body fields, and paths outside CUSTODY_SERVER_PATHS. Each refusal leaves nothing behind."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from conftest import people as make_people
from conftest import Env, cli, events, hf_model, register, serving

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def people(env: Env, tmp_path: Path) -> dict[str, str]:
    hf_model(tmp_path / "m")
    register(env, tmp_path / "m", "tiny", "--jurisdiction", "US")
    out = {"admin": env.token}
    for name, role, team in (("alice", "researcher", "nlp"), ("ada", "auditor", "audit")):
        out[name] = cli("principal", "add", name, "--role", role, "--team", team, "--json", token=env.token).json["token"]
    return out


def sign_in(base: str, token: str) -> httpx.Client:
    c = httpx.Client(base_url=base)
    pre = CSRF.search(c.get("/portal/signin").text).group(1)
    assert c.post("/portal/signin", data={"csrf": pre, "token": token}).status_code == 303
    return c


def requests_count(env: Env) -> int:
    ws = env.open()
    try:
        with ws.engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM requests")).scalar_one()
    finally:
        ws.close()


def test_expired_and_suspended_sessions_end(env: Env, people: dict[str, str]) -> None:
    with serving(env) as base:
        c = sign_in(base, people["alice"])
        assert c.get("/portal/requests").status_code == 200
        ws = env.open()
        with ws.engine.begin() as conn:
            conn.execute(text("UPDATE web_sessions SET expires_at = :t"), {"t": "2000-01-01 00:00:00+00:00"})
        ws.close()
        r = c.get("/portal/requests", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/portal/signin"
        c.close()

        c = sign_in(base, people["alice"])
        assert cli("principal", "suspend", "alice", "--json", token=env.token).code == 0
        assert c.get("/portal/requests").status_code == 401  # the page's service refuses her token
        c.close()
        with httpx.Client(base_url=base) as fresh:
            pre = CSRF.search(fresh.get("/portal/signin").text).group(1)
            r = fresh.post("/portal/signin", data={"csrf": pre, "token": people["alice"]})
            assert r.status_code == 401 and "suspended" in r.text and "custody_session" not in r.cookies


def test_sign_in_and_forms_need_their_csrf_value_and_this_site(env: Env, people: dict[str, str]) -> None:
    with serving(env) as base:
        with httpx.Client(base_url=base) as c:
            pre = CSRF.search(c.get("/portal/signin").text).group(1)
            for data in ({"token": people["alice"]}, {"token": people["alice"], "csrf": "not-the-cookie"}):
                r = c.post("/portal/signin", data=data)
                assert r.status_code == 403 and "custody_session" not in r.cookies
            r = c.post("/portal/signin", data={"csrf": pre, "token": people["alice"]},
                       headers={"Sec-Fetch-Site": "cross-site"})
            assert r.status_code == 403 and "custody_session" not in r.cookies
        c = sign_in(base, people["alice"])
        csrf = CSRF.search(c.get("/portal/requests/new").text).group(1)
        before = requests_count(env)
        r = c.post("/portal/requests/new", headers={"Sec-Fetch-Site": "cross-site"},
                   data={"csrf": csrf, "asset": "tiny", "to": "research", "kind": "research", "purpose": "x",
                         "ttl": "1d", "action": "submit"})
        assert r.status_code == 403 and requests_count(env) == before
        c.close()


def test_the_new_reads_need_their_roles(env: Env, people: dict[str, str]) -> None:
    def get(base: str, path: str, who: str, **params: str) -> httpx.Response:
        return httpx.get(f"{base}{path}", params=params, headers={"Authorization": f"Bearer {people[who]}"})

    with serving(env) as base:
        for path in ("/api/v1/dashboard", "/api/v1/audit/events"):
            r = get(base, path, "alice")
            assert r.status_code == 403 and r.json()["exit_code"] == 3
        assert get(base, "/api/v1/requests/choices", "ada", asset="tiny").status_code == 403
        r = httpx.post(f"{base}/api/v1/requests/preview", headers={"Authorization": f"Bearer {people['ada']}"},
                       json={"ref": "tiny", "to": "research", "kind": "research", "purpose": "x", "ttl": "1d"})
        assert r.status_code == 403
        c = sign_in(base, people["alice"])
        assert c.get("/portal/dashboard").status_code == 403 and c.get("/portal/ledger").status_code == 403
        c.close()
    events = cli("audit", "export", "--out", str(env.home / "e.jsonl"), "--json", token=env.token)
    assert events.code == 0
    lines = (env.home / "e.jsonl").read_text()
    assert lines.count('"action":"dashboard.read"') >= 2 and '"outcome":"denied"' in lines


def test_preview_stores_nothing_and_internal_fields_are_refused(env: Env, people: dict[str, str]) -> None:
    auth = {"Authorization": f"Bearer {people['alice']}"}
    body = {"ref": "tiny", "to": "research", "kind": "research", "purpose": "x", "ttl": "1d"}
    with serving(env) as base:
        before = requests_count(env)
        for ttl in ("1d", "90d"):  # allowed, then refused by the rule's cap
            r = httpx.post(f"{base}/api/v1/requests/preview", headers=auth, json={**body, "ttl": ttl})
            assert r.status_code == 200 and r.json()["decision"]["allowed"] is (ttl == "1d")
        assert requests_count(env) == before
        for extra in ({"drill": True}, {"method": "snapshot"}, {"snapshot": "x"}, {"run": True}):
            r = httpx.post(f"{base}/api/v1/requests", headers=auth, json={**body, **extra})
            assert r.status_code == 422 and r.json()["exit_code"] == 2, (extra, r.text)
        assert requests_count(env) == before


def test_server_paths_stay_inside_their_folders(env: Env, tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    hf_model(tmp_path / "allowed-evil" / "m")  # a sibling whose name merely starts the same
    (allowed / "link").symlink_to(tmp_path / "allowed-evil")
    auth = {"Authorization": f"Bearer {env.token}"}
    with serving(env, CUSTODY_SERVER_PATHS=str(allowed)) as base:
        for path in (tmp_path / "allowed-evil" / "m", allowed / "link" / "m"):
            r = httpx.post(f"{base}/api/v1/assets", headers=auth, json={"name": "evil", "path": str(path), "opts": {}})
            assert r.status_code == 400 and r.json()["exit_code"] == 2, r.text
        r = httpx.post(f"{base}/api/v1/audit/export", headers=auth, json={"out": str(allowed / "link" / "e.jsonl")})
        assert r.status_code == 400 and not (tmp_path / "allowed-evil" / "e.jsonl").exists()
        r = httpx.post(f"{base}/api/v1/policy/proposals", headers=auth,
                       json={"folder": str(tmp_path / "allowed-evil"), "purpose": "x"})
        assert r.status_code == 400
    with serving(env) as base:  # CUSTODY_SERVER_PATHS unset: no client path reaches the disk
        r = httpx.post(f"{base}/api/v1/audit/export", headers=auth, json={"out": str(allowed / "e.jsonl")})
        assert r.status_code == 400 and not (allowed / "e.jsonl").exists()
    assert cli("asset", "list", "--json", token=env.token).json == []


def test_the_inbox_never_holds_my_own_request(env: Env, people: dict[str, str]) -> None:
    tokens = make_people(env, {"bob": ("ml-lead", "platform"), "carol": ("security", "security")}).tokens
    with serving(env) as base:
        def inbox(who: str) -> list[str]:
            r = httpx.get(f"{base}/api/v1/requests/inbox", headers={"Authorization": f"Bearer {tokens[who]}"})
            return [i["id"] for i in r.json()]

        r = httpx.post(f"{base}/api/v1/requests", headers={"Authorization": f"Bearer {tokens['bob']}"},
                       json={"ref": "tiny", "to": "research", "kind": "research", "purpose": "mine", "ttl": "1d"})
        assert r.status_code == 201 and r.json()["state"] == "awaiting_approval"
        assert inbox("bob") == [] and inbox("carol") == [r.json()["id"]]  # an approver's own request waits for others


def test_a_request_is_shown_only_to_those_it_concerns(env: Env, people: dict[str, str]) -> None:
    """Its requester, whoever may approve it, and security, auditors and admins; to others it does not exist."""
    crew = make_people(env, {"rob": ("researcher", "vision"), "dave": ("backup-operator", "infra"),
                             "bob": ("ml-lead", "platform"), "carol": ("security", "security")})
    tokens = {**people, **crew.tokens}
    with serving(env) as base:
        def get(who: str, path: str) -> httpx.Response:
            return httpx.get(f"{base}/api/v1{path}", headers={"Authorization": f"Bearer {tokens[who]}"})

        made = httpx.post(f"{base}/api/v1/requests", headers={"Authorization": f"Bearer {tokens['alice']}"},
                          json={"ref": "tiny", "to": "research", "kind": "research", "purpose": "private study",
                                "ttl": "1d"}).json()
        rid = made["id"]
        for who in ("alice", "bob", "carol", "ada", "admin"):
            assert get(who, f"/requests/{rid}").status_code == 200, who
            assert get(who, f"/requests/{rid}/explain").status_code == 200, who
            assert rid in [r["id"] for r in get(who, "/requests").json()], who
        for who in ("rob", "dave"):
            for path in (f"/requests/{rid}", f"/requests/{rid}/explain"):
                r = get(who, path)
                assert r.status_code == 404 and r.json() == {"error": f"no request {rid}", "exit_code": 4}
            assert rid not in [r["id"] for r in get(who, "/requests").json()]
            assert "private study" not in get(who, "/requests").text
    refusal = [e for e in events(env) if e["actor"] == "rob" and e["action"] == "request.read"][0]
    assert refusal["outcome"] == "not_found" and refusal["subject"] == rid


def test_acting_on_a_request_answers_no_more_than_reading_it(env: Env, people: dict[str, str], tmp_path: Path) -> None:
    """A critical request approved by security only: an ml lead, a stranger and an operator get 404 for
    every action on it, as for reading it; break-glass reviews are not every role's to read."""
    hf_model(tmp_path / "crown", seed=5)
    register(env, tmp_path / "crown", "crown", "--sensitivity", "critical", "--jurisdiction", "US")
    crew = make_people(env, {"rob": ("researcher", "vision"), "bob": ("ml-lead", "platform"),
                             "dave": ("backup-operator", "infra")})
    tokens = {**people, **crew.tokens}
    with serving(env) as base:
        def post(who: str, path: str, body: dict | None = None) -> httpx.Response:
            return httpx.post(f"{base}/api/v1{path}", json=body or {},
                              headers={"Authorization": f"Bearer {tokens[who]}"})

        rid = post("alice", "/requests", {"ref": "crown", "kind": "read", "purpose": "secret plan"}).json()["id"]
        for who in ("bob", "rob"):
            for path, body in ((f"/requests/{rid}/deny", {"reason": "no"}), (f"/requests/{rid}/approve", {"otp": "123456"}),
                               (f"/requests/{rid}/cancel", None), (f"/requests/{rid}/revoke", {"reason": "x"}),
                               (f"/requests/{rid}/run", None)):
                r = post(who, path, body)  # 404, or a refusal of the role itself, which names no request
                assert r.status_code in (403, 404) and rid not in r.text.replace(f"no request {rid}", ""), (who, path)
                assert "secret plan" not in r.text and (r.status_code == 404 or "may not request." in r.text)
                assert who == "rob" or r.status_code == 404
        assert post("alice", f"/requests/{rid}/run").json()["exit_code"] == 6  # hers: a read is not run
        r = httpx.get(f"{base}/api/v1/reviews", headers={"Authorization": f"Bearer {tokens['rob']}"})
        assert r.status_code == 403
