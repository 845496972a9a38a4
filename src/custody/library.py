"""The Python library API for programs that use weights under custody (`custody.open_safetensors`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from custody.control.services import replicas
from custody.control.workspace import Workspace


def open_safetensors(
    replica: str,
    *,
    purpose: str,
    tensors: list[str] | None = None,
    home: str | Path | None = None,
    token: str | None = None,
    request: str | None = None,
) -> dict[str, np.ndarray]:
    """Tensors of an active replica as NumPy arrays, decrypted in memory only.

    Authenticates with `token` (default `$CUSTODY_TOKEN`), asks the policy catalog whether this
    principal may read this replica (directly, or under their approved read `request`, which the
    read spends; without `request`, their oldest approved read request for the replica is used),
    ledgers the read with its decision and purpose, then decrypts only the chunks the requested
    tensors span. Raises custody.domain.errors.CustodyError subclasses on refusal or tampering.
    """
    ws = Workspace.open(Path(home) if home else None)
    try:
        return replicas.open_safetensors(ws, token or os.environ.get("CUSTODY_TOKEN"), replica, purpose=purpose,
                                         names=tensors, request=request)
    finally:
        ws.close()
