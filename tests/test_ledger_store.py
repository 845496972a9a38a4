"""The stored ledger on SQLite and PostgreSQL: append-only, provable, and tamper-evident."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pymerkle import InmemoryTree
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from conftest import Env, cli
from custody.control.ledger import checkpoint, merkle
from custody.control.ledger import store as ledger
from custody.domain.errors import InvalidInput

TRIGGERS = {
    "sqlite": ["DROP TRIGGER ledger_events_no_update", "DROP TRIGGER ledger_events_no_delete"],
    "postgresql": ["DROP TRIGGER ledger_events_append_only ON ledger_events"],
}


def fill(env: Env, n: int = 20) -> None:
    """Add n events through real actions."""
    for i in range(n):
        assert cli("zone", "show", "prod", "--json", token=env.token).code == 0


def sql(env: Env, *statements: str, params: dict | None = None) -> None:
    ws = env.open()
    try:
        with ws.engine.connect() as conn:
            with conn.begin():
                for s in statements:
                    conn.execute(text(s), params or {})
    finally:
        ws.close()


def verify(env: Env, *extra: str):  # noqa: ANN201
    return cli("audit", "verify", "--json", *extra, token=env.token)


def test_append_prove_and_verify(any_env: Env, tmp_path: Path) -> None:
    fill(any_env, 10)
    ws = any_env.open()
    with ws.uow(readonly=True) as uow:
        n = ledger.size(uow)
        lines = [line.encode() for _, line in ledger.events(uow)]
        root = ledger.root(uow)[1]
    ws.close()
    assert len(lines) == n >= 17
    # An independent implementation computes the same root from the event lines.
    tree = InmemoryTree(algorithm="sha256")
    for line in lines:
        tree.append_entry(line)
    assert tree.get_root() == root
    for seq in (0, 5, n - 1):
        proof = cli("audit", "prove", str(seq), "--json", token=any_env.token).json
        assert proof["tree_size"] >= n
        merkle.verify_inclusion(bytes.fromhex(proof["leaf_hash"]), seq, proof["tree_size"],
                                [bytes.fromhex(h) for h in proof["path"]], bytes.fromhex(proof["root"]))
    c = cli("audit", "consistency", "3", str(n), "--json", token=any_env.token).json
    merkle.verify_consistency(3, n, bytes.fromhex(c["old_root"]), bytes.fromhex(c["new_root"]),
                              [bytes.fromhex(h) for h in c["proof"]])
    assert cli("audit", "prove", "999999", "--json", token=any_env.token).code == 4
    r = verify(any_env)
    assert r.code == 0 and r.json["verified"] is True


def test_export_recomputes_to_the_checkpoint_root(any_env: Env, tmp_path: Path) -> None:
    fill(any_env, 5)
    cp = cli("audit", "checkpoint", "--json", token=any_env.token).json
    out = tmp_path / "events.jsonl"
    assert cli("audit", "export", "--out", str(out), "--json", token=any_env.token).code == 0
    lines = out.read_bytes().split(b"\n")[:-1]
    nodes = merkle.MemoryNodes()
    for line in lines[: cp["tree_size"]]:
        nodes.append(line)
    assert nodes.root().hex() == cp["root"]
    pub = load_pem_public_key((any_env.home / "keys" / "ledger.pub.pem").read_bytes())
    parsed = checkpoint.verify(cp["note"], cp["note"].split("\n")[0], pub)
    assert parsed.size == cp["tree_size"]


def test_ledger_refuses_update_and_delete(any_env: Env) -> None:
    for statement in ("UPDATE ledger_events SET actor = 'x' WHERE seq = 1", "DELETE FROM ledger_events WHERE seq = 1",
                      "UPDATE ledger_nodes SET hash = hash WHERE level = 0", "DELETE FROM ledger_nodes"):
        with pytest.raises(DBAPIError, match="append-only"):
            sql(any_env, statement)
    if any_env.backend == "postgresql":
        with pytest.raises(DBAPIError, match="append-only"):
            sql(any_env, "TRUNCATE ledger_events")


def test_edit_after_dropping_triggers_names_the_seq(any_env: Env) -> None:
    fill(any_env, 5)
    sql(any_env, *TRIGGERS[any_env.backend],
        "UPDATE ledger_events SET line = replace(line, '\"actor\":\"admin\"', '\"actor\":\"eve\"') WHERE seq = 10")
    r = verify(any_env)
    assert r.code == 5
    assert r.json["error"] == "ledger event 10 was altered: its hash does not match the tree"


def test_deleted_event_is_named(any_env: Env) -> None:
    fill(any_env, 5)
    sql(any_env, *TRIGGERS[any_env.backend], "DELETE FROM ledger_events WHERE seq = 9")
    r = verify(any_env)
    assert r.code == 5 and "ledger event 9 is missing" in r.json["error"]


def test_reordered_events_are_named(any_env: Env) -> None:
    fill(any_env, 5)
    ws = any_env.open()
    with ws.uow(readonly=True) as uow:
        a, b = ledger.event_line(uow, 10).decode(), ledger.event_line(uow, 11).decode()
    ws.close()
    sql(any_env, *TRIGGERS[any_env.backend], "UPDATE ledger_events SET line = :b WHERE seq = 10",
        "UPDATE ledger_events SET line = :a WHERE seq = 11", params={"a": a, "b": b})
    r = verify(any_env)
    assert r.code == 5 and "ledger event 10 says it is event 11" in r.json["error"]


def test_inserted_event_is_named(any_env: Env) -> None:
    fill(any_env, 3)
    ws = any_env.open()
    with ws.uow(readonly=True) as uow:
        n = ledger.size(uow)
        rows = [(s, line) for s, line in ledger.events(uow) if s >= 7]
    ws.close()
    statements = [*TRIGGERS[any_env.backend], "DELETE FROM ledger_events WHERE seq >= 7",
                  f"UPDATE ledger_head SET size = {n + 1}"]
    sql(any_env, *statements)
    forged = json.loads(rows[0][1])
    forged.update(actor="eve", action="asset.register", subject="nothing-to-see")
    inserts = [(7, json.dumps(forged, sort_keys=True, separators=(",", ":")))]
    for seq, line in rows:
        doc = json.loads(line)
        doc["seq"] = seq + 1
        inserts.append((seq + 1, json.dumps(doc, sort_keys=True, separators=(",", ":"))))
    ws = any_env.open()
    with ws.engine.connect() as conn, conn.begin():
        for seq, line in inserts:
            conn.execute(text("INSERT INTO ledger_events (seq, time, actor, action, outcome, line) "
                              "VALUES (:s, 't', 'a', 'b', 'ok', :l)"), {"s": seq, "l": line})
    ws.close()
    r = verify(any_env)
    assert r.code == 5 and "ledger event 7 was altered" in r.json["error"], (n, r.stdout)


def test_event_beyond_the_head_is_named(any_env: Env) -> None:
    fill(any_env, 2)
    ws = any_env.open()
    with ws.uow(readonly=True) as uow:
        n = ledger.size(uow)
    ws.close()
    sql(any_env, "INSERT INTO ledger_events (seq, time, actor, action, outcome, line) "
                 f"VALUES ({n + 5}, 't', 'eve', 'x', 'ok', '{{}}')")
    r = verify(any_env)
    assert r.code == 5 and f"ledger event {n + 5} lies beyond the ledger head" in r.json["error"]
    # and the next action refuses to write past a ledger in that state? No: appends go at the head,
    # which is still free; only a collision at the head itself is refused.


def test_checkpoint_signed_by_another_key_is_refused(any_env: Env, tmp_path: Path) -> None:
    cp = cli("audit", "checkpoint", "--json", token=any_env.token).json
    origin = cp["note"].split("\n")[0]
    forged = checkpoint.sign(checkpoint.Checkpoint(origin, cp["tree_size"], bytes.fromhex(cp["root"])), origin,
                             Ed25519PrivateKey.generate())
    path = tmp_path / "forged.cp"
    path.write_text(forged)
    r = verify(any_env, "--checkpoint", str(path))
    assert r.code == 5 and "does not verify" in r.json["error"] or "not signed by the ledger key" in r.json["error"]
    good = tmp_path / "good.cp"
    good.write_text(cp["note"])
    assert verify(any_env, "--checkpoint", str(good)).code == 0


def test_rewritten_history_resigned_with_new_key_is_caught(any_env: Env, tmp_path: Path) -> None:
    """An attacker with the database and the workspace rewrites an event, rebuilds every node,
    and re-signs with a key of their own: a checkpoint saved earlier still catches it."""
    fill(any_env, 4)
    saved = tmp_path / "saved.cp"
    saved.write_text(cli("audit", "checkpoint", "--json", token=any_env.token).json["note"])
    ws = any_env.open()
    with ws.uow(readonly=True) as uow:
        lines = [line for _, line in ledger.events(uow)]
    ws.close()
    doc = json.loads(lines[5])
    doc["actor"] = "eve"
    lines[5] = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    nodes = merkle.MemoryNodes()
    for line in lines:
        nodes.append(line.encode())
    drop = TRIGGERS[any_env.backend] + (
        ["DROP TRIGGER ledger_nodes_no_update", "DROP TRIGGER ledger_nodes_no_delete",
         "DROP TRIGGER ledger_checkpoints_no_update", "DROP TRIGGER ledger_checkpoints_no_delete"]
        if any_env.backend == "sqlite" else
        ["DROP TRIGGER ledger_nodes_append_only ON ledger_nodes",
         "DROP TRIGGER ledger_checkpoints_append_only ON ledger_checkpoints"])
    sql(any_env, *drop, "DELETE FROM ledger_nodes", "DELETE FROM ledger_checkpoints",
        "UPDATE ledger_events SET line = :l, actor = 'eve' WHERE seq = 5", params={"l": lines[5]})
    ws = any_env.open()
    with ws.engine.connect() as conn, conn.begin():
        for (level, idx), h in nodes.nodes.items():
            conn.execute(text("INSERT INTO ledger_nodes (level, idx, hash) VALUES (:l, :i, :h)"),
                         {"l": level, "i": idx, "h": h})
    ws.close()
    new_key = Ed25519PrivateKey.generate()
    from cryptography.hazmat.primitives import serialization

    (any_env.home / "keys" / "ledger.pub.pem").write_bytes(new_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (any_env.home / "ledger" / "checkpoint").unlink()  # the workspace's own copy goes too
    r = verify(any_env)
    assert r.code == 5 and "witnessed checkpoint" in r.json["error"]  # the witness holds the old history ...
    # ... so the attacker, who can write the workspace, deletes it too, and what that refusal left behind
    shutil.rmtree(any_env.home / "witness")
    (any_env.home / "ledger" / "checkpoint").unlink(missing_ok=True)
    sql(any_env, "DELETE FROM ledger_checkpoints")
    assert verify(any_env).code == 0  # the rewrite is internally consistent ...
    r = verify(any_env, "--checkpoint", str(saved))
    assert r.code == 5  # ... but not with what was saved before (or a witness kept out of their reach)
    assert "checkpoint" in r.json["error"]


def test_appends_are_logarithmic(any_env: Env) -> None:
    """Each append writes its leaf and only the parents it completes (amortised < 2 rows)."""
    fill(any_env, 30)
    ws = any_env.open()
    with ws.uow(readonly=True) as uow:
        n = ledger.size(uow)
        count = uow.conn.execute(text("SELECT count(*) FROM ledger_nodes")).scalar_one()
    ws.close()
    assert count < 2 * n


def test_search_flags_a_tampered_event_and_keeps_the_rest(any_env: Env) -> None:
    from custody.control.services import audit

    fill(any_env, 6)
    assert cli("audit", "checkpoint", "--json", token=any_env.token).code == 0
    ws = any_env.open()
    with ws.uow(readonly=True) as uow:
        line = ledger.event_line(uow, 3).decode()
    ws.close()
    sql(any_env, *TRIGGERS[any_env.backend], "UPDATE ledger_events SET line = :l WHERE seq = 3",
        params={"l": line.replace('"zone.show"', '"zone.shoW"') if '"zone.show"' in line else line + " "})
    ws = any_env.open()
    try:
        found = audit.search(ws, any_env.token, limit=200)
        assert found["checkpoint"]["verified"] is True
        proofs = {e["seq"]: e["proof"] for e in found["events"] if e["proof"]}
        assert proofs[3]["verified"] is False and proofs[3]["problem"]
        assert all(p["verified"] for seq, p in proofs.items() if seq != 3) and len(proofs) > 5
        assert [e["seq"] for e in audit.search(ws, any_env.token, "100%_", limit=200)["events"]] == []  # literal
        with pytest.raises(InvalidInput):
            audit.search(ws, any_env.token, before=-1)
        with pytest.raises(InvalidInput):
            audit.search(ws, any_env.token, "x" * 201)
    finally:
        ws.close()
