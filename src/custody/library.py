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
) -> dict[str, np.ndarray]:
    """Tensors of an active replica as NumPy arrays, decrypted in memory only.

    Authenticates with `token` (default `$CUSTODY_TOKEN`), checks the principal may read the
    replica, ledgers the read with its purpose, then decrypts only the chunks the requested
    tensors span. Raises custody.domain.errors.CustodyError subclasses on refusal or tampering.
    """
    ws = Workspace.open(Path(home) if home else None)
    try:
        return replicas.open_safetensors(ws, token or os.environ.get("CUSTODY_TOKEN"), replica, purpose=purpose,
                                         names=tensors)
    finally:
        ws.close()
