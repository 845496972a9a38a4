"""Egress budgets (`[budgets]` in `rules.toml`): bytes per hour that copies may take, per principal
and per asset, from whichever zones they read.

They live in the catalog so that raising one is a governed change (a two-person proposal) like
any rule; zone budgets are an operator's setting (`custody zone budget`). An absent key means no
budget of that kind; a value that is not a whole number of bytes refuses the catalog.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass

from custody.control.permissions import ROLES
from custody.control.policy.errors import PolicyError

FILE = "rules.toml"
TABLE = "budgets"
_KEYS = ("principal_bytes_per_hour", "asset_bytes_per_hour", "roles")


@dataclass(frozen=True, slots=True)
class Budgets:
    principal_bytes_per_hour: int | None = None
    asset_bytes_per_hour: int | None = None
    roles: tuple[tuple[str, int], ...] = ()  # a role's own principal budget, in place of the default

    def for_principal(self, roles: tuple[str, ...]) -> tuple[int | None, str]:
        """A principal's hourly budget and where it comes from: the largest one its roles name,
        else the default."""
        named = [(limit, role) for role, limit in self.roles if role in roles]
        if named:
            limit, role = max(named)
            return limit, f"role {role}"
        return self.principal_bytes_per_hour, "default"

    def describe(self) -> dict:
        return {"principal_bytes_per_hour": self.principal_bytes_per_hour,
                "asset_bytes_per_hour": self.asset_bytes_per_hour, "roles": dict(self.roles)}


NONE = Budgets()


def parse_budgets(text: str) -> Budgets:
    """The `[budgets]` table of a rules file (`parse_rules` has already refused bad TOML)."""
    try:
        raw = tomllib.loads(text).get(TABLE)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{FILE}: not valid TOML: {e}") from None
    if raw is None:
        return NONE
    where = f"{FILE}: [{TABLE}]"
    if not isinstance(raw, dict):
        raise PolicyError(f"{where} must be a table")
    unknown = set(raw) - set(_KEYS)
    if unknown:
        raise PolicyError(f"{where}: unknown field {sorted(unknown)[0]!r}: one of {', '.join(_KEYS)}")
    roles = raw.get("roles", {})
    if not isinstance(roles, dict):
        raise PolicyError(f"{where}: roles must be a table of role = bytes per hour")
    for role in roles:
        if role not in ROLES:
            raise PolicyError(f"{where}: roles: unknown role {role!r}: one of {', '.join(ROLES)}")
    return Budgets(_bytes(where, "principal_bytes_per_hour", raw.get("principal_bytes_per_hour")),
                   _bytes(where, "asset_bytes_per_hour", raw.get("asset_bytes_per_hour")),
                   tuple(sorted((role, _bytes(where, f"roles.{role}", v)) for role, v in roles.items())))


def _bytes(where: str, key: str, value: object) -> int | None:
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise PolicyError(f"{where}: {key} must be a whole number of bytes per hour")
    return value
