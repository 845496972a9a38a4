"""Readiness: can this process serve? The database answers, the custodian is unsealed, and the
workspace is private to the account that runs it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

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
    return found + exposed(ws.home)


# The workspace's own files directly in its folder (the database, its WAL and lock, the config and
# the portal's cookie key). Everything in keys/ is private too, but for the public keys.
PRIVATE_FILES = ("custody.toml", "custody.db", "custody.db-wal", "custody.db-shm", "custody.db-writers.lock",
                 "portal-session.key")


def exposed(home: Path) -> list[str]:
    """The workspace folder, its keys folder and its private files that its group or others may
    open, each as "custody.db is readable by others (mode 0644)"."""
    keys = home / "keys"
    paths = [home, keys, *(home / name for name in PRIVATE_FILES)]
    if keys.is_dir():
        paths += sorted(p for p in keys.iterdir() if not p.name.endswith(".pub.pem"))
    found = []
    for path in paths:
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            name = "the workspace folder" if path == home else str(path.relative_to(home))
            found.append(f"{name} is {_access(mode)} (mode {mode:04o})")
    return found


def _access(mode: int) -> str:
    who, bits = ("others", mode & 0o007) if mode & 0o007 else ("its group", (mode >> 3) & 0o007)
    how = "readable" if bits & 0o4 else "writable" if bits & 0o2 else "accessible"
    return f"{how} by {who}"
