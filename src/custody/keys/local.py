"""The local custodian: a keyring file sealed by a master key derived from a passphrase, or held
as M-of-N Shamir shares (SLIP-39, `shamir-mnemonic`) by separate people.

The keyring holds each zone's KEK versions, the manifest-signing key (ECDSA P-256) and the
ledger key (Ed25519). On disk it is one AES-256-GCM ciphertext under a key derived with scrypt;
the KDF parameters are bound as associated data, so a wrong passphrase or any edit fails to
unseal and nothing is written. Changes are written to a temporary file and renamed into place
under an exclusive lock, so a crash leaves either the old or the new keyring.

With shares, the master key is 32 random bytes that exist only in the memory of a process that
was given enough shares (`custody unseal`, which a server accumulates one holder at a time, like
Vault's unseal). No single person, and no file, opens the keyring.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import secrets
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from custody.domain.errors import AuthenticationError, CustodyError, IntegrityError, InvalidInput, InvalidState, NotFound
from custody.keys.custodian import DEK_BYTES, Binding, KekVersion, KeyInfo, Purpose, WrappedKey, aad_of
from custody.keys.files import write_private

FORMAT = "custody-keyring"
SHAMIR = "shamir-slip39"
DEFAULT_LOG_N = 17  # scrypt N = 2^17, r = 8, p = 1: the OWASP floor for interactive use
MIN_LOG_N = 14
MAX_KEYRING_BYTES = 16 * 1024 * 1024


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s.encode(), validate=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _master_key(passphrase: str, kdf: dict) -> bytes:
    return Scrypt(salt=_unb64(kdf["salt"]), length=32, n=2 ** kdf["log_n"], r=kdf["r"], p=kdf["p"]).derive(
        passphrase.encode("utf-8")
    )


def _aad(envelope: dict) -> bytes:
    bound = {"format": envelope["format"], "version": envelope["version"], "kdf": envelope["kdf"]}
    return json.dumps(bound, sort_keys=True, separators=(",", ":")).encode()


class LocalCustodian:
    name = "local"

    def __init__(self, path: Path, passphrase: str | None = None, master: bytes | None = None) -> None:
        self.path = path
        self._passphrase = passphrase
        self._master: bytes | None = master  # derived once: scrypt is deliberately slow
        self._envelope, self._ring = self._unseal()

    # -- creation and sealing ------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, passphrase: str, log_n: int = DEFAULT_LOG_N) -> "LocalCustodian":
        if not passphrase:
            raise AuthenticationError("an empty passphrase cannot seal a keyring")
        if log_n < MIN_LOG_N:
            raise CustodyError(f"scrypt cost 2^{log_n} is below the floor 2^{MIN_LOG_N}")
        kdf = {"name": "scrypt", "salt": _b64(secrets.token_bytes(16)), "log_n": log_n, "r": 8, "p": 1}
        _create(path, kdf, _master_key(passphrase, kdf))
        return cls(path, passphrase)

    @classmethod
    def create_shared(cls, path: Path, shares: int, threshold: int) -> tuple["LocalCustodian", list[str]]:
        """A keyring whose master key is split into `shares` SLIP-39 mnemonics, any `threshold` of
        which unseal it; the mnemonics are returned once and stored nowhere."""
        import shamir_mnemonic

        if not 1 <= threshold <= shares <= 16 or (threshold == 1 and shares > 1):
            raise CustodyError("shares: need 1 <= threshold <= shares <= 16 (and a threshold of 1 only for 1 share)")
        master = secrets.token_bytes(32)
        mnemonics = shamir_mnemonic.generate_mnemonics(1, [(threshold, shares)], master, b"", iteration_exponent=1)[0]
        identifier = shamir_mnemonic.share.Share.from_mnemonic(mnemonics[0]).identifier  # public: names the split
        # a commitment per share (its SHA-256; a share holds far too much entropy to be guessed from it), so a
        # forged share is refused as it arrives and cannot spoil an unseal round
        commitments = {str(shamir_mnemonic.share.Share.from_mnemonic(m).index): _commitment(m) for m in mnemonics}
        kdf = {"name": SHAMIR, "threshold": threshold, "shares": shares, "identifier": identifier,
               "commitments": commitments}
        _create(path, kdf, master)
        return cls(path, master=master), mnemonics

    @staticmethod
    def kdf_of(path: Path) -> dict:
        """The keyring's key derivation (readable without any secret)."""
        try:
            return json.loads(path.read_bytes())["kdf"]
        except FileNotFoundError:
            raise NotFound(f"no keyring at {path}") from None
        except (ValueError, KeyError, TypeError):
            raise IntegrityError("keyring file is malformed") from None

    def _unseal(self) -> tuple[dict, dict]:
        try:
            self._loaded = _file_stamp(self.path)  # what was read, to notice another process's change
            raw = self.path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no keyring at {self.path}") from None
        if len(raw) > MAX_KEYRING_BYTES:
            raise IntegrityError("keyring file is larger than any keyring custody writes")
        try:
            envelope = json.loads(raw)
            if envelope.get("format") != FORMAT or envelope.get("version") != 1:
                raise ValueError("unknown keyring format")
            kdf = envelope["kdf"]
            if kdf.get("name") == SHAMIR:
                if not isinstance(kdf.get("threshold"), int) or not isinstance(kdf.get("shares"), int):
                    raise ValueError("unsupported key derivation")
            elif kdf.get("name") != "scrypt" or not MIN_LOG_N <= int(kdf["log_n"]) <= 22:
                raise ValueError("unsupported key derivation")
            nonce, ciphertext = _unb64(envelope["nonce"]), _unb64(envelope["ciphertext"])
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"keyring file is malformed: {exc}") from None
        if self._master is None:
            if kdf["name"] == SHAMIR:
                raise AuthenticationError(f"the keyring is sealed by {kdf['threshold']} of {kdf['shares']} Shamir shares: "
                                          "it opens in a server that was given them (`custody unseal --server URL`)")
            if not self._passphrase:
                raise AuthenticationError("CUSTODY_PASSPHRASE is not set: the keyring stays sealed")
            self._master = _master_key(self._passphrase, kdf)
        try:
            plain = AESGCM(self._master).decrypt(nonce, ciphertext, _aad(envelope))
        except InvalidTag:
            if kdf["name"] == SHAMIR:
                raise AuthenticationError("the shares do not unseal this keyring") from None
            raise AuthenticationError("wrong passphrase: the keyring did not unseal") from None
        return envelope, json.loads(plain)

    @contextmanager
    def _changing(self) -> Iterator[dict]:
        """Re-read under an exclusive lock, let the caller change the ring, write it back atomically."""
        lock = self.path.with_suffix(".lock")
        with open(os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a") as fh:  # private, any umask
            fcntl.flock(fh, fcntl.LOCK_EX)
            self._envelope, self._ring = self._unseal()
            yield self._ring
            assert self._master is not None
            _write_sealed(self.path, self._envelope, self._ring, self._master)

    # -- KEKs and data keys --------------------------------------------------------------

    def _versions(self, zone: str) -> list[dict]:
        try:
            return self._ring["keks"][zone]
        except KeyError:
            raise NotFound(f"custodian holds no key for zone {zone}") from None

    def _active(self, zone: str) -> dict:
        self._refresh()  # another process may have rotated since this one read the keyring
        return next(v for v in reversed(self._versions(zone)) if v["state"] == "active")

    def _refresh(self) -> None:
        if _file_stamp(self.path) != self._loaded:
            self._envelope, self._ring = self._unseal()

    def ensure_zone(self, zone: str) -> None:
        if zone in self._ring["keks"]:
            return
        with self._changing() as ring:
            ring["keks"].setdefault(zone, [_new_kek(1)])

    def new_data_key(self, binding: Binding) -> tuple[bytes, WrappedKey]:
        dek = secrets.token_bytes(DEK_BYTES)
        return dek, self._wrap(binding.zone, binding.key_id, binding, dek)

    def _wrap(self, zone: str, key_id: str, binding: Binding | None, dek: bytes) -> WrappedKey:
        kek = self._active(zone)
        nonce = secrets.token_bytes(12)
        blob = nonce + AESGCM(_unb64(kek["key"])).encrypt(nonce, dek, aad_of(binding, key_id, zone, kek["version"]))
        return WrappedKey(key_id=key_id, zone=zone, kek_version=kek["version"], blob=blob, binding=binding)

    def _kek(self, zone: str, version: int) -> dict | None:
        found = next((v for v in self._versions(zone) if v["version"] == version), None)
        if found is None and version > max(v["version"] for v in self._versions(zone)):
            self._refresh()  # another process moved the zone to a new epoch since this one read the keyring
            found = next((v for v in self._versions(zone) if v["version"] == version), None)
        return found

    def unwrap(self, wrapped: WrappedKey) -> bytes:
        kek = self._kek(wrapped.zone, wrapped.kek_version)
        if kek is None:
            raise IntegrityError(
                f"data key {wrapped.key_id}: KEK version {wrapped.kek_version} of zone {wrapped.zone} was destroyed"
            )
        try:
            return AESGCM(_unb64(kek["key"])).decrypt(
                wrapped.blob[:12], wrapped.blob[12:],
                aad_of(wrapped.binding, wrapped.key_id, wrapped.zone, wrapped.kek_version))
        except (InvalidTag, ValueError):
            raise IntegrityError(f"data key {wrapped.key_id} does not unwrap: altered or misplaced") from None

    def rewrap(self, wrapped: WrappedKey) -> WrappedKey:
        return self._wrap(wrapped.zone, wrapped.key_id, wrapped.binding, self.unwrap(wrapped))

    def begin_rotation(self, zone: str) -> int:
        with self._changing() as ring:
            versions = ring["keks"].get(zone)
            if not versions:
                raise NotFound(f"custodian holds no key for zone {zone}")
            new = _new_kek(max(v["version"] for v in versions) + 1)
            versions.append(new)
            return new["version"]

    def retire(self, zone: str, version: int) -> str:
        with self._changing() as ring:
            versions = ring["keks"].get(zone, [])
            if version == max(v["version"] for v in versions):
                raise CustodyError(f"zone {zone}: the newest KEK version cannot be retired")
            ring["keks"][zone] = [v for v in versions if v["version"] != version]
        return "destroyed (removed from the keyring, which was rewritten)"

    def keys(self) -> list[KeyInfo]:
        self._refresh()
        out = [KeyInfo("kek", zone, v["version"], datetime.fromisoformat(v["created_at"]), "keyring")
               for zone in sorted(self._ring["keks"]) for v in self._ring["keks"][zone]]
        created = self._ring.get("created_at") or min((i.created_at.isoformat() for i in out), default=_now())
        for purpose in ("signing", "ledger", "witness"):
            if purpose in self._ring or purpose != "witness":
                out.append(KeyInfo(purpose, None, 1, datetime.fromisoformat(self._ring.get(f"{purpose}_created_at", created)),
                                   "keyring"))
        return out

    def kek_versions(self, zone: str) -> list[KekVersion]:
        versions = self._versions(zone)
        newest = max(v["version"] for v in versions)
        return [
            KekVersion(
                zone=zone,
                version=v["version"],
                created_at=datetime.fromisoformat(v["created_at"]),
                state="active" if v["version"] == newest else "retired",
            )
            for v in versions
        ]

    # -- software secrets ------------------------------------------------------------------

    def _ensure(self, name: str, make) -> bytes:  # noqa: ANN001
        """A key created on first use (workspaces made before it existed get it then)."""
        if name not in self._ring:
            with self._changing() as ring:
                ring.setdefault(name, _b64(make()))
        return _unb64(self._ring[name])

    def secret(self, name: str) -> bytes:
        return self._ensure(name, lambda: secrets.token_bytes(32))

    # -- signing -------------------------------------------------------------------------

    def _signing_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self._ring["signing"].encode(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key

    def _ed25519(self, purpose: Purpose) -> ed25519.Ed25519PrivateKey:
        """The ledger key, or the witness key (made on first use: it co-signs checkpoints)."""
        raw = self._ensure(purpose, lambda: ed25519.Ed25519PrivateKey.generate().private_bytes_raw())
        return ed25519.Ed25519PrivateKey.from_private_bytes(raw)

    def sign(self, purpose: Purpose, message: bytes) -> bytes:
        if purpose == "signing":
            return self._signing_key().sign(message, ec.ECDSA(hashes.SHA256()))
        return self._ed25519(purpose).sign(message)

    def public_key_pem(self, purpose: Purpose) -> bytes:
        key = self._signing_key() if purpose == "signing" else self._ed25519(purpose)
        return key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _commitment(mnemonic: str) -> str:
    import hashlib

    return hashlib.sha256(" ".join(mnemonic.split()).encode()).hexdigest()


def _create(path: Path, kdf: dict, master: bytes) -> None:
    signing = ec.generate_private_key(ec.SECP256R1())
    ledger = ed25519.Ed25519PrivateKey.generate()
    ring = {
        "keks": {},
        "signing": signing.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
        "ledger": _b64(ledger.private_bytes_raw()),
        "created_at": _now(),
    }
    envelope = {"format": FORMAT, "version": 1, "kdf": kdf}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        raise CustodyError(f"a keyring already exists at {path}")
    _write_sealed(path, envelope, ring, master)


def _file_stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


def _new_kek(version: int) -> dict:
    return {"version": version, "key": _b64(AESGCM.generate_key(256)), "created_at": _now(), "state": "active"}


def _write_sealed(path: Path, envelope: dict, ring: dict, master: bytes) -> None:
    nonce = secrets.token_bytes(12)
    plain = json.dumps(ring, sort_keys=True).encode()
    sealed = dict(envelope)
    sealed["nonce"] = _b64(nonce)
    sealed["ciphertext"] = _b64(AESGCM(master).encrypt(nonce, plain, _aad(envelope)))
    write_private(path, json.dumps(sealed, indent=1).encode())


# -- the backend entry points (keys/backends.py) ----------------------------------------------

KEYRING = "keys/keyring.sealed"

# Master keys of share-sealed keyrings that this process was given shares for (by keyring path).
_UNSEALED: dict[str, bytes] = {}


def create_custodian(home: Path, workspace_id: str, options: dict) -> tuple[LocalCustodian, dict]:
    """`options`: passphrase and log_n (scrypt cost), or shares and threshold (Shamir)."""
    if options.get("shares"):
        shares = int(options["shares"])
        custodian, mnemonics = LocalCustodian.create_shared(home / KEYRING, shares,
                                                            int(options.get("threshold") or shares // 2 + 1))
        return custodian, {"_shares": mnemonics}
    if options.get("threshold"):
        raise CustodyError("--threshold goes with --shares")
    custodian = LocalCustodian.create(home / KEYRING, str(options["passphrase"]),
                                      log_n=int(options.get("log_n", DEFAULT_LOG_N)))
    return custodian, {}


def open_custodian(home: Path, workspace_id: str, table: dict, passphrase) -> LocalCustodian:  # noqa: ANN001
    path = home / KEYRING
    if LocalCustodian.kdf_of(path).get("name") == SHAMIR:
        return LocalCustodian(path, master=_UNSEALED.get(str(path.resolve())))
    return LocalCustodian(path, passphrase())


class Unsealer:
    """Shares of a share-sealed keyring, given one at a time by their holders, until enough are in.

    Shares are checked as they arrive (SLIP-39 checksum, same split, no duplicate) and kept only
    in this process's memory; once the threshold is met they are combined, the keyring is opened
    to prove the result, and the master key is kept for the process's custodians."""

    def __init__(self, home: Path) -> None:
        self.path = home / KEYRING
        self._shares: dict[int, str] = {}
        self._identifier: int | None = None

    def status(self) -> dict:
        kdf = LocalCustodian.kdf_of(self.path)
        if kdf.get("name") != SHAMIR:
            return {"sealed_by": kdf.get("name"), "sealed": False}
        return {"sealed_by": SHAMIR, "sealed": str(self.path.resolve()) not in _UNSEALED,
                "threshold": kdf["threshold"], "shares": kdf["shares"], "given": len(self._shares)}

    def give(self, mnemonic: str) -> dict:
        import shamir_mnemonic

        state = self.status()
        if state["sealed_by"] != SHAMIR:
            raise InvalidState("this keyring is sealed by a passphrase, not by shares")
        if not state["sealed"]:
            return state
        try:
            share = shamir_mnemonic.share.Share.from_mnemonic(" ".join(mnemonic.split()))
        except shamir_mnemonic.MnemonicError:
            raise InvalidInput("not a valid share: a wrong word, a wrong length or a failed checksum") from None
        expected = LocalCustodian.kdf_of(self.path).get("identifier", self._identifier)
        if expected not in (None, share.identifier):
            raise InvalidInput("this share is not one of this keyring's shares")
        words = " ".join(mnemonic.split())
        commitments = LocalCustodian.kdf_of(self.path).get("commitments")
        if commitments is not None and commitments.get(str(share.index)) != _commitment(words):
            raise InvalidInput("this share is not one of this keyring's shares")
        if self._shares.get(share.index, words) != words:
            raise InvalidInput("a different share with this index was already given: shares are never replaced")
        self._identifier = share.identifier
        self._shares[share.index] = words
        if len(self._shares) >= state["threshold"]:
            given, self._shares, self._identifier = list(self._shares.values()), {}, None
            try:
                master = shamir_mnemonic.combine_mnemonics(given, b"")
            except shamir_mnemonic.MnemonicError as exc:
                raise InvalidInput(f"the shares do not combine: {exc}") from None
            LocalCustodian(self.path, master=master)  # raises if they do not open this keyring
            _UNSEALED[str(self.path.resolve())] = master
        return self.status()

    def seal(self) -> None:
        """Forget the master key (the process's custodians stay open until they are dropped)."""
        _UNSEALED.pop(str(self.path.resolve()), None)
        self._shares, self._identifier = {}, None
