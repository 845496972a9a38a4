"""Which snapshots a keep-daily / keep-weekly / keep-monthly policy keeps.

The newest snapshot of each of the last N days (weeks, months) that have snapshots is kept, as
restic's `forget --keep-*` does; the newest snapshot overall is always kept. Pure: callers pass
the snapshots and get the ids to keep.
"""

from __future__ import annotations

from datetime import datetime


def keep(snapshots: list[tuple[str, datetime]], daily: int, weekly: int, monthly: int) -> set[str]:
    ordered = sorted(snapshots, key=lambda s: s[1], reverse=True)
    kept: set[str] = {ordered[0][0]} if ordered else set()
    for count, bucket in ((daily, _day), (weekly, _week), (monthly, _month)):
        seen: set[tuple] = set()
        for sid, at in ordered:
            if len(seen) >= count:
                break
            b = bucket(at)
            if b not in seen:
                seen.add(b)
                kept.add(sid)
    return kept


MIN_IMMUTABLE_DAYS = 1


def immutable_floor(at: datetime) -> datetime:
    """A snapshot is immutable while the keep rules keep it, and never less than a day: a rule
    change or a burst of new snapshots cannot make a fresh backup deletable at once."""
    from datetime import timedelta

    return at + timedelta(days=MIN_IMMUTABLE_DAYS)


def _day(t: datetime) -> tuple:
    return (t.year, t.month, t.day)


def _week(t: datetime) -> tuple:
    iso = t.isocalendar()
    return (iso.year, iso.week)


def _month(t: datetime) -> tuple:
    return (t.year, t.month)
