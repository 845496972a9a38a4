"""The ledger as stored: events, perfect-subtree nodes and checkpoints in the control-plane database.

Appending writes the event, its leaf and the parents it completes (O(log n) rows) in the
caller's transaction, so an action and its event commit or fail together. Roots and proofs
read O(log n) stored nodes; only `verify` walks everything.
"""

from __future__ import annotations

import functools

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator, Mapping, Sequence

from sqlalchemy import and_, bindparam, insert, or_, select
from sqlalchemy.exc import IntegrityError as DBIntegrityError

from custody.control.ledger import merkle
from custody.control.store import schema as t
from custody.control.store.db import UnitOfWork
from custody.domain.errors import IntegrityError, NotFound
from custody.domain.model import Event


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


# Statements built once: appends are the hottest path in custody, and building SQLAlchemy
# expressions per call cost more than the database work itself.
@functools.lru_cache(maxsize=64)
def _nodes(count: int):  # noqa: ANN202
    """Look-up of `count` tree nodes by key in one statement (an OR of key equalities: each term
    uses the primary key, where a row-value IN makes SQLite scan the table)."""
    n = t.ledger_nodes.c
    return select(n.level, n.idx, n.hash).where(
        or_(*(and_(n.level == bindparam(f"l{i}"), n.idx == bindparam(f"i{i}")) for i in range(count))))
_INSERT_EVENT = insert(t.ledger_events)
_INSERT_NODES = insert(t.ledger_nodes)


class StoredNodes:
    """merkle.NodeSource over the ledger_nodes table: O(log n) keyed look-ups per proof."""

    def __init__(self, uow: UnitOfWork) -> None:
        self.conn = uow.conn

    def get_nodes(self, keys: Sequence[tuple[int, int]]) -> Mapping[tuple[int, int], bytes]:
        found = {}
        if keys:  # one round trip for all of them (appends run it while holding the ledger lock)
            params = {f"{p}{i}": v for i, key in enumerate(keys) for p, v in zip("li", key)}
            rows = self.conn.execute(_nodes(len(keys)), params)
            found = {(int(r.level), int(r.idx)): bytes(r.hash) for r in rows}
        missing = [k for k in keys if k not in found]
        if missing:
            raise IntegrityError(f"ledger tree node {missing[0]} is missing")
        return found


def append(
    uow: UnitOfWork,
    *,
    actor: str,
    action: str,
    outcome: str,
    subject: str | None = None,
    source: str | None = None,
    destination: str | None = None,
    rationale: str | None = None,
    request_id: str | None = None,
    policy_ids: tuple[str, ...] = (),
    details: dict | None = None,
) -> Event:
    size = uow.claim_ledger_position()
    event = Event(
        seq=size,
        time=utc_now(),
        actor=actor,
        action=action,
        subject=subject,
        outcome=outcome,
        source=source,
        destination=destination,
        rationale=rationale,
        request_id=request_id,
        policy_ids=policy_ids,
        details=details or {},
    )
    line = event.line()
    row = {"seq": size, "time": event.time, "actor": actor, "action": action, "subject": subject,
           "outcome": outcome, "line": line.decode("utf-8")}
    nodes = merkle.nodes_to_store_on_append(size, merkle.leaf_hash(line), StoredNodes(uow))
    try:
        uow.conn.execute(_INSERT_EVENT, row)
        uow.conn.execute(_INSERT_NODES, [{"level": lv, "idx": ix, "hash": h} for lv, ix, h in nodes])
    except DBIntegrityError:
        raise IntegrityError(f"ledger head says {size} events but event {size} (or its tree nodes) already "
                             "exist: the ledger was tampered with (run custody audit verify)") from None
    return event


def size(uow: UnitOfWork) -> int:
    return int(uow.conn.execute(select(t.ledger_head.c.size)).scalar_one())


def root(uow: UnitOfWork, tree_size: int | None = None) -> tuple[int, bytes]:
    n = size(uow) if tree_size is None else tree_size
    return n, merkle.root(n, StoredNodes(uow))


def event_line(uow: UnitOfWork, seq: int) -> bytes:
    line = uow.conn.execute(select(t.ledger_events.c.line).where(t.ledger_events.c.seq == seq)).scalar_one_or_none()
    if line is None:
        raise NotFound(f"no ledger event {seq}")
    return line.encode("utf-8")


@dataclass(frozen=True)
class InclusionProof:
    seq: int
    tree_size: int
    leaf_hash: bytes
    path: list[bytes]
    root: bytes

    def to_dict(self) -> dict:
        return {
            "leaf_index": self.seq,
            "tree_size": self.tree_size,
            "leaf_hash": self.leaf_hash.hex(),
            "path": [h.hex() for h in self.path],
            "root": self.root.hex(),
        }


def prove_inclusion(uow: UnitOfWork, seq: int, tree_size: int | None = None) -> InclusionProof:
    current = size(uow)
    n = current if tree_size is None else tree_size
    if not 0 < n <= current:
        raise NotFound(f"the ledger has {current} events; no tree of size {n}")
    if not 0 <= seq < n:
        raise NotFound(f"no ledger event {seq} in a tree of size {n}")
    nodes = StoredNodes(uow)
    leaf = merkle.leaf_hash(event_line(uow, seq))
    path = merkle.inclusion_proof(seq, n, nodes)
    proof = InclusionProof(seq, n, leaf, path, merkle.root(n, nodes))
    merkle.verify_inclusion(proof.leaf_hash, seq, n, path, proof.root)
    return proof


def prove_consistency(uow: UnitOfWork, old: int, new: int) -> list[bytes]:
    current = size(uow)
    if not 0 < old <= new <= current:
        raise NotFound(f"consistency needs 0 < OLD <= NEW <= {current}")
    return merkle.consistency_proof(old, new, StoredNodes(uow))


def events(uow: UnitOfWork, *, after: int = -1, before: int | None = None, batch: int = 5000
           ) -> Iterator[tuple[int, str]]:
    """Every (seq, line) with after < seq < before, in seq order, streamed in batches."""
    e = t.ledger_events.c
    while True:
        q = select(e.seq, e.line).where(e.seq > after)
        if before is not None:
            q = q.where(e.seq < before)
        rows = uow.conn.execute(q.order_by(e.seq).limit(batch)).all()
        if not rows:
            return
        yield from ((int(r.seq), r.line) for r in rows)
        after = int(rows[-1].seq)


def decode(line: str) -> dict:
    return json.loads(line)
