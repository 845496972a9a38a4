"""The risk dashboard's figures: daily series and totals, counts only, for people who watch the numbers.

One read-only pass over requests, replicas, egress and reviews (like `metrics`), plus the most
recent alerts from the ledger; the read itself is ledgered, as every read through the door is.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

from sqlalchemy import func, select

from custody.control.door import act
from custody.control.ledger import store as ledger
from custody.control.services import metrics
from custody.control.store import schema as t
from custody.control.store.repositories import as_utc
from custody.control.workspace import Workspace

DAYS = 14


def figures(ws: Workspace, token: str | None, days: int = DAYS) -> dict:
    days = max(1, min(days, 90))
    today = datetime.now(timezone.utc).date()
    span = [today - timedelta(days=days - 1 - i) for i in range(days)]
    start = datetime.combine(span[0], datetime.min.time(), tzinfo=timezone.utc)
    with act(ws, token, "dashboard.read") as a:
        c = a.uow.conn
        r, rep = t.requests.c, t.replicas.c
        attempts = {d: {"allowed": 0, "denied": 0} for d in span}
        for created, state in c.execute(select(r.created_at, r.state).where(r.created_at >= start)):
            day = attempts.get(as_utc(created).date())
            if day is not None:  # a clock ahead of this server's puts a request past today
                day["denied" if state == "denied" else "allowed"] += 1
        replica_rows = c.execute(select(rep.kind, rep.zone, rep.state, rep.created_at, rep.updated_at)
                                 .where(rep.version_id.is_not(None))).all()
        alerts = [ledger.decode(line) for (line,) in c.execute(  # by the hashed line, which opens with its action
            select(t.ledger_events.c.line).where(t.ledger_events.c.line.startswith('{"action":"alert.'))
            .order_by(t.ledger_events.c.seq.desc()).limit(10))]
        open_reviews = c.execute(select(func.count()).where(t.reviews.c.closed_at.is_(None))).scalar_one()
    m = metrics.collect(ws)
    return {
        "days": [d.isoformat() for d in span],
        "attempts": [{"day": d.isoformat(), **attempts[d]} for d in span],
        "approval_cycles": _histogram(m["approval_cycles"]),
        "bytes_by_zone": dict(sorted(m["egress"].items())),
        "replicas_over_time": _replicas_over_time(replica_rows, span),
        "active_replicas": [{"kind": k, "zone": z, "count": n} for (k, z), n in sorted(m["active"].items())],
        "expiring_24h": m["expiring_24h"],
        "open_reviews": int(open_reviews),
        "open_break_glass_reviews": m["open_break_glass_reviews"],
        "alerts": alerts,
        "ledger_size": m["ledger_size"],
    }


def _histogram(cycles: list[float]) -> list[dict]:
    bounds = (0,) + metrics.CYCLE_BUCKETS
    out = []
    for lo, hi in zip(bounds, bounds[1:]):
        out.append({"le_seconds": hi, "count": sum(1 for x in cycles if lo < x <= hi or (lo == 0 and x == 0))})
    out.append({"le_seconds": None, "count": sum(1 for x in cycles if x > bounds[-1])})
    return out


def _replicas_over_time(rows: list, span: list[date]) -> dict[str, list[int]]:
    """Replicas alive at the end of each day, by "kind/zone" (a replica ends at its last update
    once it is no longer active: shredded, expired or failed)."""
    series: dict[str, list[int]] = {}
    for kind, zone, state, created, updated in rows:
        if state == "pending":
            continue  # never readable, never a copy
        born, ended = as_utc(created).date(), None if state == "active" else as_utc(updated).date()
        counts = series.setdefault(f"{kind}/{zone}", [0] * len(span))
        for i, d in enumerate(span):
            if born <= d and (ended is None or ended > d):
                counts[i] += 1
    return dict(sorted(series.items()))
