"""Durations as people write them in catalog files: "7d", "12h", "90m", "30s", "1d12h".

One strict grammar, so a typo in `max_ttl` is refused at load time instead of becoming an
unbounded or zero-length grant.
"""

from __future__ import annotations

import re

from custody.domain.errors import InvalidInput

_UNITS = (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1))
_GRAMMAR = re.compile(r"(?:(\d{1,7})d)?(?:(\d{1,9})h)?(?:(\d{1,11})m)?(?:(\d{1,12})s)?", re.ASCII)
MAX_SECONDS = 3_653 * 86_400  # ten years, leap days included: anything longer is a typo


def parse_duration(text: str) -> int:
    """Seconds in `text`; InvalidInput for anything but d/h/m/s parts in that order, zero, or over ten years."""
    if not isinstance(text, str) or not text:
        raise InvalidInput(f"bad duration {text!r}: use e.g. 7d, 12h, 90m, 30s or 1d12h")
    match = _GRAMMAR.fullmatch(text)
    if match is None:
        raise InvalidInput(f"bad duration {text[:40]!r}: use e.g. 7d, 12h, 90m, 30s or 1d12h")
    seconds = sum(int(part) * size for part, (_, size) in zip(match.groups(), _UNITS) if part is not None)
    if seconds <= 0:
        raise InvalidInput(f"bad duration {text!r}: it must be longer than zero")
    if seconds > MAX_SECONDS:
        raise InvalidInput(f"bad duration {text!r}: longer than ten years")
    return seconds


def format_duration(seconds: int) -> str:
    """The shortest text that parse_duration reads back as `seconds` (for messages and `policy show`)."""
    if seconds <= 0:
        return f"{seconds}s"
    parts = []
    for unit, size in _UNITS:
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
