"""Who may take which action, by role.

This is the interim authorisation table of the trust foundation; the Cedar policy catalog
replaces it for copies. It fails closed: an action not listed is allowed to no one.
"""

from __future__ import annotations

from custody.domain.errors import Denied
from custody.domain.model import Principal

ROLES = ("admin", "researcher", "ml-lead", "security", "backup-operator", "on-call", "auditor")

_ALLOWED: dict[str, frozenset[str]] = {
    "zone.add": frozenset({"admin"}),
    "zone.read": frozenset(ROLES),
    "principal.add": frozenset({"admin"}),
    "principal.suspend": frozenset({"admin", "security"}),
    "principal.read": frozenset({"admin", "security", "auditor"}),
    "asset.register": frozenset({"admin", "ml-lead"}),
    "asset.read": frozenset(ROLES),
    "replica.read": frozenset(ROLES),
    "replica.verify": frozenset({"admin", "ml-lead", "security", "auditor", "backup-operator"}),
    "replica.open": frozenset({"admin", "ml-lead", "researcher"}),
    "replica.revoke": frozenset({"admin", "security"}),
    "keys.read": frozenset({"admin", "security", "auditor"}),
    "keys.rotate": frozenset({"admin", "security"}),
    "audit.export": frozenset({"admin", "security", "auditor"}),
    "audit.prove": frozenset({"admin", "security", "auditor"}),
    "audit.verify": frozenset({"admin", "security", "auditor"}),
    "audit.checkpoint": frozenset({"admin", "security", "auditor"}),
    "sweep": frozenset({"admin", "backup-operator", "security"}),
}


def check(principal: Principal, action: str) -> None:
    allowed = _ALLOWED.get(action, frozenset())
    if not any(role in allowed for role in principal.roles):
        raise Denied(f"{principal.name} ({', '.join(principal.roles)}) may not {action}")
