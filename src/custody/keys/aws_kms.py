"""The aws-kms custodian: KEKs and the manifest-signing key live in AWS KMS (or anything that speaks its API).

Keys in KMS, found by alias under `alias/custody/<workspace id>` (characters an alias may not hold are
written `_xx`, their UTF-8 bytes in hex, so distinct names never share an alias):
- `<prefix>/<zone>/v<N>`: the zone's KEK epoch N, a symmetric key (SYMMETRIC_DEFAULT,
  ENCRYPT_DECRYPT) tagged with its workspace, zone, version and creation time. A data key is made
  by GenerateDataKey (AES_256) and its wrapping is KMS's ciphertext blob; the encryption context is
  the key's `Binding` plus the epoch, so an edit of the binding, a blob moved to another record or
  epoch, or any altered byte fails to decrypt. Decrypt and ReEncrypt name the epoch's key by its
  alias, so KMS checks the blob is of the key that alias names at that moment; the alias -> key id
  lookups behind new data keys, rewrap targets and listings are cached per custodian object and
  looked up again on a miss (another process may have rotated).
  Retiring an epoch disables the key, schedules its deletion after KMS's minimum window of 7 days
  and deletes its alias: from then on nothing unwraps under it, and KMS destroys the material.
- `<prefix>/signing`: the manifest key, ECC_NIST_P256 SIGN_VERIFY; signatures come from KMS Sign
  (ECDSA_SHA_256, DER) and are checked against the public key before they are returned. Messages
  up to KMS's 4,096-byte limit go as RAW; longer ones as their SHA-256 DIGEST (the same signature).
  moto signs RAW messages of any length with P-256 but hashes a DIGEST again; such a signature
  fails the check, and the message is then sent RAW (which real KMS would have refused). moto does
  emulate ECC_NIST_P256 signing, so this key needs no software fallback.
- `<prefix>/seal`: a symmetric key that seals the software secrets below.

Software keys, sealed by KMS: the Ed25519 "ledger" and "witness" keys (KMS offers no Ed25519 in
moto, and C2SP signed notes need it) and the 32-byte secrets of `secret(name)` (the grant root key,
the small-secret key, the release journal's MAC key) are kept in `keys/kms-secrets.sealed` in the
workspace, AES-256-GCM under a data key that KMS generated on the seal key with the encryption
context {"custody": "secrets", "workspace": id}; the file holds the wrapped data key, the nonce and
the ciphertext, and is rewritten atomically under a lock. There is no keyring and no passphrase:
without KMS nothing decrypts.

Credentials come only from the standard AWS environment of the process that holds the custodian;
custody.toml records the region, the endpoint and the alias prefix. Timeouts are short (connect
2 s, read 10 s, one retry) so a dead endpoint fails within seconds with a one-line error.

Emulator note: moto (the test server) does not refuse Decrypt under a disabled or pending-deletion
key, nor check ReEncrypt's SourceKeyId. The alias deletion at retirement is what refuses an unwrap
there. For a rewrap the source epoch's key id comes from this object's cache (looked up on a miss)
and is compared with the key ReEncrypt reports having decrypted with; so under moto, and only there,
an object that cached an epoch before another process retired it could still rewrap from it.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import secrets
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from custody.domain.errors import AuthenticationError, CustodyError, Denied, IntegrityError, InvalidInput, NotFound
from custody.keys.custodian import DEK_BYTES, Binding, KekVersion, KeyInfo, Purpose, WrappedKey
from custody.keys.files import write_private

SECRETS_FILE = "keys/kms-secrets.sealed"
FORMAT = "custody-kms-secrets"
MAX_SECRETS_BYTES = 1024 * 1024
PENDING_WINDOW_DAYS = 7  # KMS's minimum
RAW_MESSAGE_LIMIT = 4096  # KMS Sign takes at most this many bytes as a RAW message
TAG = "custody:"
RETIRED = f"disabled now; KMS deletes it after the {PENDING_WINDOW_DAYS}-day minimum window"
# an epoch key that is gone: alias deleted, key disabled or pending deletion, or deleted
_GONE = {"NotFoundException", "DisabledException", "KMSInvalidStateException"}
# the blob or its context was altered, or the blob belongs to another key
_ALTERED = {"InvalidCiphertextException", "IncorrectKeyException"}
_DENIED = {"AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException",
           "ExpiredTokenException", "IncompleteSignature", "MissingAuthenticationToken"}


class KmsError(CustodyError):
    """KMS answered with an error; `code` is its error code."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class KmsDenied(KmsError, Denied):
    """KMS refused these credentials or this action."""


def _altered(exc: KmsError) -> bool:
    """The ciphertext was altered or belongs to another key. moto answers a blob naming a key it does not
    hold (or another key than KeyId) with AccessDenied; KMS's own AccessDenied says who "is not authorized"."""
    return exc.code in _ALTERED or (exc.code == "AccessDeniedException" and "not authorized" not in exc.message)


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s.encode(), validate=True)


def _now() -> datetime:
    return datetime.now(timezone.utc)


# -- alias names -------------------------------------------------------------------------------


def alias_part(text: str) -> str:
    """One alias component: [A-Za-z0-9-] as is, every other byte as `_xx` (reversible, so injective)."""
    return "".join(ch if (ch.isascii() and (ch.isalnum() or ch == "-")) else
                   "".join(f"_{b:02x}" for b in ch.encode()) for ch in text)


def _from_alias_part(part: str) -> str:
    out, i = bytearray(), 0
    while i < len(part):
        if part[i] == "_":
            out.append(int(part[i + 1:i + 3], 16))
            i += 3
        else:
            out += part[i].encode()
            i += 1
    return out.decode()


def alias_prefix(workspace_id: str) -> str:
    return f"alias/custody/{alias_part(workspace_id)}"


# -- the KMS client --------------------------------------------------------------------------------


def _client(region: str, endpoint_url: str | None):  # noqa: ANN202
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=2, read_timeout=10, retries={"total_max_attempts": 2, "mode": "standard"})
    return boto3.session.Session().client("kms", region_name=region, endpoint_url=endpoint_url or None,
                                          config=config)


class _Kms:
    """KMS calls with errors turned into custody errors (one line, no credentials)."""

    def __init__(self, region: str, endpoint_url: str | None) -> None:
        self.region = region
        self.endpoint_url = endpoint_url
        self.where = endpoint_url or f"AWS KMS ({region})"
        self._client_obj = None
        self._lock = threading.Lock()

    @property
    def client(self):  # noqa: ANN201
        if self._client_obj is None:
            with self._lock:
                if self._client_obj is None:
                    self._client_obj = _client(self.region, self.endpoint_url)
        return self._client_obj

    def __call__(self, op: str, **kw: Any) -> dict:
        from botocore import exceptions as bx

        try:
            return getattr(self.client, op)(**kw)
        except bx.ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code") or "Unknown")
            cls = KmsDenied if code in _DENIED else KmsError
            raise cls(f"KMS {op} refused at {self.where}: {code}: {_one_line(error.get('Message', ''))}",
                      code) from None
        except (bx.NoCredentialsError, bx.PartialCredentialsError):
            raise AuthenticationError("no AWS credentials in this process's environment: the aws-kms custodian "
                                      "cannot reach KMS") from None
        except (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError,
                bx.ConnectionClosedError) as exc:
            raise CustodyError(f"KMS at {self.where} did not answer ({op}): {type(exc).__name__}") from None
        except bx.BotoCoreError as exc:
            raise CustodyError(f"KMS {op} at {self.where} failed: {type(exc).__name__}") from None


# -- the custodian ---------------------------------------------------------------------------------


class KmsCustodian:
    name = "aws-kms"

    def __init__(self, home: Path, workspace_id: str, *, region: str, endpoint_url: str | None = None,
                 prefix: str | None = None, lazy: bool = False) -> None:
        """Opens the sealed secrets at once (a custodian that opens is one that works, as `health`
        expects), unless `lazy` (while `create` makes them)."""
        self.home = home
        self.workspace_id = workspace_id
        self.prefix = prefix or alias_prefix(workspace_id)
        self.kms = _Kms(region, endpoint_url)
        self._lock = threading.RLock()
        self._ids: dict[str, str] = {}  # alias -> key id (cached; looked up again on a miss)
        self._created: dict[str, datetime] = {}  # key id -> creation date (never changes)
        self._versions: dict[str, set[int]] = {}  # zone -> live epochs known to this object
        self._scanned = False
        self._public: ec.EllipticCurvePublicKey | None = None
        self._sealed = _SealedSecrets(home / SECRETS_FILE, self)
        if not lazy:
            self._sealed.load()

    # -- aliases -----------------------------------------------------------------------------

    def _alias(self, zone: str, version: int) -> str:
        return f"{self.prefix}/{alias_part(zone)}/v{version}"

    @property
    def seal_alias(self) -> str:
        return f"{self.prefix}/seal"

    @property
    def signing_alias(self) -> str:
        return f"{self.prefix}/signing"

    def _scan(self) -> None:
        """Every alias of this workspace, from KMS (the authority): replaces the cache."""
        ids: dict[str, str] = {}
        marker = None
        while True:
            page = self.kms("list_aliases", Limit=100, **({"Marker": marker} if marker else {}))
            for entry in page.get("Aliases", []):
                name, target = entry.get("AliasName", ""), entry.get("TargetKeyId")
                if name.startswith(self.prefix + "/") and target:
                    ids[name] = target
            marker = page.get("NextMarker")
            if not page.get("Truncated") or not marker:
                break
        versions: dict[str, set[int]] = {}
        for name in ids:
            rest = name[len(self.prefix) + 1:]
            zone_part, _, v = rest.rpartition("/")
            if zone_part and v[:1] == "v" and v[1:].isdigit():
                try:
                    versions.setdefault(_from_alias_part(zone_part), set()).add(int(v[1:]))
                except (ValueError, UnicodeDecodeError):
                    continue  # not an alias custody writes
        with self._lock:
            self._ids, self._versions, self._scanned = ids, versions, True

    def _describe(self, alias: str) -> dict | None:
        """The key an alias names now (None when it names none); cached when the key is enabled."""
        try:
            meta = self.kms("describe_key", KeyId=alias)["KeyMetadata"]
        except KmsError as exc:
            if exc.code == "NotFoundException":
                with self._lock:
                    self._ids.pop(alias, None)
                return None
            raise
        with self._lock:
            self._created[meta["KeyId"]] = _aware(meta.get("CreationDate"))
            if meta.get("KeyState") == "Enabled":
                self._ids[alias] = meta["KeyId"]
            else:
                self._ids.pop(alias, None)
        return meta

    def _key_id(self, alias: str) -> str | None:
        """The enabled key behind an alias, from the cache or (on a miss) from KMS."""
        found = self._ids.get(alias)
        if found is not None:
            return found
        meta = self._describe(alias)
        return meta["KeyId"] if meta is not None and meta.get("KeyState") == "Enabled" else None

    def _forget(self, alias: str) -> None:
        with self._lock:
            self._ids.pop(alias, None)

    def _created_at(self, key_id: str) -> datetime:
        if key_id not in self._created:
            meta = self.kms("describe_key", KeyId=key_id)["KeyMetadata"]
            self._created[key_id] = _aware(meta.get("CreationDate"))
        return self._created[key_id]

    def _known(self, zone: str, fresh: bool) -> set[int]:
        if zone not in self._versions and (fresh or not self._scanned):
            self._scan()
        return self._versions.get(zone, set())

    def _newest(self, zone: str) -> int | None:
        """The zone's active epoch: the newest known, then any newer one another process made."""
        known = self._known(zone, fresh=True)
        if not known:
            return None
        newest = max(known)
        while self._describe(self._alias(zone, newest + 1)) is not None:
            newest += 1
            with self._lock:
                self._versions.setdefault(zone, set()).add(newest)
        return newest

    def _active(self, zone: str) -> tuple[int, str]:
        version = self._newest(zone)
        if version is None:
            raise NotFound(f"custodian holds no key for zone {zone}")
        key_id = self._key_id(self._alias(zone, version))
        if key_id is None:
            raise CustodyError(f"zone {zone}: the KMS key of KEK version {version} is not enabled")
        return version, key_id

    # -- creating keys ---------------------------------------------------------------------

    def _tags(self, purpose: str, zone: str | None = None, version: int | None = None) -> list[dict]:
        tags = {"workspace": self.workspace_id, "purpose": purpose, "created-at": _now().isoformat(timespec="seconds")}
        if zone is not None:
            tags["zone"] = zone
        if version is not None:
            tags["version"] = str(version)
        return [{"TagKey": TAG + k, "TagValue": v} for k, v in tags.items()]

    def _create_key(self, description: str, tags: list[dict], **spec: str) -> str:
        meta = self.kms("create_key", Description=description, Tags=tags, **spec)["KeyMetadata"]
        self._created[meta["KeyId"]] = _aware(meta.get("CreationDate"))
        return meta["KeyId"]

    def _discard(self, key_id: str) -> None:
        """A key made in vain (another process won the alias): disabled and scheduled for deletion."""
        try:
            self.kms("disable_key", KeyId=key_id)
            self.kms("schedule_key_deletion", KeyId=key_id, PendingWindowInDays=PENDING_WINDOW_DAYS)
        except CustodyError:
            pass  # it holds nothing; an operator may delete it by its tags

    def _create_named(self, alias: str, description: str, tags: list[dict], **spec: str) -> str:
        """A key under `alias`, or the key another process put there first."""
        key_id = self._create_key(description, tags, **spec)
        try:
            self.kms("create_alias", AliasName=alias, TargetKeyId=key_id)
        except KmsError as exc:
            if exc.code != "AlreadyExistsException":
                self._discard(key_id)
                raise
            self._discard(key_id)
            found = self._key_id(alias)
            if found is None:
                raise CustodyError(f"KMS alias {alias} names a key that is not enabled") from None
            return found
        with self._lock:
            self._ids[alias] = key_id
        return key_id

    def _new_epoch_key(self, zone: str, after: int) -> int:
        """A new KEK epoch after `after`; if another process took that number, the next free one."""
        version = after + 1
        key_id = self._create_key(f"custody {self.workspace_id}: KEK of zone {zone}", self._tags("kek", zone, version),
                                  KeySpec="SYMMETRIC_DEFAULT", KeyUsage="ENCRYPT_DECRYPT")
        for _ in range(16):
            try:
                self.kms("create_alias", AliasName=self._alias(zone, version), TargetKeyId=key_id)
                break
            except KmsError as exc:
                if exc.code != "AlreadyExistsException":
                    self._discard(key_id)
                    raise
                version += 1
                self.kms("tag_resource", KeyId=key_id, Tags=[{"TagKey": TAG + "version", "TagValue": str(version)}])
        else:
            self._discard(key_id)
            raise CustodyError(f"zone {zone}: could not claim a new KEK version (others kept taking them)")
        with self._lock:
            self._ids[self._alias(zone, version)] = key_id
            self._versions.setdefault(zone, set()).add(version)
        return version

    # -- KEKs and data keys ------------------------------------------------------------------

    def ensure_zone(self, zone: str) -> None:
        if self._known(zone, fresh=False):
            return
        alias = self._alias(zone, 1)
        if self._describe(alias) is None:
            self._create_named(alias, f"custody {self.workspace_id}: KEK of zone {zone}", self._tags("kek", zone, 1),
                               KeySpec="SYMMETRIC_DEFAULT", KeyUsage="ENCRYPT_DECRYPT")
        with self._lock:
            self._versions.setdefault(zone, set()).add(1)

    def _context(self, binding: Binding | None, key_id: str, zone: str, version: int) -> dict[str, str]:
        if binding is None:
            return {"custody": "dek-v1", "key": key_id, "zone": zone, "epoch": str(version)}
        if binding.key_id != key_id or binding.zone != zone:
            raise IntegrityError(f"data key {key_id}: its binding names another key or zone")
        return {**binding.context(), "epoch": str(version)}

    def new_data_key(self, binding: Binding) -> tuple[bytes, WrappedKey]:
        version, key_id = self._active(binding.zone)
        out = self.kms("generate_data_key", KeyId=key_id, KeySpec="AES_256",
                       EncryptionContext=self._context(binding, binding.key_id, binding.zone, version))
        dek = out["Plaintext"]
        if len(dek) != DEK_BYTES:
            raise IntegrityError(f"KMS returned a data key of {len(dek)} bytes")
        return dek, WrappedKey(key_id=binding.key_id, zone=binding.zone, kek_version=version,
                               blob=out["CiphertextBlob"], binding=binding)

    def _destroyed(self, wrapped: WrappedKey) -> IntegrityError:
        return IntegrityError(
            f"data key {wrapped.key_id}: KEK version {wrapped.kek_version} of zone {wrapped.zone} was destroyed")

    def _altered(self, wrapped: WrappedKey) -> IntegrityError:
        return IntegrityError(f"data key {wrapped.key_id} does not unwrap: altered or misplaced")

    def _source(self, wrapped: WrappedKey) -> tuple[str, dict[str, str]]:
        """The epoch's alias and the encryption context to unwrap under. Decrypt and ReEncrypt name the
        epoch by its alias: KMS checks that the blob is of the key the alias names at that moment, so
        an epoch retired by any process (its alias deleted) refuses at once, whatever this one cached."""
        context = self._context(wrapped.binding, wrapped.key_id, wrapped.zone, wrapped.kek_version)
        if not wrapped.blob:
            raise self._altered(wrapped)
        return self._alias(wrapped.zone, wrapped.kek_version), context

    def _failed(self, exc: KmsError, wrapped: WrappedKey, alias: str) -> CustodyError:
        if _altered(exc):
            return self._altered(wrapped)
        if exc.code in _GONE:
            self._forget(alias)
            return self._destroyed(wrapped)
        return exc

    def unwrap(self, wrapped: WrappedKey) -> bytes:
        alias, context = self._source(wrapped)
        try:
            out = self.kms("decrypt", CiphertextBlob=wrapped.blob, EncryptionContext=context, KeyId=alias,
                           EncryptionAlgorithm="SYMMETRIC_DEFAULT")
        except KmsError as exc:
            raise self._failed(exc, wrapped, alias) from None
        if len(out["Plaintext"]) != DEK_BYTES:
            raise self._altered(wrapped)
        return out["Plaintext"]

    def rewrap(self, wrapped: WrappedKey) -> WrappedKey:
        alias, context = self._source(wrapped)
        source_id = self._key_id(alias)  # moto does not check SourceKeyId: the answer's is compared with it
        if source_id is None:
            raise self._destroyed(wrapped)
        version, target_id = self._active(wrapped.zone)
        try:
            out = self.kms("re_encrypt", CiphertextBlob=wrapped.blob, SourceEncryptionContext=context,
                           SourceKeyId=alias, DestinationKeyId=target_id,
                           DestinationEncryptionContext={**context, "epoch": str(version)})
        except KmsError as exc:
            raise self._failed(exc, wrapped, alias) from None
        if not str(out.get("SourceKeyId", "")).endswith(source_id):
            raise self._altered(wrapped)
        return WrappedKey(key_id=wrapped.key_id, zone=wrapped.zone, kek_version=version, blob=out["CiphertextBlob"],
                          binding=wrapped.binding)

    def begin_rotation(self, zone: str) -> int:
        self._scan()
        newest = self._newest(zone)
        if newest is None:
            raise NotFound(f"custodian holds no key for zone {zone}")
        return self._new_epoch_key(zone, newest)

    def retire(self, zone: str, version: int) -> str:
        self._scan()
        newest = self._newest(zone)
        if newest is None:
            raise NotFound(f"custodian holds no key for zone {zone}")
        if version == newest:
            raise CustodyError(f"zone {zone}: the newest KEK version cannot be retired")
        alias = self._alias(zone, version)
        key_id = self._ids.get(alias)
        if key_id is None:
            return "already destroyed (no KMS alias names that version)"
        try:
            self.kms("tag_resource", KeyId=key_id, Tags=[{"TagKey": TAG + "retired-at",
                                                          "TagValue": _now().isoformat(timespec="seconds")}])
        except KmsError as exc:
            if exc.code not in _GONE:
                raise
        for op, kw in (("disable_key", {}), ("schedule_key_deletion", {"PendingWindowInDays": PENDING_WINDOW_DAYS})):
            try:
                self.kms(op, KeyId=key_id, **kw)
            except KmsError as exc:
                if exc.code != "KMSInvalidStateException":  # already pending deletion: a retry of a retirement
                    raise
        try:
            self.kms("delete_alias", AliasName=alias)
        except KmsError as exc:
            if exc.code != "NotFoundException":
                raise
        with self._lock:
            self._ids.pop(alias, None)
            self._versions.get(zone, set()).discard(version)
        return RETIRED

    def kek_versions(self, zone: str) -> list[KekVersion]:
        self._scan()
        versions = sorted(self._versions.get(zone, ()))
        if not versions:
            raise NotFound(f"custodian holds no key for zone {zone}")
        return [KekVersion(zone=zone, version=v, created_at=self._created_at(self._ids[self._alias(zone, v)]),
                           state="active" if v == versions[-1] else "retired") for v in versions]

    def keys(self) -> list[KeyInfo]:
        self._scan()
        out = []
        for zone in sorted(self._versions):
            for v in sorted(self._versions[zone]):
                key_id = self._ids[self._alias(zone, v)]
                out.append(KeyInfo("kek", zone, v, self._created_at(key_id), f"kms:{key_id}"))
        signing = self._ids.get(self.signing_alias)
        if signing is not None:
            out.append(KeyInfo("signing", None, 1, self._created_at(signing), f"kms:{signing}"))
        for purpose in ("ledger", "witness"):
            created = self._sealed.created_at(_ed_name(purpose))
            if created is not None:
                out.append(KeyInfo(purpose, None, 1, created, "software (sealed by KMS)"))
        return out

    # -- signing ---------------------------------------------------------------------------

    def _signing_key(self) -> tuple[str, ec.EllipticCurvePublicKey]:
        key_id = self._key_id(self.signing_alias)
        if key_id is None:
            raise CustodyError(f"no enabled signing key under KMS alias {self.signing_alias}")
        if self._public is None:
            out = self.kms("get_public_key", KeyId=key_id)
            public = serialization.load_der_public_key(out["PublicKey"])
            if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
                raise IntegrityError(f"KMS key {self.signing_alias} is not an ECC_NIST_P256 key")
            self._public = public
        return key_id, self._public

    def _kms_sign(self, key_id: str, message: bytes, message_type: str) -> bytes:
        return self.kms("sign", KeyId=key_id, Message=message, MessageType=message_type,
                        SigningAlgorithm="ECDSA_SHA_256")["Signature"]

    def sign(self, purpose: Purpose, message: bytes) -> bytes:
        if purpose != "signing":
            return self._ed25519(purpose).sign(message)
        key_id, public = self._signing_key()
        if len(message) <= RAW_MESSAGE_LIMIT:
            tries = [(message, "RAW")]
        else:  # the digest is what KMS signs; an emulator that hashes it again fails the check, then RAW
            tries = [(hashlib.sha256(message).digest(), "DIGEST"), (message, "RAW")]
        for payload, kind in tries:
            signature = self._kms_sign(key_id, payload, kind)
            try:
                public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
                return signature
            except InvalidSignature:
                continue
        raise IntegrityError(f"KMS key {self.signing_alias} returned a signature that does not verify")

    def _ed25519(self, purpose: str) -> ed25519.Ed25519PrivateKey:
        if purpose not in ("ledger", "witness"):
            raise InvalidInput(f"no key for purpose {purpose!r}: signing, ledger or witness")
        seed = self._sealed.get(_ed_name(purpose), lambda: ed25519.Ed25519PrivateKey.generate().private_bytes_raw())
        return ed25519.Ed25519PrivateKey.from_private_bytes(seed)

    def public_key_pem(self, purpose: Purpose) -> bytes:
        key = self._signing_key()[1] if purpose == "signing" else self._ed25519(purpose).public_key()
        return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    # -- software secrets ------------------------------------------------------------------

    def secret(self, name: str) -> bytes:
        return self._sealed.get("secret:" + name, lambda: secrets.token_bytes(32))

    # -- creation ---------------------------------------------------------------------------

    @classmethod
    def create(cls, home: Path, workspace_id: str, *, region: str, endpoint_url: str | None) -> "KmsCustodian":
        path = home / SECRETS_FILE
        if path.exists():
            raise CustodyError(f"KMS-sealed secrets already exist at {path}")
        custodian = cls(home, workspace_id, region=region, endpoint_url=endpoint_url, lazy=True)
        made: list[str] = []
        try:
            custodian._scan()
            if custodian._ids:
                raise CustodyError(f"KMS already holds keys under {custodian.prefix}: refusing to reuse them")
            for alias, purpose, spec in (
                    (custodian.seal_alias, "seal", {"KeySpec": "SYMMETRIC_DEFAULT", "KeyUsage": "ENCRYPT_DECRYPT"}),
                    (custodian.signing_alias, "signing", {"KeySpec": "ECC_NIST_P256", "KeyUsage": "SIGN_VERIFY"})):
                made.append(custodian._create_named(alias, f"custody {workspace_id}: {purpose}",
                                                    custodian._tags(purpose), **spec))
            custodian._sealed.create({
                _ed_name(p): ed25519.Ed25519PrivateKey.generate().private_bytes_raw() for p in ("ledger", "witness")})
        except BaseException:
            for key_id in made:
                custodian._discard(key_id)
            raise
        return custodian


def _ed_name(purpose: str) -> str:
    return f"ed25519:{purpose}"


def _aware(moment: object) -> datetime:
    if isinstance(moment, datetime):
        return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return _now()


class _SealedSecrets:
    """Named 32-byte secrets in one file, AES-256-GCM under a data key wrapped by the KMS seal key."""

    def __init__(self, path: Path, custodian: KmsCustodian) -> None:
        self.path = path
        self.custodian = custodian
        self._lock = threading.RLock()
        self._stamp: tuple[int, int, int] | None = None
        self._entries: dict[str, dict] | None = None
        self._wrapped: bytes | None = None  # the data key as KMS wrapped it, and in plain:
        self._key: bytes | None = None

    def _context(self) -> dict[str, str]:
        return {"custody": "secrets", "workspace": self.custodian.workspace_id}

    def _aad(self, envelope: dict) -> bytes:
        bound = {k: envelope[k] for k in ("format", "version", "workspace", "data_key")}
        return json.dumps(bound, sort_keys=True, separators=(",", ":")).encode()

    def create(self, values: dict[str, bytes]) -> None:
        out = self.custodian.kms("generate_data_key", KeyId=self.custodian.seal_alias, KeySpec="AES_256",
                                 EncryptionContext=self._context())
        self._wrapped, self._key = out["CiphertextBlob"], out["Plaintext"]
        stamp = _now().isoformat()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            if self.path.exists():
                raise CustodyError(f"KMS-sealed secrets already exist at {self.path}")
            self._entries = {name: {"value": _b64(v), "created_at": stamp} for name, v in values.items()}
            self._write()

    def load(self) -> None:
        try:
            st = self.path.stat()
            raw = self.path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no KMS-sealed secrets at {self.path}") from None
        if len(raw) > MAX_SECRETS_BYTES:
            raise IntegrityError("the KMS-sealed secrets file is larger than any custody writes")
        try:
            envelope = json.loads(raw)
            if envelope.get("format") != FORMAT or envelope.get("version") != 1:
                raise ValueError("unknown format")
            wrapped, nonce, ciphertext = (_unb64(envelope[k]) for k in ("data_key", "nonce", "ciphertext"))
            aad = self._aad(envelope)
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"the KMS-sealed secrets file is malformed: {exc}") from None
        if envelope["workspace"] != self.custodian.workspace_id:
            raise IntegrityError("the KMS-sealed secrets file belongs to another workspace")
        if wrapped != self._wrapped or self._key is None:  # once per custodian object (and per data key)
            try:
                out = self.custodian.kms("decrypt", CiphertextBlob=wrapped, EncryptionContext=self._context(),
                                         KeyId=self.custodian.seal_alias, EncryptionAlgorithm="SYMMETRIC_DEFAULT")
            except KmsError as exc:
                if _altered(exc):
                    raise IntegrityError("the KMS-sealed secrets' data key does not unwrap: altered or from "
                                         "another workspace") from None
                raise
            self._wrapped, self._key = wrapped, out["Plaintext"]
        try:
            plain = AESGCM(self._key).decrypt(nonce, ciphertext, aad)
        except (InvalidTag, ValueError):
            raise IntegrityError("the KMS-sealed secrets file does not open: altered") from None
        self._entries = json.loads(plain)["entries"]
        self._stamp = (st.st_mtime_ns, st.st_size, st.st_ino)

    def _fresh(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            raise NotFound(f"no KMS-sealed secrets at {self.path}") from None
        if self._entries is None or (st.st_mtime_ns, st.st_size, st.st_ino) != self._stamp:
            self.load()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self.path.with_suffix(".lock")
        with self._lock, open(os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def get(self, name: str, make: Callable[[], bytes]) -> bytes:
        """The secret `name`, made and sealed on first use (by whichever process is first)."""
        if self._entries is None:
            self.load()
        assert self._entries is not None
        if name not in self._entries:
            with self._locked():
                self._fresh()  # another process may have added it, or others, since this one read
                if name not in self._entries:
                    self._entries[name] = {"value": _b64(make()), "created_at": _now().isoformat()}
                    self._write()
        return _unb64(self._entries[name]["value"])

    def created_at(self, name: str) -> datetime | None:
        if self._entries is None:
            self.load()
        assert self._entries is not None
        entry = self._entries.get(name)
        return None if entry is None else datetime.fromisoformat(entry["created_at"])

    def _write(self) -> None:
        assert self._key is not None and self._wrapped is not None
        envelope = {"format": FORMAT, "version": 1, "workspace": self.custodian.workspace_id,
                    "seal_key": self.custodian.seal_alias, "data_key": _b64(self._wrapped)}
        nonce = secrets.token_bytes(12)
        plain = json.dumps({"entries": self._entries}, sort_keys=True).encode()
        envelope["nonce"] = _b64(nonce)
        envelope["ciphertext"] = _b64(AESGCM(self._key).encrypt(nonce, plain, self._aad(envelope)))
        write_private(self.path, json.dumps(envelope, indent=1).encode())
        st = self.path.stat()
        self._stamp = (st.st_mtime_ns, st.st_size, st.st_ino)


# -- the backend entry points (keys/backends.py) ----------------------------------------------


def _region(value: object) -> str:
    region = str(value or os.environ.get("AWS_DEFAULT_REGION") or "")
    if not region:
        raise InvalidInput("aws-kms needs a region: --kms-region, or AWS_DEFAULT_REGION in the environment")
    return region


def create_custodian(home: Path, workspace_id: str, options: dict) -> tuple[KmsCustodian, dict]:
    """`options`: region (default $AWS_DEFAULT_REGION), endpoint_url (optional); others are ignored."""
    region = _region(options.get("region"))
    endpoint = options.get("endpoint_url") or None
    custodian = KmsCustodian.create(home, workspace_id, region=region, endpoint_url=str(endpoint) if endpoint else None)
    table: dict[str, str] = {"region": region}
    if endpoint:
        table["endpoint_url"] = str(endpoint)
    table["alias_prefix"] = custodian.prefix
    return custodian, table


def open_custodian(home: Path, workspace_id: str, table: dict, passphrase) -> KmsCustodian:  # noqa: ANN001
    """No passphrase: KMS and the AWS credentials in the environment are what open it."""
    prefix = table.get("alias_prefix") or alias_prefix(workspace_id)
    if not isinstance(prefix, str) or not prefix.startswith("alias/"):
        raise CustodyError(f"{home / 'custody.toml'}: [custodian] alias_prefix must be a KMS alias name")
    endpoint = table.get("endpoint_url") or None
    return KmsCustodian(home, workspace_id, region=_region(table.get("region")),
                        endpoint_url=str(endpoint) if endpoint else None, prefix=prefix)
