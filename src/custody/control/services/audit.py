"""Reading and proving the ledger: export, checkpoints, inclusion and consistency proofs, verify.

`verify` trusts nothing stored: it recomputes every leaf from the event lines, rebuilds the
tree in one pass (O(n) time, O(log n) memory), and compares with the stored nodes, every stored
checkpoint, and optionally a checkpoint the caller saved earlier (and a pinned public key).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from sqlalchemy import func, insert, select

from custody.control.door import act, record_after
from custody.control.ledger import checkpoint, merkle
from custody.control.ledger import store as ledger
from custody.control.store import schema as t
from custody.control.workspace import Workspace
from custody.domain.errors import IntegrityError, InvalidInput, NotFound


def export(ws: Workspace, token: str | None, out: Path) -> dict:
    with act(ws, token, "audit.export", details={"out": str(out)}) as a:
        n = ledger.size(a.uow)
        count = 0
        with open(out, "wb") as fh:
            for seq, line in ledger.events(a.uow):
                if seq >= n:
                    break
                fh.write(line.encode("utf-8") + b"\n")
                count += 1
        size, root = ledger.root(a.uow, n)
    return {"out": str(out), "events": count, "tree_size": size, "root": root.hex()}


def _ledger_key(ws: Workspace, pinned: Path | None = None) -> Ed25519PublicKey:
    pem = pinned.read_bytes() if pinned else ws.public_key_pem("ledger")
    try:
        key = load_pem_public_key(pem)
    except ValueError:
        raise IntegrityError("ledger public key is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise IntegrityError("ledger public key is not an Ed25519 key")
    return key


class _LedgerSigner:
    """The custodian's ledger key in the shape of an Ed25519 private key."""

    def __init__(self, ws: Workspace) -> None:
        self._ws = ws

    def public_key(self) -> Ed25519PublicKey:
        return _ledger_key(self._ws)

    def sign(self, data: bytes) -> bytes:
        return self._ws.custodian().sign("ledger", data)


def make_checkpoint(ws: Workspace, token: str | None) -> dict:
    with act(ws, token, "audit.checkpoint") as a:
        size, root = ledger.root(a.uow)
        note = checkpoint.sign(checkpoint.Checkpoint(ws.origin, size, root), ws.origin, _LedgerSigner(ws))
        exists = a.uow.conn.execute(select(t.ledger_checkpoints.c.size).where(t.ledger_checkpoints.c.size == size)).first()
        if not exists:
            a.uow.conn.execute(insert(t.ledger_checkpoints).values(size=size, note=note,
                                                                    created_at=datetime.now(timezone.utc)))
        a.record(details={"tree_size": size, "root": root.hex()})
    return {"tree_size": size, "root": root.hex(), "note": note}


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


def verify(ws: Workspace, token: str | None, saved: Path | None = None, public_key: Path | None = None) -> dict:
    with act(ws, token, "audit.verify", deferred=True) as a:
        pass
    key = _ledger_key(ws, public_key)
    expectations: list[_Expect] = []
    if saved is not None:
        try:
            note = saved.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"cannot read checkpoint {saved}: {exc}") from None
        cp = _verified(note, ws.origin, key, f"checkpoint {saved}")
        expectations.append(_Expect(cp.size, cp.root, f"saved checkpoint {saved.name} (size {cp.size})"))
    try:
        with ws.uow(readonly=True) as uow:
            n = ledger.size(uow)
            stored_cps = uow.conn.execute(select(t.ledger_checkpoints.c.size, t.ledger_checkpoints.c.note)
                                          .order_by(t.ledger_checkpoints.c.size)).all()
            for row in stored_cps:
                cp = _verified(row.note, ws.origin, key, f"stored checkpoint at size {row.size}")
                if cp.size != row.size:
                    raise IntegrityError(f"stored checkpoint at size {row.size} signs size {cp.size}")
                expectations.append(_Expect(cp.size, cp.root, f"stored checkpoint at size {cp.size}"))
            for e in expectations:
                if e.size > n:
                    raise IntegrityError(f"{e.what} covers {e.size} events but the ledger holds only {n}")
            root = _recompute(uow, n, expectations)
            if merkle.root(n, ledger.StoredNodes(uow)) != root:
                raise IntegrityError("stored tree nodes do not match the events (proofs would not verify)")
            if saved is not None and expectations[0].size:
                old = expectations[0]
                proof = merkle.consistency_proof(old.size, n, ledger.StoredNodes(uow))
                merkle.verify_consistency(old.size, n, old.root, root, proof)
    except IntegrityError as exc:
        try:
            record_after(ws, a, "integrity_failure", details={"reason": exc.message})
        except IntegrityError:
            pass  # a ledger this broken cannot take the event; the caller still learns what is wrong
        raise
    latest = stored_cps[-1].size if stored_cps else None
    result = {"verified": True, "tree_size": n, "root": root.hex(), "checkpoints_checked": len(expectations),
              "latest_checkpoint": latest}
    record_after(ws, a, details=result)
    return result


def _verified(note: str, origin: str, key: Ed25519PublicKey, what: str) -> checkpoint.Checkpoint:
    try:
        cp = checkpoint.verify(note, origin, key)
    except IntegrityError as exc:
        raise IntegrityError(f"{what}: {exc.message}") from None
    if cp.origin != origin:
        raise IntegrityError(f"{what} is for another ledger ({cp.origin})")
    return cp


def _recompute(uow, n: int, expectations: list[_Expect]) -> bytes:  # noqa: ANN001
    """One pass over the events: order, leaf hashes against stored leaves, roots at checkpoints."""
    by_size: dict[int, list[_Expect]] = {}
    for e in expectations:
        by_size.setdefault(e.size, []).append(e)
    builder = merkle.TreeBuilder()
    expected_seq = 0
    nodes = uow.conn
    for batch in _batches(uow, n):
        stored_leaves = dict(
            nodes.execute(
                select(t.ledger_nodes.c.idx, t.ledger_nodes.c.hash).where(
                    t.ledger_nodes.c.level == 0, t.ledger_nodes.c.idx >= batch[0][0], t.ledger_nodes.c.idx <= batch[-1][0]
                )
            ).all()
        )
        for seq, line in batch:
            if seq != expected_seq:
                what = "missing" if seq > expected_seq else "out of order"
                raise IntegrityError(f"ledger event {expected_seq} is {what} (found seq {seq} in its place)")
            raw = line.encode("utf-8")
            try:
                declared = json.loads(raw).get("seq")
            except ValueError:
                raise IntegrityError(f"ledger event {seq} is not valid JSON") from None
            if declared != seq:
                raise IntegrityError(f"ledger event {seq} says it is event {declared}: moved or inserted")
            leaf = merkle.leaf_hash(raw)
            stored = stored_leaves.get(seq)
            if stored is None or bytes(stored) != leaf:
                raise IntegrityError(f"ledger event {seq} was altered: its hash does not match the tree")
            builder.push(leaf)
            expected_seq += 1
            for e in by_size.get(expected_seq, ()):
                if builder.root() != e.root:
                    raise IntegrityError(f"ledger does not match {e.what}: an event at or before seq "
                                         f"{e.size - 1} was changed")
    if expected_seq != n:
        raise IntegrityError(f"ledger event {expected_seq} is missing (the ledger head says {n} events)")
    beyond = uow.conn.execute(select(func.min(t.ledger_events.c.seq)).where(t.ledger_events.c.seq >= n)).scalar()
    if beyond is not None:
        raise IntegrityError(f"ledger event {beyond} lies beyond the ledger head ({n} events): inserted")
    return builder.root()


def _batches(uow, n: int, size: int = 20000):  # noqa: ANN001, ANN202
    e = t.ledger_events.c
    after = -1
    while True:
        rows = uow.conn.execute(
            select(e.seq, e.line).where(e.seq > after, e.seq < n).order_by(e.seq).limit(size)
        ).all()
        if not rows:
            return
        yield [(int(r.seq), r.line) for r in rows]
        after = int(rows[-1].seq)
