"""Reading and proving the ledger: export, checkpoints, inclusion and consistency proofs, verify.

`verify` trusts nothing stored: it recomputes every leaf from the event lines, rebuilds the
tree in one pass (O(n) time, O(log n) memory), and compares with the stored nodes, every stored
checkpoint, the workspace's copy of the newest, the newest checkpoint the witness cosigned (kept outside
the database: deleting every other checkpoint does not hide a truncation or a rewrite from it), and
optionally a checkpoint the caller saved earlier (and pinned public keys); in the same pass each event's
indexed columns are held to its line.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _json_string
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import func, select

from custody.control.door import act, data_step, record_after
from custody.control.ledger import checkpoint, checkpoints, merkle, witness
from custody.control.ledger import store as ledger
from custody.control.store import schema as t
from custody.control.workspace import Workspace
from custody.domain.errors import CustodyError, IntegrityError, InvalidInput


def export(ws: Workspace, token: str | None, out: Path) -> dict:
    """Write the events as JSON Lines, read from one snapshot (no write lock held), renamed into place."""
    with act(ws, token, "audit.export", details={"out": str(out)}) as a:
        pass
    tmp = out.with_name(f".{out.name}.partial")
    with data_step(ws, a):
        try:
            with ws.uow(readonly=True) as uow, open(tmp, "wb") as fh:
                n = ledger.size(uow)
                for _, line in ledger.events(uow, before=n):
                    fh.write(line.encode("utf-8") + b"\n")
                size, root = ledger.root(uow, n)
            os.replace(tmp, out)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise InvalidInput(f"cannot write {out}: {exc.strerror}") from None
    return {"out": str(out), "events": size, "tree_size": size, "root": root.hex()}


def make_checkpoint(ws: Workspace, token: str | None) -> dict:
    with act(ws, token, "audit.checkpoint") as a:
        size, root = ledger.root(a.uow)
        checkpoints.check_extends(ws, a.uow, size, root)
        note = checkpoints.sign(ws, size, root)
        checkpoints.store(a.uow, size, note)
        a.record(details={"tree_size": size, "root": root.hex()})
    try:
        checkpoints.keep_copy(ws, note)
    except OSError:
        pass  # the database holds it; the next checkpoint retries the copy
    witnessed = checkpoints.witness_note(ws, note)  # a failure is ledgered and shown, never raised
    return {"tree_size": size, "root": root.hex(), "note": note, "witness": witnessed}


def witness_state(ws: Workspace, token: str | None) -> dict:
    """What the witness holds for this ledger (checked with keys/witness.pub.pem and the ledger key): its
    newest cosigned checkpoint, when it cosigned it, where it is kept, and how far the ledger has moved on."""
    with act(ws, token, "audit.witness") as a:
        w = checkpoints.open_witness(ws)
        held = w.latest(ws.origin)
        n = ledger.size(a.uow)
        state = {"origin": ws.origin, "witness": w.name, "location": w.location(ws.origin),
                 "vkey": witness.vkey(w.name, w.public_key) if w.public_key else None,
                 "witnessed_size": held.checkpoint.size if held else 0,
                 "root": held.checkpoint.root.hex() if held else None,
                 "time": checkpoints.iso_time(held.timestamp) if held else None,
                 "ledger_size": n, "events_after_witness": n - (held.checkpoint.size if held else 0)}
        a.record(details={"witnessed_size": state["witnessed_size"]})
    return state


def prove(ws: Workspace, token: str | None, seq: int, size: int | None = None) -> dict:
    with act(ws, token, "audit.prove", subject=str(seq), details={"proof": "inclusion"}) as a:
        return ledger.prove_inclusion(a.uow, seq, size).to_dict()


def consistency(ws: Workspace, token: str | None, old: int, new: int) -> dict:
    with act(ws, token, "audit.prove", details={"proof": "consistency", "old": old, "new": new}) as a:
        proof = ledger.prove_consistency(a.uow, old, new)
        _, old_root = ledger.root(a.uow, old)
        _, new_root = ledger.root(a.uow, new)
    merkle.verify_consistency(old, new, old_root, new_root, proof)
    return {"old_size": old, "new_size": new, "old_root": old_root.hex(), "new_root": new_root.hex(),
            "proof": [h.hex() for h in proof]}


@dataclass
class _Expect:
    size: int
    root: bytes
    what: str


def verify(ws: Workspace, token: str | None, saved: Path | None = None, public_key: Path | None = None,
           witness_key: Path | None = None) -> dict:
    with act(ws, token, "audit.verify", deferred=True) as a:
        pass
    try:
        result = _verify(ws, saved, public_key, witness_key)
    except CustodyError as exc:
        try:
            record_after(ws, a, exc.outcome, details={"reason": exc.message})
        except CustodyError:
            pass  # a ledger this broken cannot take the event; the caller still learns what is wrong
        raise
    record_after(ws, a, details=result)
    return result


def _verify(ws: Workspace, saved: Path | None, public_key: Path | None, witness_key: Path | None) -> dict:
    key = checkpoints.ledger_key(ws, public_key)
    # Read before the snapshot, which then holds every event it covers; refused if either signature fails.
    pinned = checkpoints.witness_key(ws, witness_key) if witness_key else None
    held = checkpoints.open_witness(ws, ledger_pub=key, witness_pub=pinned).latest(ws.origin)
    expectations: list[_Expect] = []
    if saved is not None:
        try:
            note = saved.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"cannot read checkpoint {saved}: {exc}") from None
        cp = _verified(note, ws.origin, key, f"checkpoint {saved}")
        expectations.append(_Expect(cp.size, cp.root, f"saved checkpoint {saved.name} (size {cp.size})"))
    copy = checkpoints.read_copy(ws)  # read before the snapshot, which then holds every event it covers
    if copy is not None:
        cp = _verified(copy, ws.origin, key, f"the workspace checkpoint {checkpoints.COPY}")
        expectations.append(_Expect(cp.size, cp.root, f"the workspace checkpoint {checkpoints.COPY} (size {cp.size})"))
    with ws.uow(readonly=True) as uow:
        n = ledger.size(uow)
        stored_cps = uow.conn.execute(select(t.ledger_checkpoints.c.size, t.ledger_checkpoints.c.note)
                                      .order_by(t.ledger_checkpoints.c.size)).all()
        for row in stored_cps:
            cp = _verified(row.note, ws.origin, key, f"stored checkpoint at size {row.size}")
            if cp.size != row.size:
                raise IntegrityError(f"stored checkpoint at size {row.size} signs size {cp.size}")
            expectations.append(_Expect(cp.size, cp.root, f"stored checkpoint at size {cp.size}"))
        if held is not None:  # last: where the others agree with it, they are the ones named
            size = held.checkpoint.size
            expectations.append(_Expect(size, held.checkpoint.root,
                                        f"the witnessed checkpoint (size {size}, {held.location})"))
        for e in expectations:
            if e.size > n:
                raise IntegrityError(f"{e.what} covers {e.size} events but the ledger holds only {n}")
        root = _recompute(uow, n, expectations)
        releases = _releases_ledgered(ws, uow, n)
        if saved is not None and expectations[0].size:
            old = expectations[0]
            proof = merkle.consistency_proof(old.size, n, ledger.StoredNodes(uow))
            merkle.verify_consistency(old.size, n, old.root, root, proof)
    latest = max((e.size for e in expectations), default=None)
    return {"verified": True, "tree_size": n, "root": root.hex(), "checkpoints_checked": len(expectations),
            "latest_checkpoint": latest, "events_after_checkpoint": n - (latest or 0),
            "witnessed_size": held.checkpoint.size if held else None,
            "witness_location": held.location if held else None, "key_releases_checked": releases}


SETTLE = timedelta(minutes=2)  # a release is journalled just before its event commits: younger ones may still be on the way


def _releases_ledgered(ws: Workspace, uow, n: int) -> int:  # noqa: ANN001
    """Every key the custodian released under a grant has its event in the ledger: the journal (kept
    outside the database) names the request or the read, and an event deleted with its checkpoints
    (inside the window before the next one) is found missing here. Returns how many were checked."""
    from custody.control.workspace import JOURNAL
    from custody.keys.journal import Journal

    journal = Journal(ws.home / JOURNAL, None)
    releases = journal.releases()
    if not releases:
        return 0
    named = set()  # the requests and reads the ledger's lines (checked against the tree above) name
    for (line,) in uow.conn.execute(select(t.ledger_events.c.line).where(
            t.ledger_events.c.seq < n, t.ledger_events.c.action.in_(("request.run", "replica.open")))):
        event = json.loads(line)
        named.add(event.get("request_id"))
        named.add((event.get("details") or {}).get("release"))
    settled = datetime.now(timezone.utc) - SETTLE
    for seq, at, op, request in releases:
        if request not in named and datetime.fromisoformat(at) < settled:
            raise IntegrityError(f"the custodian released a key ({op}, journal line {seq}, {at}) for {request}, and the "
                                 "ledger holds no event of it: an event was deleted")
    return len(releases)


def _verified(note: str, origin: str, key: Ed25519PublicKey, what: str) -> checkpoint.Checkpoint:
    try:
        cp = checkpoint.verify(note, origin, key)
    except IntegrityError as exc:
        raise IntegrityError(f"{what}: {exc.message}") from None
    if cp.origin != origin:
        raise IntegrityError(f"{what} is for another ledger ({cp.origin})")
    return cp


def _recompute(uow, n: int, expectations: list[_Expect]) -> bytes:  # noqa: ANN001
    """One pass over the events: order, every stored node against the rebuilt tree, roots at checkpoints."""
    by_size: dict[int, list[_Expect]] = {}
    for e in expectations:
        by_size.setdefault(e.size, []).append(e)
    builder = merkle.TreeBuilder()
    expected_seq = 0
    batch: list = []
    for item in ledger.rows(uow, before=n, batch=BATCH):
        batch.append(item)
        if len(batch) == BATCH:
            expected_seq = _check_batch(uow, batch, builder, expected_seq, by_size)
            batch = []
    if batch:
        expected_seq = _check_batch(uow, batch, builder, expected_seq, by_size)
    if expected_seq != n:
        raise IntegrityError(f"ledger event {expected_seq} is missing (the ledger head says {n} events)")
    beyond = uow.conn.execute(select(func.min(t.ledger_events.c.seq)).where(t.ledger_events.c.seq >= n)).scalar()
    if beyond is not None:
        raise IntegrityError(f"ledger event {beyond} lies beyond the ledger head ({n} events): inserted")
    return builder.root()


BATCH = 20000


def _check_batch(uow, batch: list, builder: merkle.TreeBuilder, expected_seq: int,  # noqa: ANN001
                 by_size: dict[int, list[_Expect]]) -> int:
    """Each event row of the batch: its place, its leaf and the nodes it completes, and its indexed
    columns against its line (searches, the portal and the MFA lock-out read those columns)."""
    first, last = int(batch[0].seq), int(batch[-1].seq)
    stored = _stored_nodes(uow, first, last)
    for row in batch:
        seq, line = int(row.seq), row.line
        if seq != expected_seq:
            what = "missing" if seq > expected_seq else "out of order"
            raise IntegrityError(f"ledger event {expected_seq} is {what} (found seq {seq} in its place)")
        raw = line.encode("utf-8")
        leaf = merkle.leaf_hash(raw)
        if stored.get((0, seq)) != leaf:
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = None
            declared = doc.get("seq") if isinstance(doc, dict) else None
            if declared is not None and declared != seq:
                raise IntegrityError(f"ledger event {seq} says it is event {declared}: moved or inserted")
            raise IntegrityError(f"ledger event {seq} was altered: its hash does not match the tree")
        problem = ledger.column_mismatch(row)
        if problem:
            raise IntegrityError(f"ledger event {seq} was altered: {problem}")
        for level, idx, h in builder.push(leaf):
            if level and stored.get((level, idx), h) != h:
                raise IntegrityError(f"stored ledger node ({level}, {idx}) does not match events up to {seq}: "
                                     "proofs would not verify")
        expected_seq += 1
        for e in by_size.get(expected_seq, ()):
            if builder.root() != e.root:
                raise IntegrityError(f"ledger does not match {e.what}: an event at or before seq "
                                     f"{e.size - 1} was changed")
    return expected_seq


def _stored_nodes(uow, first: int, last: int) -> dict[tuple[int, int], bytes]:  # noqa: ANN001
    """Every stored node whose subtree ends inside leaves [first, last]."""
    n = t.ledger_nodes.c
    out: dict[tuple[int, int], bytes] = {}
    level = 0
    while (last + 1) >> level:
        lo, hi = first >> level, ((last + 1) >> level) - 1
        if hi >= lo:
            rows = uow.conn.execute(select(n.idx, n.hash).where(n.level == level, n.idx >= lo, n.idx <= hi)).all()
            out.update({(level, int(idx)): bytes(h) for idx, h in rows})
        level += 1
    return out


def search(ws: Workspace, token: str | None, q: str | None = None, *, limit: int = 50,
           before: int | None = None) -> dict:
    """Newest events first, those whose actor, action, subject or outcome, as their lines say, contain
    `q`; each with its inclusion proof against the latest checkpoint that covers it, and that
    checkpoint's status, and flagged where its indexed columns disagree with its line."""
    limit = max(1, min(limit, 200))
    if before is not None and not 0 <= before <= 2**62:
        raise InvalidInput(f"before={before} is not a ledger position")
    if q is not None and len(q) > 200:
        raise InvalidInput("a ledger search is at most 200 characters")
    with act(ws, token, "audit.search", details={"q": q, "before": before}) as a:
        rows = _matching(a.uow, (q or "").lower(), limit, before)
        latest = a.uow.conn.execute(select(t.ledger_checkpoints.c.size, t.ledger_checkpoints.c.note)
                                    .order_by(t.ledger_checkpoints.c.size.desc()).limit(1)).first()
        status = _checkpoint_status(ws, a.uow, latest)
        size = status["tree_size"] if status["verified"] else None
        events = []
        for row, doc in rows:
            seq, line = int(row.seq), row.line
            proof = None
            if size is not None and seq < size:
                try:  # checked here against the line as stored and the signed root, not taken on trust
                    p = ledger.prove_inclusion(a.uow, seq, size)
                    merkle.verify_inclusion(merkle.leaf_hash(line.encode("utf-8")), seq, size, p.path,
                                            bytes.fromhex(status["root"]))
                    proof = {**p.to_dict(), "verified": True}
                except IntegrityError as exc:  # shown on its row: tampering must not blank the page
                    proof = {"leaf_index": seq, "tree_size": size, "verified": False, "problem": exc.message}
            events.append({"seq": seq, "event": doc or {}, "proof": proof,
                           "column_problem": ledger.column_mismatch(row)})
        ledger_size = ledger.size(a.uow)
    return {"events": events, "checkpoint": status, "ledger_size": ledger_size}


SEARCHED = ("actor", "action", "subject", "outcome")


def _matching(uow, needle: str, limit: int, before: int | None) -> list[tuple]:  # noqa: ANN001
    """The newest `limit` event rows whose line has `needle` in one of SEARCHED, with the decoded line.
    The lines are matched, not the columns beside them (copies anyone with the database can edit): the
    database narrows to lines that hold `needle` as JSON spells it (literally: % and _ are not
    wildcards), and each candidate is decoded and matched field by field."""
    e = t.ledger_events.c
    page = limit if not needle else 4 * limit
    found: list[tuple] = []
    while len(found) < limit:
        query = ledger.select_rows().order_by(e.seq.desc()).limit(page)
        if before is not None:
            query = query.where(e.seq < before)
        if needle:
            query = query.where(func.lower(e.line).contains(_json_string(needle)[1:-1], autoescape=True))
        rows = uow.conn.execute(query).all()
        for row in rows:
            doc = _decoded(row.line)
            if not needle or (doc and any(needle in str(doc.get(f) or "").lower() for f in SEARCHED)):
                found.append((row, doc))
        if len(rows) < page:
            break
        before = int(rows[-1].seq)
    return found[:limit]


def _decoded(line: str) -> dict | None:
    try:
        doc = ledger.decode(line)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _checkpoint_status(ws: Workspace, uow, latest) -> dict:  # noqa: ANN001
    """Is the newest stored checkpoint signed by the ledger key, and does its root match the tree now?"""
    if latest is None:
        return {"verified": False, "tree_size": 0, "root": None, "problem": "no checkpoint yet"}
    size, note = latest
    try:
        cp = _verified(note, ws.origin, checkpoints.ledger_key(ws), f"checkpoint at size {size}")
        _, root = ledger.root(uow, cp.size)
        if root != cp.root:
            raise IntegrityError(f"checkpoint at size {size}: the tree's root at that size differs")
    except IntegrityError as exc:
        return {"verified": False, "tree_size": size, "root": None, "problem": exc.message}
    return {"verified": True, "tree_size": cp.size, "root": cp.root.hex(), "problem": None}
