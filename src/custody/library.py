"""The Python library API for programs that use weights under custody (`custody.open_safetensors`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from custody.control.services import reads, replicas
from custody.control.workspace import Workspace


def open_safetensors(
    replica: str,
    *,
    purpose: str,
    tensors: list[str] | None = None,
    home: str | Path | None = None,
    token: str | None = None,
    request: str | None = None,
    server: str | None = None,
    attest: Callable[[str], bytes] | None = None,
) -> dict[str, np.ndarray]:
    """Tensors of an active replica as NumPy arrays, decrypted in memory only.

    With a server (`server`, default `$CUSTODY_SERVER`) the server takes the decision, releases the
    key in its own custodian and sends the tensors back over HTTP: this process never holds a KEK,
    a data key or the passphrase. That is how a production serving process reads weights: it runs
    as a `service` principal bound to its zone, with a token and the server's URL, nothing else.
    Without a server the workspace at `home` is opened here, which needs its custodian (the
    passphrase, the token PIN or cloud credentials): for administrators and tests.

    Authenticates with `token` (default `$CUSTODY_TOKEN`), asks the policy catalog whether this
    principal may read this replica (directly, or under their approved read `request`, which the
    read spends; without `request`, their oldest approved read request for the replica is used),
    ledgers the read with its decision and purpose, then decrypts only the chunks the requested
    tensors span. Raises custody.domain.errors.CustodyError subclasses on refusal or tampering.

    `attest`: where the replica's zone requires attestation, a function that takes the custodian's
    fresh nonce and returns evidence over it (see custody.keys.attestation).
    """
    token = token or os.environ.get("CUSTODY_TOKEN")
    server = server or os.environ.get("CUSTODY_SERVER")
    if server:
        from custody.api.client import Remote
        from custody.data.tensors import from_safetensors

        remote = Remote(server, token)
        try:
            evidence = _evidence(attest, lambda: remote.call(reads.attestation_nonce)["nonce"])
            body = remote.call(replicas.read_safetensors, replica, purpose=purpose, names=tensors, request=request,
                               evidence=evidence)
        finally:
            remote.close()
        return from_safetensors(body, name=f"replica {replica} from {server}")
    ws = Workspace.open(Path(home) if home else None)
    try:
        evidence = _evidence(attest, lambda: reads.attestation_nonce(ws, token)["nonce"])
        return replicas.open_safetensors(ws, token, replica, purpose=purpose, names=tensors, request=request,
                                         evidence=evidence)
    finally:
        ws.close()


def _evidence(attest: Callable[[str], bytes] | None, nonce: Callable[[], str]) -> str | None:
    if attest is None:
        return None
    evidence = attest(nonce())
    return evidence.decode() if isinstance(evidence, bytes) else evidence
