"""Who may take which action, by role.

This is the interim authorisation table of the trust foundation; the Cedar policy catalog
replaces it for copies. It fails closed: an action not listed is allowed to no one.
"""

from __future__ import annotations

from custody.domain.errors import Denied
from custody.domain.model import Principal

ROLES = ("admin", "researcher", "ml-lead", "security", "backup-operator", "on-call", "auditor", "service")

_ALLOWED: dict[str, frozenset[str]] = {
    "zone.add": frozenset({"admin"}),
    "zone.read": frozenset(ROLES),
    "principal.add": frozenset({"admin"}),
    "principal.suspend": frozenset({"admin", "security"}),
    "principal.read": frozenset({"admin", "security", "auditor"}),
    "principal.approve": frozenset({"security"}),  # identity proposals: two security officers with MFA
    "principal.withdraw": frozenset({"admin", "security"}),
    "principal.rotate-token": frozenset(ROLES),
    "asset.register": frozenset({"admin", "ml-lead"}),
    "asset.read": frozenset(ROLES),
    "asset.identify": frozenset({"admin", "security", "auditor", "ml-lead"}),
    "asset.trace": frozenset({"security"}),  # reads original weights: the catalog decides that read too
    "replica.read": frozenset(ROLES),
    "replica.verify": frozenset({"admin", "ml-lead", "security", "auditor", "backup-operator"}),
    "replica.open": frozenset(ROLES),  # whether a read may happen is the policy catalog's (Action::"read")
    "replica.revoke": frozenset({"admin", "security"}),
    "keys.read": frozenset({"admin", "security", "auditor"}),
    "keys.rotate": frozenset({"admin", "security"}),
    "keys.public": frozenset(ROLES),
    "audit.export": frozenset({"admin", "security", "auditor"}),
    "audit.prove": frozenset({"admin", "security", "auditor"}),
    "audit.verify": frozenset({"admin", "security", "auditor"}),
    "audit.checkpoint": frozenset({"admin", "security", "auditor"}),
    "audit.search": frozenset({"admin", "security", "auditor"}),
    "audit.witness": frozenset({"admin", "security", "auditor"}),
    "dashboard.read": frozenset({"admin", "security", "auditor", "ml-lead"}),
    "metrics.read": frozenset({"admin", "security", "auditor"}),
    "session.sign_in": frozenset(ROLES),
    "session.sign_out": frozenset(ROLES),
    "principal.whoami": frozenset(ROLES),
    "sweep": frozenset({"admin", "backup-operator", "security"}),
    "zone.budget": frozenset({"admin"}),
    # Governed copies: the role table only says who may take part; the policy catalog decides.
    "policy.read": frozenset(ROLES),
    "policy.propose": frozenset({"admin", "security"}),
    "policy.approve": frozenset({"security"}),
    "policy.apply": frozenset({"admin", "security"}),
    "request.create": frozenset(set(ROLES) - {"auditor"}),
    "request.read": frozenset(ROLES),
    "request.preview": frozenset(set(ROLES) - {"auditor"}),
    "request.approve": frozenset({"ml-lead", "security"}),
    "request.deny": frozenset({"ml-lead", "security", "admin"}),
    "request.cancel": frozenset(set(ROLES) - {"auditor"}),
    "request.run": frozenset(set(ROLES) - {"auditor"}),
    "request.revoke": frozenset(set(ROLES) - {"auditor"}),
    "mfa.enroll": frozenset(ROLES),
    "mfa.verify": frozenset(ROLES),
    "review.read": frozenset({"admin", "security", "auditor", "ml-lead"}),  # who closes one, or oversees
    "review.close": frozenset({"ml-lead", "security"}),
    "exception.propose": frozenset({"admin", "security", "ml-lead"}),
    "exception.approve": frozenset({"ml-lead", "security"}),
    "exception.read": frozenset(ROLES),
    "exception.revoke": frozenset({"admin", "security"}),
    "backup.policy": frozenset({"admin", "backup-operator"}),
    "backup.read": frozenset(ROLES),
    "backup.shred": frozenset({"admin", "security"}),
    "snapshot.read": frozenset(ROLES),
    "snapshot.verify": frozenset({"admin", "backup-operator", "security", "auditor"}),
    "snapshot.forget": frozenset({"admin", "backup-operator"}),
    "snapshot.approve-delete": frozenset({"ml-lead", "security"}),
    "drill.run": frozenset({"admin", "backup-operator"}),
}


def allows(roles: tuple[str, ...] | list[str], action: str) -> bool:
    """Whether any of these roles may take the action (what a page may offer; the service still checks)."""
    allowed = _ALLOWED.get(action, frozenset())
    return any(role in allowed for role in roles)


def check(principal: Principal, action: str) -> None:
    if not allows(principal.roles, action):
        raise Denied(f"{principal.name} ({', '.join(principal.roles)}) may not {action}")
