"""Which copies carry their recipient's mark (`[marks]` in `rules.toml`), and how strongly.

In the catalog, so that turning marks off for a kind is a governed change like any rule. Research
copies and derivatives are marked unless the catalog says otherwise; `alpha` is the mark's
amplitude relative to each marked tensor's standard deviation.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass

from custody.control.policy.errors import PolicyError

FILE = "rules.toml"
TABLE = "marks"
MARKABLE = ("research", "derivative", "migration", "dr", "backup", "restore")


@dataclass(frozen=True, slots=True)
class Marking:
    kinds: tuple[str, ...] = ("research", "derivative")
    alpha: float = 0.03
    include: tuple[str, ...] = ()  # tensor names marked although embeddings, norms and heads are not by default

    def describe(self) -> dict:
        return {"kinds": list(self.kinds), "alpha": self.alpha, "include": list(self.include)}


DEFAULT = Marking()


def parse_marking(text: str) -> Marking:
    """The `[marks]` table of a rules file; absent, research copies and derivatives are marked."""
    try:
        raw = tomllib.loads(text).get(TABLE)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{FILE}: not valid TOML: {e}") from None
    if raw is None:
        return DEFAULT
    if not isinstance(raw, dict) or set(raw) - {"kinds", "alpha", "include"}:
        raise PolicyError(f"{FILE}: [marks] takes kinds, alpha and include")
    kinds = raw.get("kinds", list(DEFAULT.kinds))
    if not isinstance(kinds, list) or any(k not in MARKABLE for k in kinds):
        raise PolicyError(f"{FILE}: [marks] kinds must be a list of {', '.join(MARKABLE)}")
    if "derivative" not in kinds:
        raise PolicyError(f"{FILE}: [marks] kinds must include derivative: every derivative carries its recipient's mark")
    alpha = raw.get("alpha", DEFAULT.alpha)
    if type(alpha) not in (int, float) or not math.isfinite(alpha) or not 0.005 <= alpha <= 0.2:
        raise PolicyError(f"{FILE}: [marks] alpha must be a number from 0.005 to 0.2")
    include = raw.get("include", [])
    if not isinstance(include, list) or any(not isinstance(g, str) or not g for g in include):
        raise PolicyError(f"{FILE}: [marks] include must be a list of tensor name globs")
    return Marking(tuple(kinds), float(alpha), tuple(include))
