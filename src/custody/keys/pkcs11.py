"""The PKCS#11 custodian: keys generated inside a token (an HSM; SoftHSM2 in tests) that never leave it.

What lives in the token, under the labels `custody/<workspace id>/...` (`label_prefix` in custody.toml):
- `kek/<zone>/<version>`: each zone's KEK epochs, AES-256, non-extractable and sensitive, good for
  encrypt/decrypt only. A data key is wrapped by AES-GCM inside the token: blob = 12-byte nonce ||
  ciphertext and tag, with the binding's associated data. Retiring an epoch destroys its object.
- `signing`: the manifest key, an ECDSA P-256 key pair (the SHA-256 digest is taken here, the token
  signs it with CKM_ECDSA, the raw r||s becomes DER).
- `ledger`, `witness`: Ed25519 key pairs signed with the token's CKM_EDDSA (SoftHSM2 2.6 does it; the
  curve is named by the OID id-Ed25519). No Ed25519 key is kept in software.
- `seal`: an AES-256 key that seals the few software secrets custody needs as bytes (the grant root
  key, the small-secret key, the release journal's MAC key) in `keys/pkcs11-secrets.sealed`.
Every object's CKA_ID holds its creation time (ISO 8601), which `keys()` reports as its age.

The PIN comes only from CUSTODY_PKCS11_PIN, never from custody.toml: nothing in the workspace folder
opens without the token. Objects are created, rotated and destroyed under an exclusive lock on
`keys/pkcs11.lock`, and each zone's newest epoch is noted in `keys/pkcs11.epochs` (a hint and a change
signal, never trusted alone: the token is asked whether that epoch exists and whether a newer one does).
A process notices another's new epoch through that file, and a destroyed one because the token no
longer honours its handle.

In one process the library is loaded once per path, and each token is logged in once: PKCS#11 login
state belongs to the process, not to a session. That login session is shared by every custodian object
of the process (one PKCS#11 call at a time, under one lock), and the objects found through it are
remembered for the process's life. Looking an object up is worth saving: SoftHSM2's file store reads
every object's file on each C_FindObjects, so a lookup costs time in proportion to the whole token.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import pkcs11
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.mechanisms import GCMParams
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from custody.domain.errors import AuthenticationError, CustodyError, IntegrityError, InvalidInput, NotFound
from custody.keys.custodian import DEK_BYTES, PURPOSES, Binding, KekVersion, KeyInfo, Purpose, WrappedKey, aad_of
from custody.keys.files import write_private

DEFAULT_LIBRARY = "/usr/lib/softhsm/libsofthsm2.so"
SECRETS = "keys/pkcs11-secrets.sealed"
EPOCHS = "keys/pkcs11.epochs"
LOCK = "keys/pkcs11.lock"
SECRETS_FORMAT = "custody-pkcs11-secrets"
MAX_FILE_BYTES = 1024 * 1024
NONCE = 12
TAG_BITS = 128
ED25519_PARAMS = bytes.fromhex("06032b6570")  # DER of OID 1.3.101.112, id-Ed25519 (PKCS#11 3.0 CKA_EC_PARAMS)

# Failures that mean "these bytes do not decrypt under this key" rather than "the token is unwell".
_UNDECRYPTABLE = (p11.GeneralError, p11.EncryptedDataInvalid, p11.EncryptedDataLenRange, p11.DataLenRange,
                  p11.DataInvalid, p11.FunctionFailed, p11.MechanismParamInvalid, p11.ArgumentsBad)
_STALE_HANDLE = (p11.ObjectHandleInvalid, p11.KeyHandleInvalid)
_SESSION_GONE = (p11.SessionHandleInvalid, p11.SessionClosed, p11.UserNotLoggedIn)
_MISSING = object()


# -- the library and the login, once per process ------------------------------------------------

_GUARD = threading.RLock()  # one PKCS#11 call at a time (python-pkcs11 initialises without locking)
_LIBS: dict[str, Any] = {}  # path -> pkcs11.lib: a library loads and initialises once per process
_TAG_KEY = secrets.token_bytes(32)
_PID = os.getpid()


@dataclass
class _Token:
    """This process's login to one token: the session every custodian object uses, and what it found."""

    token: Any
    session: Any
    pin_tag: bytes
    objects: dict[tuple[int, str], Any] = field(default_factory=dict)  # (class, label) -> object
    active: dict[str, tuple[int, object]] = field(default_factory=dict)  # zone's label -> (newest, epochs stamp)
    pems: dict[str, bytes] = field(default_factory=dict)


_TOKENS: dict[tuple[str, str], _Token] = {}  # (library path, token label) -> login


def _after_fork() -> None:
    """A child of fork inherits a library it may not use: initialise it again, forget the logins."""
    global _PID
    if os.getpid() == _PID:
        return
    _PID = os.getpid()
    _TOKENS.clear()
    for lib in _LIBS.values():
        try:
            lib.reinitialize()
        except p11.PKCS11Error:
            pass


def _library(path: str):  # noqa: ANN202
    lib = _LIBS.get(path)
    if lib is None:
        if not Path(path).is_file():
            raise CustodyError(f"PKCS#11 library {path} does not exist")
        try:
            lib = pkcs11.lib(path)
        except (p11.PKCS11Error, OSError) as exc:
            raise CustodyError(f"PKCS#11 library {path} does not load: {_one_line(exc)}") from None
        _LIBS[path] = lib
    return lib


def _pin_tag(pin: str) -> bytes:
    """What tells a later PIN from the one this process logged in with (kept in memory only)."""
    return hmac.new(_TAG_KEY, pin.encode("utf-8"), hashlib.sha256).digest()


def _connect(path: str, label: str, pin: str) -> _Token:
    """The token, with this process logged in as its user (once; the login session stays open)."""
    with _GUARD:
        _after_fork()
        held = _TOKENS.get((path, label))
        if held is not None:
            if not hmac.compare_digest(held.pin_tag, _pin_tag(pin)):
                raise AuthenticationError(f"token {label}: CUSTODY_PKCS11_PIN is not the PIN this process "
                                          "logged in with")
            return held
        lib = _library(path)
        try:
            token = lib.get_token(token_label=label)
        except p11.NoSuchToken:
            raise CustodyError(f"no PKCS#11 token labelled {label!r} in {path}") from None
        except p11.MultipleTokensReturned:
            raise CustodyError(f"more than one PKCS#11 token is labelled {label!r} in {path}") from None
        except p11.PKCS11Error as exc:
            raise _failure(f"token {label}", exc) from None
        try:
            session = token.open(rw=True, user_pin=pin)
        except p11.UserAlreadyLoggedIn:  # another user of the library in this process logged in first
            try:
                session = token.open(rw=True)
            except p11.PKCS11Error as exc:
                raise _failure(f"token {label}", exc) from None
        except p11.PKCS11Error as exc:
            raise _failure(f"token {label}", exc) from None
        held = _TOKENS[(path, label)] = _Token(token, session, _pin_tag(pin))
        return held


def _disconnect(path: str, label: str, held: _Token) -> None:
    """Forget a login the token dropped (the next call logs in again)."""
    with _GUARD:
        if _TOKENS.get((path, label)) is held:
            del _TOKENS[(path, label)]
            try:
                held.session.close()
            except p11.PKCS11Error:
                pass


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text and text[0] else type(exc).__name__


def _failure(what: str, exc: Exception) -> CustodyError:
    """A library error as a custody error: one line, naming the PKCS#11 condition, never the PIN."""
    if isinstance(exc, (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange)):
        return AuthenticationError(f"{what}: the token refused CUSTODY_PKCS11_PIN")
    if isinstance(exc, p11.PinLocked):
        return AuthenticationError(f"{what}: the token's user PIN is locked")
    if isinstance(exc, p11.PinExpired):
        return AuthenticationError(f"{what}: the token's user PIN has expired")
    if isinstance(exc, (p11.UserNotLoggedIn, p11.UserPinNotInitialized)):
        return AuthenticationError(f"{what}: the token's user is not logged in")
    if isinstance(exc, (p11.TokenNotPresent, p11.DeviceRemoved, p11.TokenNotRecognised)):
        return CustodyError(f"{what}: the token is not present")
    if isinstance(exc, (p11.DeviceMemory, p11.HostMemory)):
        return CustodyError(f"{what}: the token is out of memory")
    if isinstance(exc, p11.TokenWriteProtected):
        return CustodyError(f"{what}: the token is write-protected")
    return CustodyError(f"{what}: the token answered {type(exc).__name__}")


def _pin() -> str:
    pin = os.environ.get("CUSTODY_PKCS11_PIN")
    if not pin:
        raise AuthenticationError("CUSTODY_PKCS11_PIN is not set: the token stays closed")
    return pin


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _created(obj) -> datetime:  # noqa: ANN001
    """An object's creation time, from its CKA_ID (objects custody did not make: the epoch)."""
    try:
        return datetime.fromisoformat(bytes(obj[Attribute.ID]).decode())
    except (p11.PKCS11Error, ValueError, UnicodeDecodeError):
        return datetime.fromtimestamp(0, timezone.utc)


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s.encode(), validate=True)


class Pkcs11Custodian:
    name = "pkcs11"

    def __init__(self, home: Path, library: str, token: str, prefix: str, pin: str) -> None:
        self.home = home
        self.library = library
        self.token_label = token
        self.prefix = prefix
        self._pin = pin
        self._secrets: dict[str, str] | None = None
        self._loaded: tuple[int, int, int] | None = None

    # -- the session ----------------------------------------------------------------------

    def _token(self) -> _Token:
        return _connect(self.library, self.token_label, self._pin)

    def _call(self, what: str, fn: Callable[[_Token], Any]) -> Any:
        """Run fn(token) as one PKCS#11 step; a login the token dropped is made again once."""
        for attempt in (1, 2):
            held = self._token()
            try:
                with _GUARD:
                    return fn(held)
            except _SESSION_GONE as exc:
                if attempt == 2:
                    raise _failure(what, exc) from None
                _disconnect(self.library, self.token_label, held)
            except p11.PKCS11Error as exc:
                raise _failure(what, exc) from None
        raise AssertionError("unreachable")

    def _with(self, cls: ObjectClass, label: str, fn: Callable[[Any], Any]) -> Any:
        """fn(object) on the object labelled `label`, or _MISSING when the token holds none. A handle the
        token stopped honouring (its object destroyed by another process) is looked up again once; other
        library errors reach the caller, which knows what they mean."""
        for attempt in (1, 2):
            obj = self._find(cls, label, fresh=attempt == 2)
            if obj is None:
                return _MISSING
            held = self._token()
            try:
                with _GUARD:
                    return fn(obj)
            except _STALE_HANDLE:
                held.objects.pop((cls, label), None)
            except _SESSION_GONE as exc:
                if attempt == 2:
                    raise _failure(f"using {label}", exc) from None
                _disconnect(self.library, self.token_label, held)
        return _MISSING

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive against other processes (and threads) changing this workspace's token objects."""
        lock = self.home / LOCK
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    # -- finding objects --------------------------------------------------------------------

    def _label(self, *parts: object) -> str:
        return "/".join([self.prefix, *map(str, parts)])

    def _find(self, cls: ObjectClass, label: str, fresh: bool = False):  # noqa: ANN202
        def find(t: _Token):  # noqa: ANN202
            if not fresh and (cls, label) in t.objects:
                return t.objects[(cls, label)]
            found = list(t.session.get_objects({Attribute.CLASS: cls, Attribute.LABEL: label}))
            if len(found) > 1:
                raise IntegrityError(f"the token holds {len(found)} objects labelled {label}")
            if not found:
                t.objects.pop((cls, label), None)
                return None
            t.objects[(cls, label)] = found[0]
            return found[0]

        return self._call(f"finding {label}", find)

    def _scan(self, cls: ObjectClass, under: str) -> list[tuple[str, Any]]:
        """(label, object) for every object of the class whose label starts with `under`."""
        def scan(t: _Token):  # noqa: ANN202
            out = []
            for obj in t.session.get_objects({Attribute.CLASS: cls}):
                label = obj.label or ""
                if label.startswith(under):
                    out.append((label, obj))
                    t.objects[(cls, label)] = obj
            return out

        return self._call("listing the token's keys", scan)

    def _zone_keks(self, zone: str) -> dict[int, Any]:
        under = self._label("kek", zone) + "/"
        return {int(label[len(under):]): obj for label, obj in self._scan(ObjectClass.SECRET_KEY, under)
                if label[len(under):].isdigit()}

    def _all_keks(self) -> dict[str, dict[int, Any]]:
        under = self._label("kek") + "/"
        out: dict[str, dict[int, Any]] = {}
        for label, obj in self._scan(ObjectClass.SECRET_KEY, under):
            zone, _, version = label[len(under):].rpartition("/")
            if zone and version.isdigit():
                out.setdefault(zone, {})[int(version)] = obj
        return out

    # -- KEK epochs ---------------------------------------------------------------------------

    def _new_aes(self, label: str):  # noqa: ANN202
        def make(t: _Token):  # noqa: ANN202
            key = t.session.generate_key(
                KeyType.AES, 256, label=label, id=_now().isoformat().encode(), store=True,
                capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                template={Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                          Attribute.EXTRACTABLE: False})
            t.objects[(ObjectClass.SECRET_KEY, label)] = key
            return key

        return self._call(f"generating {label}", make)

    def _hints(self) -> dict:
        """The epochs file: {zone: newest version}, a hint the token confirms."""
        try:
            hints = json.loads((self.home / EPOCHS).read_bytes()[:MAX_FILE_BYTES])
        except (OSError, ValueError):
            return {}
        return hints if isinstance(hints, dict) else {}

    def _note_newest(self, zone: str, version: int) -> None:
        """Record a zone's newest epoch (the caller holds the lock): other processes see the file change."""
        hints = self._hints()
        hints[zone] = version
        write_private(self.home / EPOCHS, json.dumps(hints, sort_keys=True).encode())
        stamp = _stamp_or_none(self.home / EPOCHS)
        self._call("noting an epoch", lambda t: t.active.__setitem__(self._label("kek", zone), (version, stamp)))

    def _active_version(self, zone: str) -> int:
        """The zone's newest epoch. Unchanged epochs file: the one this process knows. Else the hint is
        confirmed by the token (that epoch exists, the next does not), or the token is searched."""
        key = self._label("kek", zone)
        stamp = _stamp_or_none(self.home / EPOCHS)
        known = self._call("reading epochs", lambda t: t.active.get(key))
        if known is not None and stamp is not None and known[1] == stamp:
            return known[0]
        hint = self._hints().get(zone)
        starts = [v for v in (known[0] if known else None, hint) if isinstance(v, int) and v > 0]
        start = max(starts, default=None)
        if start is not None and self._find(ObjectClass.SECRET_KEY, self._label("kek", zone, start)) is not None:
            version = start
            while self._find(ObjectClass.SECRET_KEY, self._label("kek", zone, version + 1)) is not None:
                version += 1
        else:
            versions = self._zone_keks(zone)
            if not versions:
                raise NotFound(f"custodian holds no key for zone {zone}")
            version = max(versions)
        self._call("noting an epoch", lambda t: t.active.__setitem__(key, (version, stamp)))
        return version

    def _forget_active(self, zone: str) -> None:
        self._call("forgetting an epoch", lambda t: t.active.pop(self._label("kek", zone), None))

    def ensure_zone(self, zone: str) -> None:
        try:
            self._active_version(zone)
            return
        except NotFound:
            pass
        with self._locked():
            versions = self._zone_keks(zone)
            if not versions:
                self._new_aes(self._label("kek", zone, 1))
            self._note_newest(zone, max(versions, default=1))

    def begin_rotation(self, zone: str) -> int:
        with self._locked():
            versions = self._zone_keks(zone)
            if not versions:
                raise NotFound(f"custodian holds no key for zone {zone}")
            new = max(versions) + 1
            self._new_aes(self._label("kek", zone, new))
            self._note_newest(zone, new)
        return new

    def retire(self, zone: str, version: int) -> str:
        label = self._label("kek", zone, version)
        with self._locked():
            versions = self._zone_keks(zone)
            if not versions:
                raise NotFound(f"custodian holds no key for zone {zone}")
            if version == max(versions):
                raise CustodyError(f"zone {zone}: the newest KEK version cannot be retired")
            key = versions.get(version)
            if key is None:
                return f"already destroyed (no object {label} in the token)"

            def destroy(t: _Token) -> None:
                key.destroy()
                t.objects.pop((ObjectClass.SECRET_KEY, label), None)

            self._call(f"destroying {label}", destroy)
        return f"destroyed in the token (C_DestroyObject on {label})"

    def kek_versions(self, zone: str) -> list[KekVersion]:
        versions = self._zone_keks(zone)
        if not versions:
            raise NotFound(f"custodian holds no key for zone {zone}")
        newest = max(versions)
        return [KekVersion(zone=zone, version=v, created_at=self._call("reading a KEK", lambda t, k=k: _created(k)),
                           state="active" if v == newest else "retired")
                for v, k in sorted(versions.items())]

    def keys(self) -> list[KeyInfo]:
        out = []
        for zone, versions in sorted(self._all_keks().items()):
            for v, k in sorted(versions.items()):
                out.append(KeyInfo("kek", zone, v, self._call("reading a KEK", lambda t, k=k: _created(k)),
                                   f"token:{self._label('kek', zone, v)}"))
        for purpose in PURPOSES:
            created = self._with(ObjectClass.PRIVATE_KEY, self._label(purpose), _created)
            if created is not _MISSING:
                out.append(KeyInfo(purpose, None, 1, created, f"token:{self._label(purpose)}"))
        return out

    # -- data keys ----------------------------------------------------------------------------

    def new_data_key(self, binding: Binding) -> tuple[bytes, WrappedKey]:
        dek = secrets.token_bytes(DEK_BYTES)
        return dek, self._wrap(binding.zone, binding.key_id, binding, dek)

    def _wrap(self, zone: str, key_id: str, binding: Binding | None, dek: bytes) -> WrappedKey:
        for _ in (1, 2):
            version = self._active_version(zone)
            aad = aad_of(binding, key_id, zone, version)
            nonce = secrets.token_bytes(NONCE)
            try:
                sealed = self._with(ObjectClass.SECRET_KEY, self._label("kek", zone, version), lambda k: k.encrypt(
                    dek, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, aad, TAG_BITS)))
            except p11.PKCS11Error as exc:
                raise _failure(f"wrapping data key {key_id}", exc) from None
            if sealed is not _MISSING:
                return WrappedKey(key_id=key_id, zone=zone, kek_version=version, blob=nonce + bytes(sealed),
                                  binding=binding)
            self._forget_active(zone)  # what this process knew is gone: ask the token afresh
        raise CustodyError(f"zone {zone}: its active KEK is missing from the token")

    def unwrap(self, wrapped: WrappedKey) -> bytes:
        aad = aad_of(wrapped.binding, wrapped.key_id, wrapped.zone, wrapped.kek_version)
        label = self._label("kek", wrapped.zone, wrapped.kek_version)
        blob = wrapped.blob
        try:
            dek = self._with(ObjectClass.SECRET_KEY, label, lambda k: k.decrypt(
                blob[NONCE:], mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(blob[:NONCE], aad, TAG_BITS)))
        except _UNDECRYPTABLE:
            dek = None
        except p11.PKCS11Error as exc:
            raise _failure(f"unwrapping data key {wrapped.key_id}", exc) from None
        if dek is _MISSING:
            raise IntegrityError(f"data key {wrapped.key_id}: KEK version {wrapped.kek_version} of zone "
                                 f"{wrapped.zone} was destroyed")
        if dek is None or len(blob) != NONCE + DEK_BYTES + TAG_BITS // 8 or len(dek) != DEK_BYTES:
            raise IntegrityError(f"data key {wrapped.key_id} does not unwrap: altered or misplaced")
        return bytes(dek)

    def rewrap(self, wrapped: WrappedKey) -> WrappedKey:
        return self._wrap(wrapped.zone, wrapped.key_id, wrapped.binding, self.unwrap(wrapped))

    # -- signing ----------------------------------------------------------------------------

    def _new_pair(self, purpose: Purpose) -> None:
        """Generate the purpose's key pair in the token (the caller holds the lock, or made the prefix)."""
        label = self._label(purpose)
        ident = _now().isoformat().encode()
        if purpose == "signing":
            key_type, params = KeyType.EC, encode_named_curve_parameters("secp256r1")
        else:
            key_type, params = KeyType.EC_EDWARDS, ED25519_PARAMS

        def make(t: _Token) -> None:
            domain = t.session.create_domain_parameters(key_type, {Attribute.EC_PARAMS: params}, local=True)
            public, private = domain.generate_keypair(
                store=True, label=label, id=ident, capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                public_template={Attribute.TOKEN: True},
                private_template={Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                                  Attribute.EXTRACTABLE: False})
            t.objects[(ObjectClass.PUBLIC_KEY, label)] = public
            t.objects[(ObjectClass.PRIVATE_KEY, label)] = private

        self._call(f"generating {label}", make)

    def _with_pair(self, purpose: Purpose, cls: ObjectClass, fn: Callable[[Any], Any]) -> Any:
        """fn on the purpose's private or public key, the pair generated on first use."""
        if purpose not in PURPOSES:
            raise InvalidInput(f"no key for purpose {purpose!r}")
        label = self._label(purpose)
        try:
            result = self._with(cls, label, fn)
            if result is _MISSING:
                with self._locked():
                    other = ObjectClass.PUBLIC_KEY if cls == ObjectClass.PRIVATE_KEY else ObjectClass.PRIVATE_KEY
                    if self._find(cls, label) is None:
                        if self._find(other, label) is not None:
                            raise IntegrityError(f"the token holds half of the key pair {label}")
                        self._new_pair(purpose)
                result = self._with(cls, label, fn)
        except p11.PKCS11Error as exc:
            raise _failure(f"using {label}", exc) from None
        if result is _MISSING:
            raise CustodyError(f"the token lost {label} as it was made")
        return result

    def sign(self, purpose: Purpose, message: bytes) -> bytes:
        if purpose == "signing":
            digest = hashlib.sha256(message).digest()
            raw = bytes(self._with_pair(purpose, ObjectClass.PRIVATE_KEY,
                                        lambda k: k.sign(digest, mechanism=Mechanism.ECDSA)))
            half = len(raw) // 2
            return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))
        return bytes(self._with_pair(purpose, ObjectClass.PRIVATE_KEY,
                                     lambda k: k.sign(message, mechanism=Mechanism.EDDSA)))

    def public_key_pem(self, purpose: Purpose) -> bytes:
        label = self._label(purpose)
        pem = self._call("reading a public key", lambda t: t.pems.get(label))
        if pem is None:
            if purpose == "signing":
                der = self._with_pair(purpose, ObjectClass.PUBLIC_KEY, encode_ec_public_key)
                key = serialization.load_der_public_key(der)
            else:
                point = bytes(self._with_pair(purpose, ObjectClass.PUBLIC_KEY, lambda k: k[Attribute.EC_POINT]))
                if len(point) == 34 and point[:2] == b"\x04\x20":  # a DER OCTET STRING around the 32 bytes
                    point = point[2:]
                key = Ed25519PublicKey.from_public_bytes(point)
            pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            self._call("reading a public key", lambda t: t.pems.__setitem__(label, pem))
        return pem

    # -- software secrets ---------------------------------------------------------------------

    def _aad(self) -> bytes:
        return json.dumps({"format": SECRETS_FORMAT, "version": 1, "seal": self._label("seal")},
                          sort_keys=True, separators=(",", ":")).encode()

    def _read_secrets(self) -> dict[str, str]:
        path = self.home / SECRETS
        try:
            self._loaded = _file_stamp(path)
            raw = path.read_bytes()
        except FileNotFoundError:
            self._loaded = None
            return {}
        if len(raw) > MAX_FILE_BYTES:
            raise IntegrityError(f"{SECRETS} is larger than any custody writes")
        try:
            envelope = json.loads(raw)
            if envelope.get("format") != SECRETS_FORMAT or envelope.get("version") != 1:
                raise ValueError("unknown format")
            nonce, ciphertext = _unb64(envelope["nonce"]), _unb64(envelope["ciphertext"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IntegrityError(f"{SECRETS} is malformed: {exc}") from None
        try:
            plain = self._with(ObjectClass.SECRET_KEY, self._label("seal"), lambda k: k.decrypt(
                ciphertext, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, self._aad(), TAG_BITS)))
        except _UNDECRYPTABLE:
            raise IntegrityError(f"{SECRETS} does not unseal: altered, or sealed by another token") from None
        except p11.PKCS11Error as exc:
            raise _failure(f"unsealing {SECRETS}", exc) from None
        if plain is _MISSING:
            raise IntegrityError(f"{SECRETS}: its sealing key {self._label('seal')} is not in the token")
        try:
            ring = json.loads(bytes(plain))
            if not isinstance(ring, dict) or not all(isinstance(v, str) for v in ring.values()):
                raise ValueError("not a table of secrets")
        except ValueError as exc:
            raise IntegrityError(f"{SECRETS} is malformed: {exc}") from None
        return ring

    def _write_secrets(self, ring: dict[str, str]) -> None:
        """Seal and write the secrets (the caller holds the lock); the sealing key is made on first use."""
        label = self._label("seal")
        if self._find(ObjectClass.SECRET_KEY, label) is None:
            self._new_aes(label)
        nonce = secrets.token_bytes(NONCE)
        plain = json.dumps(ring, sort_keys=True).encode()
        try:
            sealed = self._with(ObjectClass.SECRET_KEY, label, lambda k: k.encrypt(
                plain, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, self._aad(), TAG_BITS)))
        except p11.PKCS11Error as exc:
            raise _failure(f"sealing {SECRETS}", exc) from None
        if sealed is _MISSING:
            raise CustodyError(f"the token lost {label} as it was made")
        envelope = {"format": SECRETS_FORMAT, "version": 1, "nonce": _b64(nonce), "ciphertext": _b64(bytes(sealed))}
        write_private(self.home / SECRETS, json.dumps(envelope, indent=1).encode())
        self._loaded = _file_stamp(self.home / SECRETS)

    def secret(self, name: str) -> bytes:
        if self._secrets is None or _stamp_or_none(self.home / SECRETS) != self._loaded:
            self._secrets = self._read_secrets()  # another process may have added one
        if name not in self._secrets:
            with self._locked():
                ring = self._read_secrets()
                if name not in ring:
                    ring[name] = _b64(secrets.token_bytes(32))
                    self._write_secrets(ring)
                self._secrets = ring
        return _unb64(self._secrets[name])


def _file_stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size, st.st_ino


def _stamp_or_none(path: Path) -> tuple[int, int, int] | None:
    try:
        return _file_stamp(path)
    except FileNotFoundError:
        return None


# -- the backend entry points (keys/backends.py) ----------------------------------------------


def _settings(table: dict, workspace_id: str) -> tuple[str, str, str]:
    library = table.get("library") or os.environ.get("CUSTODY_PKCS11_LIBRARY") or DEFAULT_LIBRARY
    token = table.get("token") or os.environ.get("CUSTODY_PKCS11_TOKEN")
    prefix = table.get("label_prefix") or f"custody/{workspace_id}"
    if not token:
        raise InvalidInput("pkcs11: name the token (--pkcs11-token or CUSTODY_PKCS11_TOKEN)")
    if not all(isinstance(v, str) for v in (library, token, prefix)):
        raise CustodyError("[custodian] library, token and label_prefix must be strings")
    return library, token, prefix


def create_custodian(home: Path, workspace_id: str, options: dict) -> tuple[Pkcs11Custodian, dict]:
    """`options`: library (the PKCS#11 module), token (its label); the PIN is CUSTODY_PKCS11_PIN's.
    The signing, ledger and witness key pairs are generated now, under labels no workspace used (its id
    is new); the zones' KEKs come with `ensure_zone`, the sealing key with the first secret."""
    library, token, prefix = _settings({k: options.get(k) for k in ("library", "token")}, workspace_id)
    custodian = Pkcs11Custodian(home, library, token, prefix, _pin())
    with custodian._locked():
        for purpose in PURPOSES:
            custodian._new_pair(purpose)
    return custodian, {"library": library, "token": token, "label_prefix": prefix}


def open_custodian(home: Path, workspace_id: str, table: dict, passphrase) -> Pkcs11Custodian:  # noqa: ANN001
    """The passphrase is not asked for: the token's PIN (CUSTODY_PKCS11_PIN) opens it."""
    library, token, prefix = _settings(table, workspace_id)
    custodian = Pkcs11Custodian(home, library, token, prefix, _pin())
    custodian._token()  # a missing token or a wrong PIN shows here, where the workspace opens its custodian
    return custodian
