"""Aggregate figures for monitoring (Prometheus): counts only, no names of weights or people.

Read in one read-only transaction by a principal allowed `metrics.read` (Prometheus sends its
token as a bearer credential); a successful scrape is not ledgered (one every few seconds would
drown the ledger in reads that reveal nothing), a refused one is.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select

from custody.control.door import identify
from custody.control.ledger import store as ledger
from custody.control.store import schema as t
from custody.control.store.repositories import as_utc
from custody.control.workspace import Workspace

CYCLE_BUCKETS = (60, 300, 900, 3600, 4 * 3600, 24 * 3600, 72 * 3600)


def collect(ws: Workspace) -> dict:
    now = datetime.now(timezone.utc)
    r, rep, e = t.requests.c, t.replicas.c, t.egress.c
    with ws.uow(readonly=True) as uow:
        c = uow.conn
        attempts = {(k, s): n for k, s, n in c.execute(select(r.kind, r.state, func.count()).group_by(r.kind, r.state))}
        active = {(k, z): n for k, z, n in c.execute(
            select(rep.kind, rep.zone, func.count()).where(rep.state == "active").group_by(rep.kind, rep.zone))}
        expiring = c.execute(select(func.count()).where(
            rep.state == "active", rep.expires_at.is_not(None), rep.expires_at <= now + timedelta(hours=24))).scalar_one()
        egress = {z: int(n) for z, n in c.execute(select(e.zone, func.sum(e.bytes)).group_by(e.zone))}
        open_reviews = c.execute(select(func.count()).where(t.reviews.c.kind == "break-glass",
                                                            t.reviews.c.closed_at.is_(None))).scalar_one()
        cycles = _approval_cycles(uow)
        size = ledger.size(uow)
    return {"attempts": attempts, "active": active, "expiring_24h": int(expiring), "egress": egress,
            "open_break_glass_reviews": int(open_reviews), "approval_cycles": cycles, "ledger_size": size}


def _approval_cycles(uow) -> list[float]:  # noqa: ANN001
    """Seconds from each approved request's creation to its last approval."""
    r, s = t.requests.c, t.signoffs.c
    rows = uow.conn.execute(
        select(r.created_at, func.max(s.at)).join(t.signoffs, (s.subject_kind == "request") & (s.subject_id == r.id))
        .where(r.state.in_(("approved", "running", "done", "failed"))).group_by(r.id, r.created_at))
    out = []
    for created, last in rows:
        if created is None or last is None:
            continue
        out.append(max(0.0, (as_utc(last) - as_utc(created)).total_seconds()))
    return out


def prometheus(ws: Workspace, token: str | None) -> str:
    identify(ws, token, "metrics.read")
    m = collect(ws)
    lines = ["# HELP custody_copy_requests Copy requests by kind and state.", "# TYPE custody_copy_requests gauge"]
    lines += [f'custody_copy_requests{{kind="{k}",state="{s}"}} {n}' for (k, s), n in sorted(m["attempts"].items())]
    lines += ["# HELP custody_replicas_active Active replicas by kind and zone.", "# TYPE custody_replicas_active gauge"]
    lines += [f'custody_replicas_active{{kind="{k}",zone="{z}"}} {n}' for (k, z), n in sorted(m["active"].items())]
    lines += ["# HELP custody_replicas_expiring_24h Active replicas expiring within a day.",
              "# TYPE custody_replicas_expiring_24h gauge", f"custody_replicas_expiring_24h {m['expiring_24h']}"]
    lines += ["# HELP custody_bytes_copied_total Bytes copied out of each zone.", "# TYPE custody_bytes_copied_total counter"]
    lines += [f'custody_bytes_copied_total{{zone="{z}"}} {n}' for z, n in sorted(m["egress"].items())]
    lines += ["# HELP custody_ledger_events Events in the ledger.", "# TYPE custody_ledger_events gauge",
              f"custody_ledger_events {m['ledger_size']}"]
    lines += ["# HELP custody_break_glass_reviews_open Open break-glass reviews.",
              "# TYPE custody_break_glass_reviews_open gauge",
              f"custody_break_glass_reviews_open {m['open_break_glass_reviews']}"]
    cycles = m["approval_cycles"]
    lines += ["# HELP custody_approval_cycle_seconds Seconds from request to final approval.",
              "# TYPE custody_approval_cycle_seconds histogram"]
    for b in CYCLE_BUCKETS:
        lines.append(f'custody_approval_cycle_seconds_bucket{{le="{b}"}} {sum(1 for x in cycles if x <= b)}')
    lines += [f'custody_approval_cycle_seconds_bucket{{le="+Inf"}} {len(cycles)}',
              f"custody_approval_cycle_seconds_sum {sum(cycles)}", f"custody_approval_cycle_seconds_count {len(cycles)}"]
    return "\n".join(lines) + "\n"
