"""Key release under a grant: the only path by which a copy gets its source and destination keys.

The copier presents the request's grant; the custodian's keys are used only if the grant
verifies for exactly this request, version digest, source replica and destination zone, has
not expired, and allows the operation. Single use is enforced by the control plane, which
spends the grant in the transaction that starts the copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from custody.control import grants
from custody.keys.custodian import KeyCustodian, WrappedKey


@dataclass(frozen=True, slots=True)
class Expected:
    request_id: str
    version_digest: str
    source_replica: str
    destination_zone: str


def check(custodian: KeyCustodian, token: str, expected: Expected, operation: str) -> grants.Grant:
    return grants.verify(
        token, grants.root_public_key(custodian.grant_root_key()), request_id=expected.request_id,
        version_digest=expected.version_digest, source_replica=expected.source_replica,
        destination_zone=expected.destination_zone, operation=operation, now=datetime.now(timezone.utc),
    )


def unwrap_source(custodian: KeyCustodian, token: str, expected: Expected, wrapped: WrappedKey) -> bytes:
    check(custodian, token, expected, "unwrap-source")
    return custodian.unwrap(wrapped)


def new_destination_key(custodian: KeyCustodian, token: str, expected: Expected, key_id: str) -> tuple[bytes, WrappedKey]:
    check(custodian, token, expected, "wrap-destination")
    return custodian.new_data_key(expected.destination_zone, key_id)
