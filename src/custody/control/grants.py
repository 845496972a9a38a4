"""Grants: Biscuit capability tokens that let the data plane act on one approved copy (T6).

When a copy request has its approvals, the control plane mints a grant bound to the request id,
the version digest, the source replica, the destination zone and an expiry. The data plane
presents it to the key custodian, which calls `verify` with the facts of the operation it is
about to perform: unwrap the source data key (`unwrap-source`) or wrap the new one
(`wrap-destination`). A minted grant allows both.

Token layout (all values enter Datalog as parameters, never by string formatting):

* authority block, signed by the root key the custodian holds::

      grant($request, $digest, $source, $destination, $expires_at);
      key($source_key, $kind, $ttl_seconds, $holder);
      right("unwrap-source"); right("wrap-destination");
      check if time($t), $t <= $expires_at;

* attenuation blocks, appended offline by any holder with `attenuate`: only checks, so they
  can narrow (one operation, an earlier expiry, extra conditions) and never widen. Facts or
  rules in appended blocks are not trusted by the authorizer, and third-party blocks are not
  trusted at all.

The `key` fact is what the custodian checks against the data key itself (`keys/release.py`): the
source key it may release, and the kind and lifetime it binds into a destination key.

The authorizer states what is being attempted: `time`, `operation`, `request`, `version`,
`source` and `destination` facts, which attenuation checks may also refer to. It allows only
when the authority block's `grant` fact names exactly these values, the authority block grants
the operation, and every check in every block passes.

SINGLE USE IS THE CALLER'S JOB. A token is a bearer capability: `verify` cannot know whether it
was used before. The caller must record `Grant.use_id` (the authority block's revocation id)
in its database in the same transaction that starts the copy, and refuse any grant whose
`use_id` is already recorded. Attenuated tokens share the authority block, hence the `use_id`,
of the grant they came from, so a grant and all its narrowed forms are used up together.
Record `use_id`, never the token text or a hash of it: signatures cover decoded values, not
bytes, so one grant has several valid encodings (a protobuf default field may be left out),
all with the same revocation ids.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from biscuit_auth import (
    Algorithm,
    AuthorizerBuilder,
    Biscuit,
    BiscuitBuilder,
    BlockBuilder,
    Check,
    KeyPair,
    PrivateKey,
    PublicKey,
    Rule,
    UnverifiedBiscuit,
)

from custody.domain.errors import Denied, InvalidInput

UNWRAP_SOURCE = "unwrap-source"
WRAP_DESTINATION = "wrap-destination"
OPERATIONS: tuple[str, ...] = (UNWRAP_SOURCE, WRAP_DESTINATION)

# A minted grant is well under 1 KiB and each attenuation adds a few hundred bytes; the cap
# bounds the work a hostile token can cause before any signature is checked.
MAX_TOKEN_CHARS = 16_384
MAX_CLAIM_CHARS = 1_024

# The binding's default Datalog time limit is 1 ms, which a loaded machine can exceed on an
# honest token. Our Datalog is tiny; this limit only stops a hostile token that runs long.
_MAX_DATALOG_TIME = timedelta(milliseconds=100)

# The earliest time Biscuit dates can express. Used only to tell an expired attenuation from
# another failed check when composing the refusal message, never to allow anything.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_AUTHORITY = """
grant({request}, {version}, {source}, {destination}, {expires_at});
key({source_key}, {kind}, {ttl}, {holder});
right({unwrap_source});
right({wrap_destination});
check if time($t), $t <= {expires_at};
"""

_AUTHORIZER = """
time({now});
operation({operation});
request({request});
version({version});
source({source});
destination({destination});
allow if
  operation($op), right($op),
  request($r), version($v), source($s), destination($d),
  grant($r, $v, $s, $d, $e);
"""

_READ_GRANT = Rule("claims($r, $v, $s, $d, $e) <- grant($r, $v, $s, $d, $e)")
_READ_KEY = Rule("keyclaims($k, $kind, $ttl, $h) <- key($k, $kind, $ttl, $h)")


class GrantRefused(Denied):
    """A presented grant does not allow the attempted operation; the message says why."""


@dataclass(frozen=True)
class GrantClaims:
    """What a grant is bound to. `expires_at` is aware UTC, in whole seconds once minted.

    `source_key` is the data key the grant may release as its source; `kind` and `ttl_seconds`
    are what a destination key is bound to (0: no expiry), with `holder`, the principal a research
    or derivative copy is made for (only they read it without a request). Grants minted before these existed
    read back with them empty, and the custodian refuses them."""

    request_id: str
    version_digest: str
    source_replica: str
    destination_zone: str
    expires_at: datetime
    source_key: str = ""
    kind: str = ""
    ttl_seconds: int = 0
    holder: str = ""

    def __post_init__(self) -> None:
        for name in ("request_id", "version_digest", "source_replica", "destination_zone"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or len(value) > MAX_CLAIM_CHARS:
                raise InvalidInput(f"grant {name} must be a non-empty string")
        for name in ("source_key", "kind", "holder"):
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) > MAX_CLAIM_CHARS:
                raise InvalidInput(f"grant {name} must be a string")
        if isinstance(self.ttl_seconds, bool) or not isinstance(self.ttl_seconds, int) or self.ttl_seconds < 0:
            raise InvalidInput("grant ttl_seconds must be a whole number of seconds, 0 or more")
        if not isinstance(self.expires_at, datetime) or self.expires_at.utcoffset() is None:
            raise InvalidInput("grant expires_at must be a timezone-aware datetime")


@dataclass(frozen=True)
class Grant:
    """A token with the claims of its authority block and its revocation ids (hex)."""

    token: str
    claims: GrantClaims
    revocation_ids: tuple[str, ...]

    @property
    def use_id(self) -> str:
        """The authority block's revocation id: what the caller records to make it single use."""
        return self.revocation_ids[0]


def new_root_key() -> bytes:
    """A fresh 32-byte Ed25519 private key for signing grants; the custodian stores it."""
    return bytes(KeyPair().private_key.to_bytes())


def root_public_key(private: bytes) -> bytes:
    """The 32-byte public key that verifies grants signed with `private`."""
    return bytes(KeyPair.from_private_key(_private_key(private)).public_key.to_bytes())


def mint(root_private: bytes, claims: GrantClaims) -> Grant:
    """Sign a grant for `claims`, allowing both operations until `claims.expires_at`.

    Biscuit dates have whole-second precision, so the expiry is rounded down: the returned
    claims are exactly what `verify` will read back.
    """
    expires_at = _to_utc_seconds(claims.expires_at, round_up=False)
    if expires_at <= _EPOCH:
        raise InvalidInput("grant expires_at must be after 1970")
    claims = replace(claims, expires_at=expires_at)
    builder = BiscuitBuilder(
        _AUTHORITY,
        {
            "request": claims.request_id,
            "version": claims.version_digest,
            "source": claims.source_replica,
            "destination": claims.destination_zone,
            "expires_at": expires_at,
            "source_key": claims.source_key,
            "kind": claims.kind,
            "ttl": claims.ttl_seconds,
            "holder": claims.holder,
            "unwrap_source": UNWRAP_SOURCE,
            "wrap_destination": WRAP_DESTINATION,
        },
    )
    biscuit = builder.build(_private_key(root_private))
    return Grant(
        token=biscuit.to_base64(),
        claims=claims,
        revocation_ids=tuple(biscuit.revocation_ids),
    )


def attenuate(
    token: str,
    root_public: bytes,
    *,
    operation: str | None = None,
    expires_at: datetime | None = None,
    extra_checks: list[str] | None = None,
) -> str:
    """Append a block of checks that narrows `token`; the result can never do more.

    `operation` restricts the token to one operation, `expires_at` makes it expire no later
    than that (a later time changes nothing: the authority check still applies), and
    `extra_checks` are Datalog checks (`check if ...`) over the authorizer's facts, e.g.
    `check if destination("zone-a")`. The token is verified first: narrowing a forged token
    would only hide the forgery until later.
    """
    biscuit = _parse(token, _public_key(root_public))
    block = BlockBuilder()
    if operation is not None:
        if operation not in OPERATIONS:
            raise InvalidInput(f"unknown grant operation: {operation!r}")
        block.add_check(Check("check if operation({op})", {"op": operation}))
    if expires_at is not None:
        if not isinstance(expires_at, datetime) or expires_at.utcoffset() is None:
            raise InvalidInput("attenuation expires_at must be a timezone-aware datetime")
        expiry = max(_to_utc_seconds(expires_at, round_up=False), _EPOCH)
        block.add_check(Check("check if time($t), $t <= {exp}", {"exp": expiry}))
    for source in extra_checks or []:
        try:
            block.add_check(Check(source))
        except Exception:  # the binding raises DataLogError and others for bad Datalog
            raise InvalidInput("an extra grant check is not a valid Datalog check") from None
    if operation is None and expires_at is None and not extra_checks:
        raise InvalidInput("attenuation must add at least one restriction")
    try:
        return biscuit.append(block).to_base64()
    except Exception:  # e.g. a check that names an unbound parameter
        raise InvalidInput("an extra grant check is not a valid Datalog check") from None


def verify(
    token: str,
    root_public: bytes,
    *,
    request_id: str,
    version_digest: str,
    source_replica: str,
    destination_zone: str,
    operation: str,
    now: datetime,
) -> Grant:
    """Return the grant if `token` allows `operation` on exactly these values at `now`.

    Raises GrantRefused with a one-line reason for any token that does not; nothing else
    escapes for hostile tokens. The returned claims are the authority block's (an attenuated
    token may expire earlier than `claims.expires_at`).
    """
    if not isinstance(now, datetime) or now.utcoffset() is None:
        raise InvalidInput("now must be a timezone-aware datetime")
    if operation not in OPERATIONS:
        raise GrantRefused("grant does not allow unknown operations")
    public = _public_key(root_public)
    biscuit = _parse(token, public)
    claims = _authority_claims(biscuit)
    expected = (request_id, version_digest, source_replica, destination_zone)
    for name, wanted, reason in zip(
        ("request_id", "version_digest", "source_replica", "destination_zone"),
        expected,
        (
            "grant is for another request",
            "grant is for another version",
            "grant is for another source replica",
            "grant is for another destination",
        ),
        strict=True,
    ):
        if getattr(claims, name) != wanted:
            raise GrantRefused(reason)
    # Round up so that a fraction of a second past the expiry already counts as expired.
    moment = _to_utc_seconds(now, round_up=True)
    if moment > claims.expires_at:
        raise GrantRefused("grant expired")
    if not _authorized(biscuit, expected, operation, moment):
        # Datalog said no although the authority block matches: some check failed. Tell an
        # attenuated expiry apart from a restriction, for the message only.
        if _authorized(biscuit, expected, operation, _EPOCH):
            raise GrantRefused("grant expired")
        raise GrantRefused(f"grant does not allow {operation}")
    return Grant(token=token, claims=claims, revocation_ids=tuple(biscuit.revocation_ids))


def use_id(token: str, root_public: bytes) -> str:
    """The use id (authority revocation id) of a grant whose signature verifies, expired or not."""
    return _parse(token, _public_key(root_public)).revocation_ids[0]


def _parse(token: object, root: PublicKey) -> Biscuit:
    """Verify the token's signatures; refuse anything that does not parse or verify.

    The binding raises the same error for garbage and for a bad signature, so a token that
    fails is parsed again without its signatures to tell the two apart in the message.
    """
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise GrantRefused("grant is malformed")
    try:
        return Biscuit.from_base64(token, root)
    except BaseException as exc:
        _reraise_if_not_library_failure(exc)
    try:
        UnverifiedBiscuit.from_base64(token)
    except BaseException as exc:
        _reraise_if_not_library_failure(exc)
        raise GrantRefused("grant is malformed") from None
    raise GrantRefused("grant signature does not verify")


def _authority_claims(biscuit: Biscuit) -> GrantClaims:
    """Read the one `grant` fact of the authority block (the only block the query trusts)."""
    try:
        authorizer = _authorizer_builder(("", "", "", ""), UNWRAP_SOURCE, _EPOCH).build(biscuit)
        facts = authorizer.query(_READ_GRANT)
        if len(facts) != 1:
            raise GrantRefused("grant is malformed")
        terms = facts[0].terms
        if len(terms) != 5 or not all(isinstance(term, str) for term in terms[:4]):
            raise GrantRefused("grant is malformed")
        keys = authorizer.query(_READ_KEY)
        if len(keys) > 1:
            raise GrantRefused("grant is malformed")
        key_terms = keys[0].terms if keys else ["", "", 0, ""]
        if len(key_terms) != 4 or not isinstance(key_terms[2], int):
            raise GrantRefused("grant is malformed")
        return GrantClaims(
            request_id=terms[0],
            version_digest=terms[1],
            source_replica=terms[2],
            destination_zone=terms[3],
            expires_at=terms[4],
            source_key=key_terms[0],
            kind=key_terms[1],
            ttl_seconds=key_terms[2],
            holder=key_terms[3],
        )
    except GrantRefused:
        raise
    except BaseException as exc:  # InvalidInput from GrantClaims included
        _reraise_if_not_library_failure(exc)
        raise GrantRefused("grant is malformed") from None


def _authorized(
    biscuit: Biscuit, expected: tuple[str, str, str, str], operation: str, now: datetime
) -> bool:
    """Whether the authorizer allows `operation` on `expected` at `now`, every check passing."""
    try:
        _authorizer_builder(expected, operation, now).build(biscuit).authorize()
    except BaseException as exc:
        _reraise_if_not_library_failure(exc)
        return False
    return True


def _authorizer_builder(
    expected: tuple[str, str, str, str], operation: str, now: datetime
) -> AuthorizerBuilder:
    request_id, version_digest, source_replica, destination_zone = expected
    builder = AuthorizerBuilder(
        _AUTHORIZER,
        {
            "now": now,
            "operation": operation,
            "request": request_id,
            "version": version_digest,
            "source": source_replica,
            "destination": destination_zone,
        },
    )
    limits = builder.limits()
    limits.max_time = _MAX_DATALOG_TIME
    builder.set_limits(limits)
    return builder


def _reraise_if_not_library_failure(exc: BaseException) -> None:
    """Let interpreter signals through; anything else from the binding means refuse.

    PyO3 turns a Rust panic into PanicException, which derives from BaseException rather than
    Exception, so a hostile token that panicked the parser would otherwise escape `verify`.
    """
    if isinstance(exc, Exception) or type(exc).__name__ == "PanicException":
        return
    raise exc


def _to_utc_seconds(moment: datetime, *, round_up: bool) -> datetime:
    """`moment` in UTC (the binding accepts only `datetime.UTC`) at whole-second precision."""
    moment = moment.astimezone(UTC)
    whole = moment.replace(microsecond=0)
    if round_up and moment.microsecond:
        whole += timedelta(seconds=1)
    return whole


def _private_key(private: bytes) -> PrivateKey:
    if not isinstance(private, bytes) or len(private) != 32:
        raise InvalidInput("grant root private key must be 32 bytes")
    return PrivateKey.from_bytes(private, Algorithm.Ed25519)


def _public_key(public: bytes) -> PublicKey:
    if not isinstance(public, bytes) or len(public) != 32:
        raise InvalidInput("grant root public key must be 32 bytes")
    try:
        return PublicKey.from_bytes(public, Algorithm.Ed25519)
    except Exception:
        raise InvalidInput("grant root public key is not a valid Ed25519 key") from None
