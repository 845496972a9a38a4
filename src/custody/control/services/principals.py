"""Principals: people and services, their roles, and their tokens (shown once, stored hashed)."""

from __future__ import annotations

from custody.control import permissions, tokens, views
from custody.control.door import act
from custody.control.store import repositories as repo
from custody.control.workspace import Workspace
from custody.control.services import identity
from custody.domain.errors import InvalidInput, InvalidState
from custody.domain.model import check_name


def add_principal(
    ws: Workspace, token: str | None, *, name: str, roles: list[str], team: str | None = None,
    attributes: dict[str, str] | None = None, reason: str | None = None, public_token: str | None = None,
) -> dict:
    """The new principal, with its token under "token" (shown this once, stored only as a hash; None
    when its holder made it and gave `public_token`); or, for a principal with power, the identity
    proposal that must be approved."""
    with act(ws, token, "principal.add", subject=name, rationale=reason) as a:
        check_name("principal", name)
        unknown = [r for r in roles if r not in permissions.ROLES]
        if not roles or unknown:
            raise InvalidInput(f"unknown role {unknown[0] if unknown else ''!r}: one of {', '.join(permissions.ROLES)}")
        roles = list(dict.fromkeys(roles))
        if repo.principal_by_name(a.uow, name, missing_ok=True):
            raise InvalidInput(f"principal {name} already exists")
        bootstrap = bool(identity.governed(roles)) and identity.bootstrap_addition(a.uow, roles)
        if identity.governed(roles) and not bootstrap:
            return identity.propose(ws, a, change="add", name=name, roles=roles, team=team,
                                    attributes=attributes or {}, reason=reason, public_token=public_token)
        held = tokens.parse_public(public_token) if public_token else (None, None)
        # nobody "added" a bootstrap officer: they must be able to approve the admin's proposals
        new_token, principal = identity.add(a.uow, name=name, roles=roles, team=team, attributes=attributes or {},
                                            created_by=None if bootstrap else a.principal.name,
                                            token_id=held[0], token_hash=held[1])
        a.record(details={"roles": roles, "team": team, "bootstrap": bootstrap})
    return {**views.principal(principal), "token": new_token}


def list_principals(ws: Workspace, token: str | None) -> list[dict]:
    with act(ws, token, "principal.read") as a:
        return [views.principal(p) for p in repo.list_principals(a.uow)]


def suspend_principal(ws: Workspace, token: str | None, name: str, reason: str | None = None) -> dict:
    """Suspend a principal at once; an admin or a security officer only through an identity proposal."""
    with act(ws, token, "principal.suspend", subject=name, rationale=reason) as a:
        target = repo.principal_by_name(a.uow, name)
        if target.id == a.principal.id:
            raise InvalidInput("a principal cannot suspend itself")
        if target.suspended:
            raise InvalidState(f"principal {name} is already suspended")
        if target.has_role(*identity.GUARDED_ROLES):
            return identity.propose(ws, a, change="suspend", name=name, roles=list(target.roles), team=target.team,
                                    attributes=target.attributes, reason=reason)
        repo.suspend_principal(a.uow, name)
        a.record()
        return views.principal(repo.principal_by_name(a.uow, name))


def rotate_token(ws: Workspace, token: str | None) -> dict:
    """Replace the caller's own token: the old one stops working at once. Whoever received a token
    made by someone else (from `init`, or printed when they were added) does this first."""
    with act(ws, token, "principal.rotate-token") as a:
        new_token, token_id, token_hash = tokens.mint()
        repo.set_token(a.uow, a.principal.name, token_id, token_hash)
        a.record(details={"token_id": token_id})
    return {**views.principal(a.principal), "token": new_token}


def whoami(ws: Workspace, token: str | None) -> dict:
    """Who a token belongs to; refusals are ledgered like any other."""
    with act(ws, token, "principal.whoami") as a:
        return views.principal(a.principal)
