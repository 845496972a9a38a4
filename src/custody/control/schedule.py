"""Backup schedules as 5-field cron expressions (minute hour day-of-month month day-of-week, UTC).

Only what schedules need: `*`, numbers, ranges `a-b`, lists `a,b`, steps `*/n` and `a-b/n`.
`due` answers one question: has the schedule fired since the last snapshot?
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from custody.domain.errors import InvalidInput

_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 6))
ALIASES = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *"}


@dataclass(frozen=True, slots=True)
class Cron:
    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool  # day of month was `*`
    any_weekday: bool  # day of week was `*`

    def matches(self, t: datetime) -> bool:
        if t.minute not in self.minutes or t.hour not in self.hours or t.month not in self.months:
            return False
        dom, dow = t.day in self.days, (t.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:  # cron: when one of the two is restricted, it alone decides
            return dom and dow
        return dom or dow

    def last_fire(self, now: datetime) -> datetime | None:
        """The latest time <= now the schedule fired (searched back up to a year and a day)."""
        t = now.astimezone(timezone.utc).replace(second=0, microsecond=0)
        for _ in range(60 * 24 * 367):
            if self.matches(t):
                return t
            # jump whole hours / days when they cannot match, so the search stays cheap
            if t.hour not in self.hours or t.month not in self.months:
                t = t.replace(minute=0) - timedelta(minutes=1)
            else:
                t -= timedelta(minutes=1)
        return None

    def due(self, last_snapshot: datetime | None, now: datetime) -> bool:
        fired = self.last_fire(now)
        return fired is not None and (last_snapshot is None or last_snapshot < fired)


def parse(text: str) -> Cron:
    expr = ALIASES.get(text.strip(), text.strip())
    parts = expr.split()
    if len(parts) != 5:
        raise InvalidInput(f"bad schedule {text!r}: use 5 cron fields (minute hour day month weekday) or @daily")
    sets = [_field(p, name, lo, hi, text) for p, (name, lo, hi) in zip(parts, _FIELDS)]
    weekdays = frozenset(d % 7 for d in sets[4])
    # as cron does: a day field starting with "*" (even "*/2") does not restrict the other one
    cron = Cron(expr, sets[0], sets[1], sets[2], sets[3], weekdays, parts[2].startswith("*"),
                parts[4].startswith("*"))
    if not any(_possible(m, d) for m in cron.months for d in cron.days) and not cron.any_day:
        raise InvalidInput(f"bad schedule {text!r}: it names no day that exists")
    return cron


def _possible(month: int, day: int) -> bool:
    return day <= (29 if month == 2 else 30 if month in (4, 6, 9, 11) else 31)


def _field(part: str, name: str, lo: int, hi: int, text: str) -> frozenset[int]:
    out: set[int] = set()
    top = 7 if name == "day of week" else hi  # 7 is Sunday too
    for item in part.split(","):
        rng, _, step_text = item.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if rng == "*":
                a, b = lo, hi
            elif "-" in rng:
                a, b = (int(x) for x in rng.split("-", 1))
            else:
                a = b = int(rng)
        except ValueError:
            raise InvalidInput(f"bad schedule {text!r}: {name} field {part!r}") from None
        if step < 1 or not lo <= a <= b <= top:
            raise InvalidInput(f"bad schedule {text!r}: {name} must be within {lo}-{top}")
        out.update(range(a, b + 1, step))
    return frozenset(out)
