"""Readiness: can this process serve? The database answers and the custodian is unsealed."""

from __future__ import annotations

from sqlalchemy import text

from custody.control.workspace import Workspace
from custody.domain.errors import CustodyError


def problems(ws: Workspace) -> list[str]:
    """What stops this process from serving; empty when it is ready."""
    found = []
    try:
        with ws.uow(readonly=True) as uow:
            uow.conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means not ready; its type is enough to say why
        found.append(f"database: {type(exc).__name__}")
    try:
        ws.custodian()
    except CustodyError as exc:
        found.append(f"custodian: {exc.message}")
    return found
