"""Principals: people and services, their roles, and their tokens (shown once, stored hashed)."""

from __future__ import annotations

from custody.control import permissions, tokens, views
from custody.control.door import act
from custody.control.store import repositories as repo
from custody.control.workspace import Workspace
from custody.domain.errors import InvalidInput
from custody.domain.model import Principal, check_name, new_id


def add_principal(
    ws: Workspace, token: str | None, *, name: str, roles: list[str], team: str | None = None,
    attributes: dict[str, str] | None = None,
) -> dict:
    """The new principal, with its token under "token": shown this once, stored only as a hash."""
    with act(ws, token, "principal.add", subject=name) as a:
        check_name("principal", name)
        unknown = [r for r in roles if r not in permissions.ROLES]
        if not roles or unknown:
            raise InvalidInput(f"unknown role {unknown[0] if unknown else ''!r}: one of {', '.join(permissions.ROLES)}")
        new_token, token_id, token_hash = tokens.mint()
        principal = Principal(id=new_id(), name=name, roles=tuple(roles), team=team, attributes=attributes or {},
                              created_by=a.principal.name)
        repo.add_principal(a.uow, principal, token_id, token_hash)
        a.record(details={"roles": roles, "team": team})
    return {**views.principal(principal), "token": new_token}


def list_principals(ws: Workspace, token: str | None) -> list[dict]:
    with act(ws, token, "principal.read") as a:
        return [views.principal(p) for p in repo.list_principals(a.uow)]


def suspend_principal(ws: Workspace, token: str | None, name: str) -> dict:
    with act(ws, token, "principal.suspend", subject=name) as a:
        target = repo.principal_by_name(a.uow, name)
        if target.id == a.principal.id:
            raise InvalidInput("a principal cannot suspend itself")
        repo.suspend_principal(a.uow, name)
        a.record()
        return views.principal(repo.principal_by_name(a.uow, name))


def whoami(ws: Workspace, token: str | None) -> dict:
    """Who a token belongs to; refusals are ledgered like any other."""
    with act(ws, token, "principal.whoami") as a:
        return views.principal(a.principal)
