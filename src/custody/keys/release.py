"""Key release: the custodian's decision, taken on what it can check itself, never on the database.

Every data key that leaves the custodian for plaintext (a copy's source and destination, a
snapshot, a restore, a read) is released here, against a grant:
1. the grant's signature, its binding to this request, version, source and destination, its
   expiry and the operation (`control/grants.py`);
2. the data key's own binding, authenticated with it: the key is the grant's source key, the
   version digest matches, and the key's expiry (bound when it was made) has not passed, whatever
   the replica row says;
3. single use, in the custodian's journal (`keys/journal.py`), not in the control-plane store;
4. where the zone asks for it (reads), attestation evidence over a nonce this custodian issued
   (`keys/attestation.py`).
Destination keys are bound to the kind and lifetime the grant carries, so a database edit of a
request's TTL or of a replica's expiry changes nothing the custodian believes.

Releases without a grant (`maintain`) serve checks that never hand plaintext to a caller
(verifying a replica, opening a backup repository to prune); they still refuse an expired key
and are journalled.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from custody.control import grants
from custody.domain.errors import Denied, InvalidState
from custody.keys.attestation import Attestation, Claims
from custody.keys.custodian import Binding, KeyCustodian, WrappedKey, grant_root_key, whole_seconds
from custody.keys.journal import Journal, Spent


@dataclass(frozen=True, slots=True)
class Expected:
    """What the caller is about to do, as the control plane knows it."""

    request_id: str
    version_digest: str
    source_replica: str
    destination_zone: str


# Kinds whose keys must carry a binding to be read: they expire or belong to one person, and a key
# wrapped before bindings existed says neither (the store's row alone would decide).
UNBOUND_UNREADABLE = ("research", "derivative", "drill", "backup", "migration")


class Refused(Denied):
    """The custodian will not release this key; the message says why."""


class Expired(InvalidState):
    """The key's own expiry, bound into it when it was made, has passed."""


class Release:
    def __init__(self, custodian: KeyCustodian, journal: Journal, attestation: Attestation | None = None) -> None:
        self.custodian = custodian
        self.journal = journal
        self.attestation = attestation or Attestation()

    def check(self, token: str, expected: Expected, operation: str) -> grants.Grant:
        grant = grants.verify(
            token, grants.root_public_key(grant_root_key(self.custodian)), request_id=expected.request_id,
            version_digest=expected.version_digest, source_replica=expected.source_replica,
            destination_zone=expected.destination_zone, operation=operation, now=_now())
        if not grant.claims.kind:
            raise Refused("grant predates key bindings: ask for the copy again")
        return grant

    def source(self, token: str, expected: Expected, wrapped: WrappedKey) -> bytes:
        """The source data key of a copy, snapshot or restore (again on resume, until closed)."""
        grant = self.check(token, expected, grants.UNWRAP_SOURCE)
        if grant.claims.kind == "read":
            raise Refused("a read grant releases a key for one read, not for a copy")
        self._bound_source(grant, wrapped)
        _journal(self.journal.source, grant.use_id, wrapped.key_id, expected.request_id)
        return self.custodian.unwrap(wrapped)

    def read(self, token: str, expected: Expected, wrapped: WrappedKey, *, kind: str, reader: str | None,
             attested: Claims | None = None) -> bytes:
        """A read's one release: the grant is spent by it, in the custodian's record. The key must be
        the replica's, of the kind the store claims; `reader` (for a read without a request) must be
        the principal the copy was made for, where the key names one; a zone that requires
        attestation needs claims this custodian verified over its own nonce for this read."""
        self.attestation.spend(expected.destination_zone, attested)
        grant = self.check(token, expected, grants.UNWRAP_SOURCE)
        if grant.claims.kind != "read":
            raise Refused("a copy grant is not a read: reads go under a read request or the catalog's direct read")
        self._bound_source(grant, wrapped)
        b = wrapped.binding
        if b is None and kind in UNBOUND_UNREADABLE:
            raise Refused(f"data key {wrapped.key_id} predates key bindings: a {kind} copy made before them is not "
                          "read (revoke it and copy again)")
        if b is not None:
            if b.subject != expected.source_replica or b.kind != kind or b.zone != expected.destination_zone:
                raise Refused(f"data key {wrapped.key_id} is bound to {b.kind} replica {b.subject} in zone {b.zone}: "
                              "the store describes it otherwise")
            if reader is not None and b.holder and b.holder != reader:
                raise Refused(f"replica {b.subject} was made for {b.holder}: others read it only under a request")
        _journal(self.journal.read, grant.use_id, wrapped.key_id, expected.request_id)
        return self.custodian.unwrap(wrapped)

    def new_destination(self, token: str, expected: Expected, key_id: str, subject: str) -> tuple[bytes, WrappedKey]:
        """A fresh destination key, bound to the zone, version, kind, lifetime and holder of the grant."""
        grant = self.check(token, expected, grants.WRAP_DESTINATION)
        c = grant.claims
        if c.kind == "read":
            raise Refused("a read grant makes no copy")
        expires = whole_seconds(_now() + timedelta(seconds=c.ttl_seconds)) if c.ttl_seconds else None
        if c.kind == "backup-repository":  # a repository outlives any one snapshot; its key names no version
            binding = Binding(key_id, subject, c.destination_zone, c.kind, "", None)
        else:
            binding = Binding(key_id, subject, c.destination_zone, c.kind, c.version_digest, expires, c.holder)
        _journal(self.journal.destination, grant.use_id, key_id, expected.request_id)
        return self.custodian.new_data_key(binding)

    def destination(self, token: str, expected: Expected, wrapped: WrappedKey) -> bytes:
        """An existing destination key: a resumed copy's, or the backup repository a snapshot adds to."""
        grant = self.check(token, expected, grants.WRAP_DESTINATION)
        c = grant.claims
        if c.kind == "read":
            raise Refused("a read grant makes no copy")
        b = wrapped.binding
        if b is None:
            raise Refused(f"data key {wrapped.key_id} predates key bindings: nothing is written into it")
        repository = c.kind == "backup-repository"
        want = (c.destination_zone, c.kind, "" if repository else c.version_digest, "" if repository else c.holder)
        if (b.zone, b.kind, b.digest, b.holder) != want:
            raise Refused(f"data key {wrapped.key_id} is bound to a {b.kind} copy in zone {b.zone}: not what this "
                          "grant makes")
        _fresh(wrapped)
        # a snapshot adds to its lineage's repository; a resumed copy writes only into the key its grant made
        _journal(self.journal.destination, grant.use_id, wrapped.key_id, expected.request_id, first=repository)
        return self.custodian.unwrap(wrapped)

    def close(self, use_id: str, request_id: str) -> None:
        """The copy under this grant finished: nothing more is released under it."""
        self.journal.close(use_id, request_id)

    def abandon(self, use_id: str, key_id: str, request_id: str) -> None:
        """A failed attempt's destination key was destroyed: the grant may make another."""
        self.journal.abandon(use_id, key_id, request_id)

    def maintain(self, wrapped: WrappedKey, why: str) -> bytes:
        _fresh(wrapped)
        _journal(self.journal.maintain, wrapped.key_id, why)
        return self.custodian.unwrap(wrapped)

    def shred(self, key_id: str, why: str) -> None:
        """Record a destroyed data key before the store forgets it: never released or rewrapped again."""
        self.journal.shred(key_id, why)

    def shredded(self) -> set[str]:
        return self.journal.shredded()

    def _bound_source(self, grant: grants.Grant, wrapped: WrappedKey) -> None:
        c = grant.claims
        if wrapped.key_id != c.source_key:
            raise Refused(f"data key {wrapped.key_id} is not the source key this grant releases")
        b = wrapped.binding
        if b is not None:
            if b.digest and b.digest != c.version_digest:
                raise Refused(f"data key {wrapped.key_id} is bound to another version")
            _fresh(wrapped)


def _fresh(wrapped: WrappedKey) -> None:
    b = wrapped.binding
    if b is not None and b.expired(_now()):
        raise Expired(f"data key of {b.subject} expired at {b.expires_at.isoformat()}: the expiry is bound into "
                      "the key, and no database edit extends it")


def _journal(step, *args: str, **kw: bool) -> None:  # noqa: ANN001
    try:
        step(*args, **kw)
    except Spent as exc:
        raise Refused(str(exc)) from None


def _now() -> datetime:
    return datetime.now(timezone.utc)

