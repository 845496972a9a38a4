"""Choosing a custodian: `[custodian] kind = ...` in custody.toml names the backend module.

Each backend module offers `create_custodian(home, workspace_id, options) -> (custodian, table)` for
`custody init` (the table is written to custody.toml; it holds no secret) and
`open_custodian(home, workspace_id, table, passphrase) -> custodian`. Secrets (a passphrase, a token PIN,
cloud credentials) come from the environment of the process that holds the custodian, never
from the file.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from custody.domain.errors import CustodyError, InvalidInput
from custody.keys.custodian import KeyCustodian

KINDS: dict[str, str] = {
    "local": "custody.keys.local",
    "pkcs11": "custody.keys.pkcs11",
    "aws-kms": "custody.keys.aws_kms",
}


def _module(kind: str):  # noqa: ANN202
    if kind not in KINDS:
        raise InvalidInput(f"unknown custodian {kind!r}: one of {', '.join(KINDS)}")
    return importlib.import_module(KINDS[kind])


def create(kind: str, home: Path, workspace_id: str, options: dict[str, object]) -> tuple[KeyCustodian, dict]:
    custodian, table = _module(kind).create_custodian(home, workspace_id, options)
    return custodian, {"kind": kind, **table}


def open_custodian(home: Path, workspace_id: str, table: dict, passphrase: Callable[[], str]) -> KeyCustodian:
    if not isinstance(table, dict) or not isinstance(table.get("kind", "local"), str):
        raise CustodyError(f"{home / 'custody.toml'}: [custodian] must be a table with a kind")
    return _module(table.get("kind", "local")).open_custodian(home, workspace_id, table, passphrase)
