"""Unsealing a share-sealed keyring: the one door for shares, from the API and the command line.

No principal takes these steps (the shares are the credential), so each is ledgered under the
holder's address, never with the share itself.
"""

from __future__ import annotations

from typing import Callable

from custody.control.ledger import store as ledger
from custody.control.workspace import Workspace
from custody.domain.errors import CustodyError, InvalidInput, InvalidState
from custody.keys.local import Unsealer


def unsealer_for(ws: Workspace) -> Unsealer | None:
    """The process's share collector, for a local custodian (others have nothing to unseal)."""
    return Unsealer(ws.home) if ws.custodian_table.get("kind", "local") == "local" else None


def status(ws: Workspace, unsealer: Unsealer | None) -> dict:
    return unsealer.status() if unsealer else {"sealed_by": ws.custodian_table.get("kind"), "sealed": False}


def give(ws: Workspace, unsealer: Unsealer | None, share: str, holder: str) -> dict:
    """One share from one holder; the step is ledgered, refused or not."""
    if unsealer is None:
        raise InvalidState(f"this server's custodian is {ws.custodian_table.get('kind')}: nothing to unseal")
    try:
        state = unsealer.give(share)
    except CustodyError as exc:
        _record(ws, "refused", holder, {"reason": exc.message})
        raise
    _record(ws, "share accepted" if state["sealed"] else "unsealed", holder,
            {"given": state.get("given"), "threshold": state.get("threshold")})
    return state


def drill(ws_home, read_share: Callable[[], str]) -> dict:  # noqa: ANN001
    """Check that shares read one by one unseal the keyring here, keeping nothing (a holders' drill)."""
    unsealer = Unsealer(ws_home)
    state = unsealer.status()
    while state.get("sealed"):
        share = read_share()
        if not share:
            raise InvalidInput(f"standard input ended after {state['given']} of {state['threshold']} shares")
        state = unsealer.give(share)
    unsealer.seal()
    return {**state, "drill": True}


def _record(ws: Workspace, outcome: str, holder: str, details: dict) -> None:
    with ws.uow() as uow:
        ledger.append(uow, actor=holder, action="custodian.unseal", outcome=outcome, details=details)
