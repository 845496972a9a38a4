"""The ledger as stored: events, perfect-subtree nodes and checkpoints in the control-plane database.

Appending writes the event, its leaf and the parents it completes (O(log n) rows) in the
caller's transaction, so an action and its event commit or fail together. Roots and proofs
read O(log n) stored nodes; only `verify` walks everything.
"""

from __future__ import annotations

import functools

import json
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _json_string
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
    for r in rows(uow, after=after, before=before, batch=batch, columns=False):
        yield int(r.seq), r.line


def rows(uow: UnitOfWork, *, after: int = -1, before: int | None = None, batch: int = 5000, columns: bool = True
         ) -> Iterator:
    """Every stored event row with after < seq < before, in seq order, streamed in batches: the line
    and, with `columns`, the indexed copies of its fields (see `column_mismatch`)."""
    e = t.ledger_events.c
    while True:
        q = (select_rows() if columns else select(e.seq, e.line)).where(e.seq > after)
        if before is not None:
            q = q.where(e.seq < before)
        found = uow.conn.execute(q.order_by(e.seq).limit(batch)).all()
        if not found:
            return
        yield from found
        after = int(found[-1].seq)


COLUMNS = ("seq", "time", "actor", "action", "subject", "outcome")
"""The indexed columns beside each line: copies of its fields for queries. Only the line is hashed,
so a copy is believed only once `column_mismatch` finds it equal to the line."""


def select_rows():  # noqa: ANN201
    """Event rows as `column_mismatch` reads them: seq, line, then the other indexed columns."""
    e = t.ledger_events.c
    return select(e.seq, e.line, e.time, e.actor, e.action, e.subject, e.outcome)


def column_mismatch(row) -> str | None:  # noqa: ANN001
    """What differs between a stored event's indexed columns and its line, or None when they agree.

    Lines are canonical JSON (sorted keys, ASCII escapes, as `Event.line()` writes them), so agreement
    is usually settled by exact spellings without decoding (verify runs this on every event): "action"
    and "actor" open the line, "subject" and "time" close it, and the last "outcome" and "seq" keys are
    the line's own (only strings follow them). Anything else is decoded and compared field by field."""
    seq, line, when, actor, action, subject, outcome = row  # as `select_rows` reads them
    at_outcome, at_seq = line.rfind(',"outcome":'), line.rfind(',"seq":')  # inline: this runs per event
    if (at_outcome > 0 and at_seq > 0
            and line.startswith(f'{{"action":{_json_string(action)},"actor":{_json_string(actor)},')
            and line.endswith(f',"subject":{"null" if subject is None else _json_string(subject)},'
                              f'"time":{_json_string(when)}}}')
            and line.startswith(f'{_json_string(outcome)},"policy_ids":', at_outcome + 11)
            and line.startswith(f'{seq},"source":', at_seq + 7)):
        return None
    try:
        doc = json.loads(line)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return "its line is not a JSON object"
    for column in COLUMNS:
        stored, said = getattr(row, column), doc.get(column)
        if stored != said:
            return f"its {column} column says {_short(stored)} where its line says {_short(said)}"
    return None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def first_since(uow: UnitOfWork, when: str) -> int:
    """Position of the first event whose line says it was written at or after `when` (an RFC 3339
    UTC time as `utc_now` spells it). Events are appended in time order, so this gallops back from
    the head over the hashed lines, O(log k) reads for the k newer events, and the time column, which
    anyone with the database can edit, plays no part."""
    hi, step = size(uow), 1  # every event from hi on is at or after `when`
    while hi > 0:
        probe = max(hi - step, 0)
        if _time_of(uow, probe) < when:
            lo = probe + 1
            break
        hi, step = probe, step * 2
    else:
        return 0
    while lo < hi:
        mid = (lo + hi) // 2
        if _time_of(uow, mid) < when:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _time_of(uow: UnitOfWork, seq: int) -> str:
    try:
        doc = json.loads(event_line(uow, seq))
    except NotFound:
        raise IntegrityError(f"ledger event {seq} is missing (run custody audit verify)") from None
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("time"), str):
        raise IntegrityError(f"ledger event {seq} has no time in its line (run custody audit verify)")
    return doc["time"]


def decode(line: str) -> dict:
    return json.loads(line)
