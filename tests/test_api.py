"""The REST API over HTTP against a real `custody serve` process."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pyotp
import pytest

from custody.control.tokens import fingerprint, mint
from conftest import CUSTODIAN, Env, hf_model, serving


@pytest.fixture
def server(env: Env, tmp_path: Path):  # noqa: ANN201
    with serving(env, CUSTODY_SERVER_PATHS=str(tmp_path)) as base:
        yield base


def call(base: str, method: str, path: str, token: str | None = None, **kw) -> httpx.Response:  # noqa: ANN003
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, f"{base}{path}", headers=headers, timeout=60, **kw)


def test_health_docs_and_auth(server: str, env: Env) -> None:
    assert call(server, "GET", "/readyz").json() == {"ready": True, "problems": []}
    spec = call(server, "GET", "/openapi.json").json()
    assert "/api/v1/requests" in spec["paths"] and spec["info"]["title"] == "custody"
    docs = call(server, "GET", "/docs").text
    assert "/docs/static/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()  # no CDN: works offline
    assert call(server, "GET", "/docs/static/swagger-ui-bundle.js").status_code == 200
    r = call(server, "GET", "/api/v1/zones")
    assert r.status_code == 401 and r.json() == {"error": "no token: set CUSTODY_TOKEN or pass --token", "exit_code": 3}
    assert call(server, "GET", "/api/v1/zones", token="cst_bad").status_code == 401
    zones = call(server, "GET", "/api/v1/zones", token=env.token).json()
    assert {z["name"] for z in zones} >= {"prod", "backup", "dr", "research"}
    assert call(server, "GET", "/api/v1/zones/mars", token=env.token).status_code == 404


def test_a_governed_copy_over_http(server: str, env: Env, tmp_path: Path) -> None:
    model = tmp_path / "m"
    hf_model(model)
    admin = env.token
    tokens, secrets = {}, {}

    def enrolled(name: str) -> None:
        secrets[name] = call(server, "POST", "/api/v1/mfa/enroll", tokens[name], json={}).json()["secret"]
        assert call(server, "POST", "/api/v1/mfa/verify", tokens[name],
                    json={"code": pyotp.TOTP(secrets[name]).now()}).json()["activated"] is True

    def soon(name: str) -> str:  # the current step was spent verifying
        totp = pyotp.TOTP(secrets[name])
        return totp.at(time.time() + totp.interval)

    proposals = {}
    for name, role, team in (("olga", "security", "office"), ("omar", "security", "office"),
                             ("alice", "researcher", "nlp"), ("bob", "ml-lead", "platform"),
                             ("carol", "security", "security")):
        body = {"name": name, "roles": [role], "team": team}
        if name in ("bob", "carol"):  # an approver makes their own token: the server sees its public part only
            tokens[name], token_id, token_hash = mint()
            body["public_token"] = f"{token_id}:{token_hash}"
            assert call(server, "POST", "/api/v1/principals", admin,
                        json={**body, "public_token": None}).status_code == 400  # none: refused
        r = call(server, "POST", "/api/v1/principals", admin, json=body)
        assert r.status_code == 201, r.text
        if "proposal" in r.json():  # an approver joins only once two security officers approve
            proposals[name] = r.json()["proposal"]
            assert r.json()["token_fingerprint"] == fingerprint(body["public_token"].split(":")[1])
        else:
            tokens[name] = r.json()["token"]
    assert sorted(proposals) == ["bob", "carol"]
    for name in ("olga", "omar"):
        enrolled(name)
        r = call(server, "POST", "/api/v1/identity-proposals/approve", tokens[name],
                 json={"proposal_ids": list(proposals.values()), "otp": soon(name)})
        assert r.status_code == 200, r.text
    assert [p["state"] for p in r.json()] == ["applied", "applied"]  # the second approval adds them
    for name in ("bob", "carol"):
        enrolled(name)
    r = call(server, "POST", "/api/v1/assets", admin, json={"name": "tiny", "path": str(model), "opts": {
                 "classification": "confidential", "jurisdictions": ["US"]}})
    assert r.status_code == 201, r.text
    denied = call(server, "POST", "/api/v1/requests", tokens["alice"],
                  json={"ref": "tiny", "to": "prod", "kind": "research", "purpose": "x", "ttl": "1d"})
    assert denied.status_code == 403 and denied.json()["decision"]["policy_ids"]
    req = call(server, "POST", "/api/v1/requests", tokens["alice"],
               json={"ref": "tiny", "to": "research", "kind": "research", "purpose": "eval", "ttl": "7d"}).json()
    assert req["state"] == "awaiting_approval"
    offered = call(server, "GET", "/api/v1/requests/choices", tokens["alice"], params={"asset": "tiny"}).json()
    assert {"zone": "research", "kind": "research"}.items() <= next(c for c in offered if c["zone"] == "research"
                                                                    and c["kind"] == "research").items()
    assert not any(c["zone"] == "prod" and c["kind"] == "research" for c in offered)
    preview = call(server, "POST", "/api/v1/requests/preview", tokens["alice"],
                   json={"ref": "tiny", "to": "research", "kind": "research", "purpose": "x", "ttl": "90d"}).json()
    assert preview["decision"]["allowed"] is False and "above the 30d" in preview["decision"]["reasons"][0]
    inbox = call(server, "GET", "/api/v1/requests/inbox", tokens["bob"]).json()
    assert [(i["id"], i["classification"], i["jurisdiction"], i["requester_team"]) for i in inbox] == [
        (req["id"], "confidential", "US", "nlp")]
    assert call(server, "GET", "/api/v1/requests/inbox", tokens["alice"]).json() == []  # never her own
    assert call(server, "POST", f"/api/v1/requests/{req['id']}/approve", tokens["alice"], json={}).status_code == 403
    for name in ("bob", "carol"):
        r = call(server, "POST", f"/api/v1/requests/{req['id']}/approve", tokens[name], json={"otp": soon(name)})
        assert r.status_code == 200, r.text
    assert r.json()["state"] == "approved"
    done = call(server, "POST", f"/api/v1/requests/{req['id']}/run", tokens["alice"])
    assert done.status_code == 200 and done.json()["state"] == "done", done.text
    again = call(server, "POST", f"/api/v1/requests/{req['id']}/run", tokens["alice"])
    assert again.status_code == 409 and again.json()["exit_code"] == 6
    assert call(server, "GET", "/metrics").status_code == 401  # counts are still for those allowed to see them
    assert call(server, "GET", "/metrics", tokens["alice"]).status_code == 403
    text = call(server, "GET", "/metrics", admin).text
    assert 'custody_copy_requests{kind="research",state="done"} 1' in text
    assert 'custody_replicas_active{kind="research",zone="research"} 1' in text
    assert "custody_approval_cycle_seconds_count 1" in text and "custody_ledger_events" in text
    assert call(server, "POST", "/api/v1/audit/verify", admin).json()["verified"] is True
    inventory = call(server, "GET", "/api/v1/inventory", tokens["alice"]).json()
    assert [(i["asset"], i["signed"], sorted(r["kind"] for r in i["replicas"])) for i in inventory] == [
        ("tiny", True, ["primary", "research"])]


@pytest.mark.skipif(CUSTODIAN != "local", reason="a passphrase seals only the local keyring")
def test_readiness_names_a_sealed_custodian(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from custody.control.services import health

    ws = env.open()
    assert health.problems(ws) == []
    ws.close()
    monkeypatch.setenv("CUSTODY_PASSPHRASE", "not it")
    ws = env.open()
    assert health.problems(ws) == ["custodian: wrong passphrase: the keyring did not unseal"]
    ws.close()


def test_guessing_tokens_backs_off(server: str, env: Env) -> None:
    codes = [call(server, "GET", "/api/v1/zones", token=f"cst_{i:016x}_guess").status_code for i in range(5)]
    assert codes[:3] == [401, 401, 401] and codes[3:] == [429, 429]
    r = call(server, "GET", "/api/v1/zones", token="cst_x")
    assert r.status_code == 429 and r.json()["exit_code"] == 3 and int(r.headers["retry-after"]) >= 1
    assert call(server, "GET", "/api/v1/zones", token=env.token).status_code == 200  # a valid token never waits
