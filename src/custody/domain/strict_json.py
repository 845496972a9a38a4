"""Strict JSON for documents an attacker may have written (model headers, signature bundles).

UTF-8 only, one value per key (parsers disagree on which duplicate wins), no NaN or
Infinity, bounded nesting, and an object at the top. Callers turn `StrictJSONError` into
their own one-line error.
"""

from __future__ import annotations

import json
from typing import Any


class StrictJSONError(ValueError):
    """Why the document was refused, in a few words."""


def _one_value_per_key(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise StrictJSONError(f"duplicate JSON key {key[:64]!r}")
        obj[key] = value
    return obj


def _no_constants(token: str) -> Any:
    raise StrictJSONError(f"non-standard JSON constant {token}")


def loads_object(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StrictJSONError(f"not valid UTF-8 (byte {exc.start})") from None
    try:
        document = json.loads(text, object_pairs_hook=_one_value_per_key, parse_constant=_no_constants)
    except StrictJSONError:
        raise
    except RecursionError:
        raise StrictJSONError("JSON nested too deeply") from None
    except ValueError as exc:
        raise StrictJSONError(f"not valid JSON ({str(exc)[:80]})") from None
    if not isinstance(document, dict):
        raise StrictJSONError(f"a JSON {type(document).__name__}, not a JSON object")
    return document
