"""The server and its host, attacked for real against a real `custody serve`: the authentication
back-off (per token id, per address, never against a valid token; forwarded addresses believed
only from trusted proxies), zone URLs as server paths, and a workspace private to its owner."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import httpx
import pytest

from conftest import PASSPHRASE, Env, cli, events, free_port, run_custody, server_process, serving

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def unknown(i: int) -> str:
    """A well-formed token whose id names nobody."""
    return f"cst_{i:016x}_{'A' * 43}"


def guess(token: str, i: int) -> str:
    """The token's id with a wrong secret."""
    return f"{token[:21]}{i:043d}"


def get(base: str, token: str, path: str = "/api/v1/zones", via: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    if via:
        headers["X-Forwarded-For"] = via
    return httpx.get(f"{base}{path}", headers=headers, timeout=30)


def backed_off(r: httpx.Response, about: str) -> bool:
    return (r.status_code == 429 and r.json()["exit_code"] == 3 and about in r.json()["error"]
            and int(r.headers["retry-after"]) >= 1)


# -- the back-off ------------------------------------------------------------------------------


def test_a_valid_token_is_served_from_an_address_that_is_backed_off(env: Env) -> None:
    with serving(env) as base:
        assert [get(base, unknown(i)).status_code for i in range(3)] == [401, 401, 401]
        assert backed_off(get(base, unknown(3)), "from this address")
        assert backed_off(get(base, "cst_malformed"), "from this address")
        assert get(base, env.token).status_code == 200
        assert backed_off(get(base, unknown(4), "/metrics"), "from this address")  # /metrics is no side door
        assert get(base, env.token, "/metrics").status_code == 200

        with httpx.Client(base_url=base) as c:  # the portal's sign-in form: the same count, the same rule
            pre = CSRF.search(c.get("/portal/signin").text).group(1)
            r = c.post("/portal/signin", data={"csrf": pre, "token": unknown(5)})
            assert r.status_code == 429 and "from this address" in r.text and int(r.headers["retry-after"]) >= 1
            r = c.post("/portal/signin", data={"csrf": pre, "token": env.token})
            assert r.status_code == 303 and "custody_session" in r.cookies


def test_guessing_one_tokens_secret_backs_off_that_id_never_its_holder(env: Env) -> None:
    token_id = env.token[4:20]
    with serving(env, CUSTODY_TRUSTED_PROXIES="127.0.0.1") as base:
        # from a new address each time: the count follows the token id, not the address
        codes = [get(base, guess(env.token, i), via=f"198.51.100.{i}").status_code for i in range(3)]
        assert codes == [401, 401, 401]
        assert backed_off(get(base, guess(env.token, 3), via="198.51.100.3"), "for this token")
        assert get(base, env.token, via="198.51.100.3").status_code == 200  # the holder, even from there
        assert get(base, env.token).status_code == 200
        assert get(base, unknown(0), via="198.51.100.1").status_code == 401  # those addresses were not counted

        with httpx.Client(base_url=base) as c:  # the portal too: the holder signs in while the id is attacked
            pre = CSRF.search(c.get("/portal/signin").text).group(1)
            r = c.post("/portal/signin", data={"csrf": pre, "token": guess(env.token, 9)})
            assert r.status_code == 429 and "for this token" in r.text
            assert c.post("/portal/signin", data={"csrf": pre, "token": env.token}).status_code == 303
    refused = [e for e in events(env) if e["actor"] == f"token:{token_id}"]
    assert len(refused) == 3 and {e["outcome"] for e in refused} == {"denied"}  # tried and refused: ledgered;
    # the backed-off ones never reached an action


def test_forwarded_addresses_are_believed_only_from_trusted_proxies(env: Env) -> None:
    with serving(env) as base:  # nothing trusted: a fresh X-Forwarded-For per try changes nothing
        codes = [get(base, unknown(i), via=f"203.0.113.{i}").status_code for i in range(3)]
        assert codes == [401, 401, 401]
        assert backed_off(get(base, unknown(3), via="203.0.113.3"), "from this address")
    with serving(env, "--workers", "2") as base:  # each worker process keeps its own count: at most 3 each
        codes = [get(base, unknown(i), via=f"203.0.113.{i}").status_code for i in range(12)]
        assert codes.count(401) <= 6 and codes.count(429) >= 6, codes
    with serving(env, CUSTODY_TRUSTED_PROXIES="10.9.9.9, 127.0.0.0/8") as base:  # behind a proxy on loopback
        codes = [get(base, unknown(i), via="198.51.100.7").status_code for i in range(3)]
        assert codes == [401, 401, 401]
        assert backed_off(get(base, unknown(3), via="198.51.100.7"), "from this address")
        assert get(base, unknown(4), via="198.51.100.8").status_code == 401  # another client behind it
    for bad in ("*", "10.0.0.0/8,proxy.internal"):
        r = run_custody("serve", "--port", str(free_port()), env=env.environ(CUSTODY_TRUSTED_PROXIES=bad), timeout=30)
        assert r.code == 2 and "CUSTODY_TRUSTED_PROXIES" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# -- zone URLs ---------------------------------------------------------------------------------


def zone(name: str, url: str) -> dict:
    return {"name": name, "url": url, "kind": "research", "region": "local", "jurisdiction": "US", "security_level": 3}


def test_a_zone_url_through_the_api_is_a_server_path(env: Env, tmp_path: Path) -> None:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "link").symlink_to(outside)
    auth = {"Authorization": f"Bearer {env.token}"}
    zones_before = cli("zone", "list", "--json", token=env.token).json
    with serving(env, CUSTODY_SERVER_PATHS=str(allowed)) as base:
        for i, url in enumerate((outside.as_uri(), f"file://{allowed}/../outside/z", (allowed / "link" / "z").as_uri(),
                                 f"file:{outside}/z", f"file://localhost{outside}/z", f"local://{outside}/z",
                                 f"file://{tmp_path}/allowed-not/z")):
            r = httpx.post(f"{base}/api/v1/zones", headers=auth, json=zone(f"evil{i}", url))
            assert r.status_code == 400 and r.json()["exit_code"] == 2, (url, r.text)
            assert "CUSTODY_SERVER_PATHS" in r.json()["error"] and "\n" not in r.json()["error"]
        assert list(outside.iterdir()) == [] and cli("zone", "list", "--json", token=env.token).json == zones_before
        r = httpx.post(f"{base}/api/v1/zones", headers=auth, json=zone("inside", (allowed / "z").as_uri()))
        assert r.status_code == 201 and r.json()["url"] == f"file://{allowed.resolve()}/z"
        assert (allowed / "z" / "replicas").is_dir()
    with serving(env) as base:  # CUSTODY_SERVER_PATHS unset: no file:// zone through the API at all
        r = httpx.post(f"{base}/api/v1/zones", headers=auth, json=zone("inside2", (allowed / "z2").as_uri()))
        assert r.status_code == 400 and not (allowed / "z2").exists()
    r = cli("zone", "add", "local", "--url", (outside / "z").as_uri(), "--kind", "research", "--region", "local",
            "--jurisdiction", "US", "--security-level", "3", "--json", token=env.token)
    assert r.code == 0, r.stdout + r.stderr  # on this machine, with the workspace itself: unrestricted


# -- a private workspace -----------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_workspace_is_private_and_serving_checks_it(tmp_path: Path) -> None:
    home = tmp_path / "ws"
    environ = {**os.environ, "CUSTODY_HOME": str(home), "CUSTODY_PASSPHRASE": PASSPHRASE}
    r = run_custody("init", "--json", env=environ)
    assert r.code == 0, r.stderr
    env = Env(home=home, token=r.json["admin_token"], backend="sqlite")
    (home / "custody.db-writers.lock").unlink()
    (home / "keys" / "keyring.lock").unlink()
    assert run_custody("zone", "list", "--json", env=env.environ()).code == 0  # a later process: the lock again
    old = os.umask(0o022)
    try:  # this process, with a permissive umask, adds a zone: the keyring is rewritten, its lock made again
        assert cli("zone", "add", "extra", "--url", (tmp_path / "extra").as_uri(), "--kind", "research",
                   "--region", "local", "--jurisdiction", "US", "--security-level", "3", token=env.token,
                   env={"CUSTODY_HOME": str(home), "CUSTODY_PASSPHRASE": PASSPHRASE}).code == 0
        ws = env.open()  # its open connection keeps the WAL and shared-memory files, made by this process
    finally:
        os.umask(old)
    try:
        for folder in (home, home / "keys", home / "zones", home / "zones" / "prod"):
            assert mode(folder) == 0o700, folder
        for name in ("custody.toml", "custody.db", "custody.db-wal", "custody.db-shm", "custody.db-writers.lock",
                     "keys/keyring.sealed", "keys/keyring.lock"):
            assert mode(home / name) == 0o600, name
    finally:
        ws.close()

    with serving(env) as base:
        assert httpx.get(f"{base}/readyz").json() == {"ready": True, "problems": []}
        (home / "custody.db").chmod(0o644)
        (home / "keys" / "keyring.sealed").chmod(0o640)
        r = httpx.get(f"{base}/readyz")
        assert r.status_code == 503 and r.json()["problems"] == [
            "custody.db is readable by others (mode 0644)", "keys/keyring.sealed is readable by its group (mode 0640)"]
    r = run_custody("serve", "--port", str(free_port()), env=env.environ(), timeout=30)
    assert r.code == 6 and "custody.db is readable by others (mode 0644)" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    (home / "custody.db").chmod(0o600)
    (home / "keys" / "keyring.sealed").chmod(0o600)
    home.chmod(0o755)
    r = run_custody("serve", "--port", str(free_port()), env=env.environ(), timeout=30)
    assert r.code == 6 and "the workspace folder is readable by others (mode 0755)" in r.stderr
    home.chmod(0o700)
    with server_process([], env.environ()) as base:
        assert httpx.get(f"{base}/readyz").status_code == 200


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_init_makes_a_private_workspace_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    home = tmp_path / "ws"
    home.mkdir(mode=0o755)  # a folder made beforehand: it becomes the workspace, so private too
    old = os.umask(umask)
    try:
        assert cli("init", "--home", str(home), "--json", env={"CUSTODY_PASSPHRASE": PASSPHRASE}).code == 0
        assert os.umask(umask) == umask  # init gave this process its umask back
    finally:
        os.umask(old)
    from custody.control.services import health

    assert health.exposed(home) == []
    assert mode(home) == 0o700 and mode(home / "keys") == 0o700 and mode(home / "custody.db") == 0o600
