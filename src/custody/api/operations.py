"""Every service function the API serves, with its method and path: one table for both ends.

The server builds its routes from this table (`custody.api.app`) and the CLI's remote mode
builds its HTTP calls from it (`custody.api.client`), so the two cannot drift apart. A path
names service parameters in braces; the other parameters travel in the query (GET) or as
one JSON object (POST, PUT) whose keys are the parameter names. Paths given to services (a
model to register, a catalog folder, an export file, a zone's file:// URL) name files on the
server's machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from custody.control.services import (
    assets,
    audit,
    backups,
    copies,
    dashboard,
    deletions,
    drills,
    exceptions,
    identity,
    keys,
    lineage,
    mfa,
    policy,
    principals,
    reads,
    replicas,
    requests,
    restores,
    reviews,
    snapshots,
    sweep,
    zones,
)

# Parameters a remote caller never sets: the workspace and token come from the server and the
# Authorization header; progress callbacks and clocks are for in-process callers.
SERVER_SIDE = frozenset({"ws", "token", "progress", "as_of"})


@dataclass(frozen=True)
class Operation:
    service: Callable
    method: str
    path: str
    status: int = 200
    media_type: str | None = None  # set where the service returns bytes (PEM, a bundle)
    internal: tuple[str, ...] = ()  # parameters only other services may set (e.g. drill=True)
    server_urls: tuple[str, ...] = ()  # storage URLs: a local one (file://) is a server path too

    @property
    def path_params(self) -> tuple[str, ...]:
        return tuple(re.findall(r"{(\w+)}", self.path))

    @property
    def name(self) -> str:
        return f"{self.service.__module__.rsplit('.', 1)[-1]}.{self.service.__name__}"


def _op(service: Callable, method: str, path: str, **kw: object) -> Operation:
    return Operation(service, method, "/api/v1" + path, **kw)  # type: ignore[arg-type]


OPERATIONS: tuple[Operation, ...] = (
    _op(zones.list_zones, "GET", "/zones"),
    _op(zones.add_zone, "POST", "/zones", status=201, server_urls=("url",)),
    _op(zones.show_zone, "GET", "/zones/{name}"),
    _op(zones.set_budget, "PUT", "/zones/{name}/budget"),
    _op(principals.list_principals, "GET", "/principals"),
    _op(principals.add_principal, "POST", "/principals", status=201),
    _op(principals.suspend_principal, "POST", "/principals/{name}/suspend"),
    _op(principals.rotate_token, "POST", "/principals/me/token"),
    _op(identity.list_proposals, "GET", "/identity-proposals"),
    _op(identity.approve, "POST", "/identity-proposals/approve"),
    _op(identity.withdraw, "POST", "/identity-proposals/{proposal_id}/withdraw"),
    _op(assets.list_assets, "GET", "/assets"),
    _op(assets.register, "POST", "/assets", status=201),
    _op(assets.inventory, "GET", "/inventory"),
    _op(assets.show_asset, "GET", "/assets/{ref}"),
    _op(assets.signature_bundle, "GET", "/assets/{ref}/bundle", media_type="application/json"),
    _op(lineage.lineage, "GET", "/assets/{name}/lineage"),
    _op(replicas.list_replicas, "GET", "/replicas"),
    _op(replicas.show_replica, "GET", "/replicas/{replica_id}"),
    _op(replicas.verify_replica, "POST", "/replicas/{replica_id}/verify"),
    _op(replicas.revoke_replica, "POST", "/replicas/{replica_id}/revoke"),
    _op(replicas.read_safetensors, "POST", "/replicas/{replica_id}/tensors", media_type="application/octet-stream"),
    _op(reads.attestation_nonce, "POST", "/attestation/nonce"),
    _op(keys.status, "GET", "/keys"),
    _op(keys.rotate, "POST", "/keys/{zone_name}/rotate"),
    _op(keys.public_key, "GET", "/keys/public/{purpose}", media_type="application/x-pem-file"),
    _op(policy.show, "GET", "/policy"),
    _op(policy.test, "POST", "/policy/test"),
    _op(policy.propose, "POST", "/policy/proposals", status=201),
    _op(policy.approve, "POST", "/policy/proposals/{proposal_id}/approve"),
    _op(policy.apply, "POST", "/policy/proposals/{proposal_id}/apply"),
    _op(requests.list_requests, "GET", "/requests"),
    _op(requests.create, "POST", "/requests", status=201, internal=("snapshot", "method", "drill")),
    _op(requests.preview, "POST", "/requests/preview"),
    _op(requests.choices, "GET", "/requests/choices"),
    _op(requests.inbox, "GET", "/requests/inbox"),
    _op(requests.show_request, "GET", "/requests/{request_id}"),
    _op(requests.explain, "GET", "/requests/{request_id}/explain"),
    _op(requests.approve, "POST", "/requests/{request_id}/approve"),
    _op(requests.deny, "POST", "/requests/{request_id}/deny"),
    _op(requests.cancel, "POST", "/requests/{request_id}/cancel"),
    _op(copies.run, "POST", "/requests/{request_id}/run"),
    _op(copies.revoke, "POST", "/requests/{request_id}/revoke"),
    _op(mfa.enroll, "POST", "/mfa/enroll"),
    _op(mfa.verify, "POST", "/mfa/verify"),
    _op(reviews.list_reviews, "GET", "/reviews"),
    _op(reviews.close, "POST", "/reviews/{review_id}/close"),
    _op(exceptions.list_exceptions, "GET", "/exceptions"),
    _op(exceptions.propose, "POST", "/exceptions", status=201),
    _op(exceptions.approve, "POST", "/exceptions/{exc_id}/approve"),
    _op(exceptions.revoke, "POST", "/exceptions/{exc_id}/revoke"),
    _op(backups.list_policies, "GET", "/backups/policies"),
    _op(backups.set_policy, "PUT", "/backups/policies/{asset}"),
    _op(backups.run, "POST", "/backups/run"),
    _op(backups.status, "GET", "/backups/status"),
    _op(backups.shred_repository, "POST", "/backups/repositories/{asset}/{zone}/shred"),
    _op(snapshots.list_snapshots, "GET", "/snapshots"),
    _op(snapshots.show, "GET", "/snapshots/{snapshot_id}"),
    _op(snapshots.signature_bundle, "GET", "/snapshots/{snapshot_id}/bundle", media_type="application/json"),
    _op(snapshots.verify, "POST", "/snapshots/{snapshot_id}/verify"),
    _op(snapshots.delete, "POST", "/snapshots/{snapshot_id}/delete"),
    _op(snapshots.forget, "POST", "/snapshots/forget/{asset}"),
    _op(deletions.approve, "POST", "/deletions/{deletion_id}/approve"),
    _op(restores.restore, "POST", "/restores", status=201, internal=("drill",)),
    _op(drills.drill_dr, "POST", "/drills"),
    _op(audit.make_checkpoint, "POST", "/audit/checkpoint"),
    _op(audit.prove, "GET", "/audit/proofs/{seq}"),
    _op(audit.consistency, "GET", "/audit/consistency"),
    _op(audit.verify, "POST", "/audit/verify"),
    _op(audit.witness_state, "GET", "/audit/witness"),
    _op(audit.export, "POST", "/audit/export"),
    _op(audit.search, "GET", "/audit/events"),
    _op(dashboard.figures, "GET", "/dashboard"),
    _op(principals.whoami, "GET", "/whoami"),
    _op(sweep.sweep, "POST", "/sweep"),
)

_BY_SERVICE = {op.service: op for op in OPERATIONS}


def operation_for(service: Callable) -> Operation:
    try:
        return _BY_SERVICE[service]
    except KeyError:
        raise LookupError(f"{service.__module__}.{service.__name__} is not served over the API") from None
