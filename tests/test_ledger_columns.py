"""The ledger's own columns and its automatic checkpoints, attacked with database write access.

The indexed columns (actor, action, subject, outcome, time) are copies of fields of the hashed line;
whoever can write the database can edit them, and delete the newest events consistently with the
tree. Each bypass is performed here on real SQLite and PostgreSQL and must be refused or detected.
"""

from __future__ import annotations

import json
import re
import stat
import time

import httpx
import pyotp
import pytest
from sqlalchemy import text

from conftest import Env, cli, serving
from custody.control.ledger import checkpoint
from custody.control.ledger import store as ledger
from custody.control.services import audit
from test_ledger_store import TRIGGERS, fill, sql, verify

ALL_TRIGGERS = {  # an attacker drops every guard on the ledger's tables
    "sqlite": [*TRIGGERS["sqlite"], "DROP TRIGGER ledger_nodes_no_update", "DROP TRIGGER ledger_nodes_no_delete",
               "DROP TRIGGER ledger_checkpoints_no_update", "DROP TRIGGER ledger_checkpoints_no_delete"],
    "postgresql": ["ALTER TABLE ledger_events DISABLE TRIGGER ALL", "ALTER TABLE ledger_nodes DISABLE TRIGGER ALL",
                   "ALTER TABLE ledger_checkpoints DISABLE TRIGGER ALL"],
}


def schedule(env: Env, events: int, seconds: float) -> None:
    with open(env.home / "custody.toml", "a") as fh:
        fh.write(f"\n[ledger]\ncheckpoint_every_events = {events}\ncheckpoint_every_seconds = {seconds}\n")


def add_person(env: Env, name: str) -> str:
    r = cli("principal", "add", name, "--role", "researcher", "--team", "nlp", "--json", token=env.token)
    assert r.code == 0, r.stdout
    return r.json["token"]


def stored_checkpoints(env: Env) -> list[int]:
    ws = env.open()
    try:
        with ws.uow(readonly=True) as uow:
            return [int(s) for (s,) in uow.conn.execute(text("SELECT size FROM ledger_checkpoints ORDER BY size"))]
    finally:
        ws.close()


def size(env: Env) -> int:
    ws = env.open()
    try:
        with ws.uow(readonly=True) as uow:
            return ledger.size(uow)
    finally:
        ws.close()


def seqs_of(env: Env, actor: str) -> list[int]:
    return [seq for seq, line in _lines(env) if json.loads(line)["actor"] == actor]


def _lines(env: Env) -> list[tuple[int, str]]:
    ws = env.open()
    try:
        with ws.uow(readonly=True) as uow:
            return list(ledger.events(uow))
    finally:
        ws.close()


# -- the indexed columns ----------------------------------------------------------------------


@pytest.mark.parametrize("column, value", [("actor", "admin"), ("action", "zone.add"), ("subject", "elsewhere"),
                                           ("outcome", "ok"), ("time", "2001-01-01T00:00:00.000000Z")])
def test_an_edited_column_is_named_by_verify(any_env: Env, column: str, value: str) -> None:
    mallory = add_person(any_env, "mallory")
    assert cli("zone", "show", "mars", "--json", token=mallory).code == 4  # a refusal: outcome not "ok"
    seq = seqs_of(any_env, "mallory")[-1]
    assert verify(any_env).code == 0
    sql(any_env, *TRIGGERS[any_env.backend], f"UPDATE ledger_events SET {column} = :v WHERE seq = {seq}",
        params={"v": value})
    r = verify(any_env)
    assert r.code == 5
    assert r.json["error"].startswith(f"ledger event {seq} was altered: its {column} column says '{value}'"), r.json


def test_one_person_hidden_by_edited_columns_is_still_found(any_env: Env) -> None:
    """The reported bypass: every event of one person but one re-attributed in the actor column."""
    mallory = add_person(any_env, "mallory")
    for _ in range(6):
        assert cli("zone", "show", "prod", "--json", token=mallory).code == 0
    assert cli("audit", "checkpoint", "--json", token=any_env.token).code == 0
    hers = seqs_of(any_env, "mallory")
    hidden = hers[:-1]
    sql(any_env, *TRIGGERS[any_env.backend],
        f"UPDATE ledger_events SET actor = 'admin' WHERE seq IN ({', '.join(map(str, hidden))})")
    ws = any_env.open()
    try:
        found = [e for e in audit.search(ws, any_env.token, "mallory", limit=200)["events"]
                 if e["event"]["actor"] == "mallory"]
        assert [e["seq"] for e in found] == sorted(hers, reverse=True)
        flagged = {e["seq"]: e["column_problem"] for e in found if e["column_problem"]}
        assert sorted(flagged) == hidden
        assert all(p == "its actor column says 'admin' where its line says 'mallory'" for p in flagged.values())
        assert all(e["proof"]["verified"] for e in found)  # the lines themselves are intact
        # what the columns claim no longer matches anything the lines say
        sql(any_env, f"UPDATE ledger_events SET subject = 'zz-decoy' WHERE seq = {hers[-1]}")  # guards gone
        assert audit.search(ws, any_env.token, "zz-decoy")["events"] == []
        assert [e["seq"] for e in audit.search(ws, any_env.token, "PROD", limit=200)["events"]][:6] == \
            sorted(hers, reverse=True)  # by the lines' subject, case-insensitively
    finally:
        ws.close()
    r = verify(any_env)
    assert r.code == 5 and r.json["error"].startswith(f"ledger event {hidden[0]} was altered: its actor column")


def test_the_server_shows_what_the_line_says(env: Env) -> None:
    """Through a real `custody serve`: the ledger search of the API and of the portal page."""
    mallory = add_person(env, "mallory")
    assert cli("zone", "show", "prod", "--json", token=mallory).code == 0
    seq = seqs_of(env, "mallory")[-1]
    sql(env, *TRIGGERS[env.backend], f"UPDATE ledger_events SET actor = 'admin' WHERE seq = {seq}")
    with serving(env) as base:
        r = httpx.get(f"{base}/api/v1/audit/events", params={"q": "mallory"}, timeout=30,
                      headers={"Authorization": f"Bearer {env.token}"})
        assert r.status_code == 200, r.text
        row = next(e for e in r.json()["events"] if e["seq"] == seq)
        assert row["event"]["actor"] == "mallory"
        assert row["column_problem"] == "its actor column says 'admin' where its line says 'mallory'"
        with httpx.Client(base_url=base, timeout=30) as c:
            csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/portal/signin").text).group(1)
            assert c.post("/portal/signin", data={"csrf": csrf, "token": env.token}).status_code == 303
            page = c.get("/portal/ledger", params={"q": "mallory"}).text
        flagged = next(tr for tr in page.split("<tr ") if tr.startswith('class="event') and f"<td>{seq}</td>" in tr)
        assert "tampered" in flagged and "<td>mallory</td>" in flagged and "COLUMNS EDITED: its actor column" in flagged


def test_mfa_lockout_counts_failures_whose_columns_were_edited(any_env: Env) -> None:
    mallory = add_person(any_env, "mallory")
    totp = pyotp.TOTP(cli("mfa", "enroll", "--json", token=mallory).json["secret"])
    assert cli("mfa", "verify", totp.now(), "--json", token=mallory).code == 0
    good = {totp.at(time.time() + d) for d in (-30, 0, 30, 60)}
    wrong = next(c for c in ("000000", "111111", "222222", "333333", "444444") if c not in good)
    for _ in range(5):
        r = cli("mfa", "verify", wrong, "--json", token=mallory)
        assert r.code == 3 and r.json["error"] == "wrong one-time code", r.stdout
    failures = [seq for seq, line in _lines(any_env)
                if json.loads(line)["actor"] == "mallory" and "wrong one-time code" in line]
    assert len(failures) == 5
    # the attacker re-attributes the failures and moves them out of the window, in the columns
    sql(any_env, *TRIGGERS[any_env.backend],
        "UPDATE ledger_events SET actor = 'admin', outcome = 'ok', time = '2001-01-01T00:00:00.000000Z' "
        f"WHERE seq IN ({', '.join(map(str, failures))})")
    r = cli("mfa", "verify", totp.now(), "--json", token=mallory)
    assert r.code == 3 and "locked after 5 wrong codes" in r.json["error"], r.stdout


# -- automatic checkpoints --------------------------------------------------------------------


def test_a_checkpoint_is_taken_every_n_events(any_env: Env) -> None:
    schedule(any_env, events=5, seconds=3600)
    assert stored_checkpoints(any_env) == []
    fill(any_env, 13)
    sizes = stored_checkpoints(any_env)
    assert len(sizes) == 3 and all(b - a == 5 for a, b in zip(sizes, sizes[1:])), sizes
    assert 0 <= size(any_env) - sizes[-1] < 5
    copy = any_env.home / "ledger" / "checkpoint"
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert checkpoint.parse(copy.read_text())[0].size == sizes[-1]
    r = verify(any_env)
    assert r.code == 0 and r.json["latest_checkpoint"] == sizes[-1]
    assert r.json["events_after_checkpoint"] == r.json["tree_size"] - sizes[-1]


def test_a_checkpoint_is_taken_when_seconds_pass(any_env: Env) -> None:
    schedule(any_env, events=1000, seconds=1)
    fill(any_env, 1)
    first = stored_checkpoints(any_env)
    assert len(first) == 1  # the first action finds no checkpoint at all
    time.sleep(1.2)
    fill(any_env, 1)
    assert stored_checkpoints(any_env)[-1] == size(any_env) > first[-1]


def test_verify_reports_the_events_newer_than_the_newest_checkpoint(any_env: Env) -> None:
    schedule(any_env, events=1000, seconds=3600)
    fill(any_env, 4)
    r = verify(any_env)
    assert r.code == 0 and r.json["events_after_checkpoint"] == r.json["tree_size"] - r.json["latest_checkpoint"] > 0
    assert cli("audit", "checkpoint", "--json", token=any_env.token).code == 0
    r = verify(any_env)
    assert r.json["events_after_checkpoint"] == 1  # the checkpoint's own event
    human = cli("audit", "verify", token=any_env.token)
    assert human.code == 0 and "events newer than the newest checkpoint" in human.stdout


def _truncate(env: Env, keep: int, *, checkpoints_too: bool) -> None:
    """Delete the newest events as an attacker would: with their tree nodes and the head, consistently."""
    ws = env.open()
    with ws.uow(readonly=True) as uow:
        nodes = [(int(lv), int(ix)) for lv, ix in uow.conn.execute(text("SELECT level, idx FROM ledger_nodes"))]
    ws.close()
    beyond = [(lv, ix) for lv, ix in nodes if (ix + 1) << lv > keep]
    statements = [*ALL_TRIGGERS[env.backend], f"DELETE FROM ledger_events WHERE seq >= {keep}",
                  *(f"DELETE FROM ledger_nodes WHERE level = {lv} AND idx = {ix}" for lv, ix in beyond),
                  f"UPDATE ledger_head SET size = {keep}"]
    if checkpoints_too:
        statements.append(f"DELETE FROM ledger_checkpoints WHERE size > {keep}")
    sql(env, *statements)


@pytest.mark.parametrize("reach", ["database", "database-and-checkpoints"])
def test_deleting_the_newest_events_is_caught_against_the_checkpoint(any_env: Env, reach: str) -> None:
    schedule(any_env, events=4, seconds=3600)
    fill(any_env, 10)
    newest = stored_checkpoints(any_env)[-1]
    keep = newest - 2
    _truncate(any_env, keep, checkpoints_too=reach != "database")
    if reach == "database":  # the stored checkpoints alone catch it
        (any_env.home / "ledger" / "checkpoint").unlink()
        what = f"stored checkpoint at size {newest}"
    else:  # the database alone now looks whole: the workspace copy catches it
        what = f"the workspace checkpoint ledger/checkpoint (size {newest})"
    r = verify(any_env)
    assert r.code == 5 and r.json["error"] == f"{what} covers {newest} events but the ledger holds only {keep}", r.json
    left = stored_checkpoints(any_env)
    fill(any_env, 6)  # checkpoints fall due, but none is signed over the gap
    assert stored_checkpoints(any_env) == left
    r = verify(any_env)
    assert r.code == 5 and r.json["error"].startswith(f"ledger does not match {what}"), r.json


def test_the_server_takes_checkpoints_without_actions(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Events appended where the keyring cannot be opened are signed by `custody serve` on its timer."""
    schedule(env, events=1000, seconds=1)
    with serving(env):
        monkeypatch.delenv("CUSTODY_PASSPHRASE")  # this process cannot sign
        fill(env, 3)
        deadline = time.monotonic() + 20
        while (stored_checkpoints(env) or [0])[-1] < size(env) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stored_checkpoints(env)[-1] == size(env)


def test_the_schedule_is_checked(env: Env) -> None:
    with open(env.home / "custody.toml", "a") as fh:
        fh.write("\n[ledger]\ncheckpoint_every_events = 0\n")
    r = cli("zone", "list", "--json", token=env.token)
    assert r.code != 0 and "checkpoint_every_events" in r.stdout + r.stderr
