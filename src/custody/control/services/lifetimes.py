"""Source lifetimes (T12): nothing is copied from an expired replica, and no copy outlives its source.

Checked when a request is made, again when it runs (a source can expire between approval and run,
before the sweeper marks it), and once more when the copy activates (the copy took time). A copy
is never silently shortened to fit: it is refused, and asked for again with a shorter `--ttl`.
A replica without an expiry (a primary, a DR replica) bounds nothing, so backup and DR copies of
a primary need no expiry of their own. Restores read snapshots, which have retention instead of
an expiry: a restore brings an asset back and may outlive the snapshot it came from.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from custody.control.policy.durations import format_duration
from custody.domain.errors import Denied, InvalidState
from custody.domain.model import Replica
from custody.domain.requests import NO_EXPIRY, RequestKind


def _now() -> datetime:
    return datetime.now(timezone.utc)


def check_source(source: Replica, ttl: int | None, kind: RequestKind, now: datetime | None = None) -> None:
    """Refuse a copy of `source` that would last `ttl` seconds from `now` (None: no expiry)."""
    if source.expires_at is None:
        return
    now = now or _now()
    left = int((source.expires_at - now).total_seconds())
    if left <= 0:
        raise InvalidState(f"replica {source.id} expired at {source.expires_at.isoformat(timespec='seconds')}; "
                           "nothing is copied from it")
    if kind in NO_EXPIRY:
        why = f"a {kind.value} copy never expires"
    elif ttl is None:
        why = "pass a --ttl under that"
    elif ttl > left:
        why = f"--ttl {format_duration(ttl)} is longer"
    else:
        return
    raise Denied(f"replica {source.id} expires in {format_duration(left)}; a copy of it must expire sooner ({why})")


def check_expiry(source: Replica, expires: datetime | None) -> None:
    """At activation: the copy's expiry (None: never) must not pass its source's."""
    if source.expires_at is None:
        return
    if expires is None or expires > source.expires_at:
        over = "never expires" if expires is None else \
            f"would outlive it by {format_duration(max(1, int((expires - source.expires_at) / timedelta(seconds=1))))}"
        raise Denied(f"replica {source.id} expires at {source.expires_at.isoformat(timespec='seconds')}; this copy "
                     f"{over}; it is not activated: ask again with a shorter --ttl")
