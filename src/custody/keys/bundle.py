"""Signature bundles over a manifest, in the format of OpenSSF model signing v1.0.

custody signs what it registered so that anyone can check a copy of a model with the
standard tool, without custody installed:

    model_signing verify key MODEL_DIR --signature BUNDLE --public_key KEY.pub.pem

A bundle is a Sigstore bundle (v0.3, JSON) holding a DSSE envelope whose payload is an
in-toto v1 statement with predicate type `https://model_signing/signature/v1.0`. The
statement lists every file (POSIX path relative to the model and its SHA-256); its single
subject is named after the model and its digest is the SHA-256 of the concatenated raw
file digests, in the order the files are listed. The envelope is signed with ECDSA over
the DSSE pre-authentication encoding (PAE) of the payload.

What `model_signing verify key` (1.1.1) does with such a bundle, and why this module
emits what it emits:

* It hashes every regular file under the model directory, hidden files included, and
  requires the set of (path, digest) pairs to equal the signed resources exactly: an extra
  file on disk fails verification, as does a missing or changed one. Empty directories do
  not count; any symbolic link fails unless `--allow_symlinks` is given.
* Files under the top-level `.git`, `.github`, `.gitattributes` and `.gitignore` are
  skipped on disk by default, as is the signature file when it lies inside the model
  directory; so are the signed `ignore_paths`. A manifest that lists such a file can
  never verify, so `statement_for` refuses it.
* A model that is one file (the tool is pointed at the file, not at a directory) is
  signed as a single resource named "." whose subject is the file's name.
* The subject name is informational: renaming the directory or file does not invalidate
  the signature. The resource order does not matter to the verifier as long as the
  subject digest was computed over the listed order; we list files in the tool's own
  order (by path components) so our statement equals the one it would produce.

Bundle serialisation is explicit (no generic object mapping): each field is written and
read by name, with type and size checks, so that a malformed or hostile bundle yields
one `IntegrityError` line rather than a stack trace or an unbounded allocation.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from custody.domain.errors import IntegrityError, InvalidInput
from custody.domain.strict_json import StrictJSONError, loads_object
from custody.domain.manifest import Manifest, check_relpath

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"

# Paths the verifier skips on disk by default (`--ignore-git-paths`). We record them as
# signed `ignore_paths`, as `model_signing sign` does, so that `--no-ignore-git-paths`
# still skips them: the manifest never covers them.
DEFAULT_IGNORE_PATHS: tuple[str, ...] = (".git", ".gitattributes", ".github", ".gitignore")

# Name model_signing gives the only resource of a single-file model.
SINGLE_FILE_RESOURCE = "."

MAX_BUNDLE_BYTES = 64 * 1024 * 1024

_HEX = frozenset("0123456789abcdef")

# ECDSA hash per curve, as model_signing pairs them (from the Sigstore algorithm registry).
_CURVE_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
    "secp521r1": hashes.SHA512,
}


# --------------------------------------------------------------------------- keys


def public_key_hint(public_key: ec.EllipticCurvePublicKey) -> str:
    """Hex SHA-256 of the key's SubjectPublicKeyInfo PEM.

    model_signing stores this unauthenticated hint in `verificationMaterial.publicKey`
    and refuses a bundle whose hint differs from the key it was given, so we must compute
    it over exactly the same bytes (the PEM text, not the DER).
    """
    pem = public_key.public_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    return hashlib.sha256(pem).hexdigest()


def _ecdsa_for(public_key: object) -> ec.ECDSA:
    """The ECDSA scheme for this key; the verifier derives the hash from the curve."""
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise InvalidInput("signing keys must be elliptic-curve keys (P-256, P-384 or P-521)")
    algorithm = _CURVE_HASHES.get(public_key.curve.name)
    if algorithm is None:
        raise InvalidInput(f"unsupported curve {public_key.curve.name}: use P-256, P-384 or P-521")
    return ec.ECDSA(algorithm())


def _pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: binds the payload type into what is signed."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(type_bytes), type_bytes, len(payload), payload)


# --------------------------------------------------------------------------- statement


def _resource_order(path: str) -> list[str]:
    """model_signing's order: by path components, so "a/b" sorts before "a.b"."""
    return path.split("/")


def _root_digest(hex_digests: Iterable[str]) -> str:
    """SHA-256 over the raw (not hex) file digests, in the order listed."""
    h = hashlib.sha256()
    for d in hex_digests:
        h.update(bytes.fromhex(d))
    return h.hexdigest()


def _check_subject_name(name: str) -> str:
    """A subject name is the last component of the model path: one safe path segment."""
    check_relpath(name)
    if "/" in name:
        raise InvalidInput(f"subject name {name!r} must be a single path component")
    return name


def _is_ignored(path: str, ignore_paths: Iterable[str]) -> bool:
    """Whether model_signing skips `path`: it equals an ignore path or lies below one."""
    return any(path == p or path.startswith(p + "/") for p in ignore_paths)


def statement_for(manifest: Manifest, subject_name: str, *, single_file: bool = False) -> dict:
    """The in-toto statement `model_signing verify key` checks for this manifest.

    `subject_name` is the name of the model directory (informational only). With
    `single_file=True` the model is one file that will be verified by pointing the tool
    at the file itself: the manifest must hold exactly that one entry, its path must be
    `subject_name`, and the resource is named "." as the tool expects.

    Raises InvalidInput for a manifest the tool could never verify (a file under the
    paths it ignores) or a subject name that is not a single path component.
    """
    _check_subject_name(subject_name)
    if single_file:
        if len(manifest.files) != 1 or manifest.files[0].path != subject_name:
            raise InvalidInput(
                "a single-file model needs exactly one entry, named like the subject"
            )
        pairs = [(SINGLE_FILE_RESOURCE, manifest.files[0].sha256)]
    else:
        for entry in manifest.files:
            if _is_ignored(entry.path, DEFAULT_IGNORE_PATHS):
                raise InvalidInput(
                    f"{entry.path}: model_signing skips git paths, so a signature over it "
                    "could never verify"
                )
        ordered = sorted(manifest.files, key=lambda e: _resource_order(e.path))
        pairs = [(e.path, e.sha256) for e in ordered]

    return {
        "_type": STATEMENT_TYPE,
        "subject": [
            {
                "name": subject_name,
                "digest": {"sha256": _root_digest(d for _, d in pairs)},
            }
        ],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {
                "method": "files",
                "hash_type": "sha256",
                "allow_symlinks": False,
                "ignore_paths": list(DEFAULT_IGNORE_PATHS),
            },
            "resources": [
                {"name": name, "algorithm": "sha256", "digest": digest} for name, digest in pairs
            ],
        },
    }


class Signer(Protocol):
    """A key that signs without showing itself (a custodian, an HSM): the shape of an EC private key."""

    def public_key(self) -> ec.EllipticCurvePublicKey: ...

    def sign(self, data: bytes, signature_algorithm: ec.ECDSA) -> bytes: ...


def sign_manifest(
    manifest: Manifest,
    subject_name: str,
    private_key: "ec.EllipticCurvePrivateKey | Signer",
    *,
    single_file: bool = False,
) -> bytes:
    """The bundle (JSON bytes) signing `statement_for(manifest, subject_name)`.

    Everything but the ECDSA signature is a function of the inputs: the payload is the
    statement as indented JSON with ASCII escapes (the layout model_signing writes) and
    the bundle is compact JSON with a fixed key order, so two signings of one manifest
    differ only in `sig`.
    """
    public_key = private_key.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise InvalidInput("signing keys must be elliptic-curve keys (P-256, P-384 or P-521)")
    scheme = _ecdsa_for(public_key)
    statement = statement_for(manifest, subject_name, single_file=single_file)
    payload = json.dumps(statement, indent=2, ensure_ascii=True).encode("ascii")
    signature = private_key.sign(_pae(PAYLOAD_TYPE, payload), scheme)
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {
            "publicKey": {"hint": public_key_hint(public_key)},
            "tlogEntries": [],
        },
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode("ascii"),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode("ascii"), "keyid": ""}],
        },
    }
    return json.dumps(bundle, separators=(",", ":"), ensure_ascii=True).encode("ascii")


# --------------------------------------------------------------------------- verified result


@dataclass(frozen=True, slots=True)
class SignedResource:
    """One signed file: its path relative to the model and its SHA-256 (lowercase hex)."""

    path: str
    sha256: str


@dataclass(frozen=True, slots=True)
class SignedResources:
    """What a verified bundle vouches for.

    The statement carries no file sizes, so this is not a `Manifest`: inventing sizes
    would let a caller mistake them for signed data. Compare it with the manifest
    custody holds via `check_against`.

    `resources` is sorted like a Manifest (by UTF-8 bytes of the path). For a single-file
    model (`single_file`), the one resource, signed under the name ".", is reported under
    the subject name, the file's name.
    """

    subject_name: str
    subject_sha256: str
    single_file: bool
    resources: tuple[SignedResource, ...]
    ignore_paths: tuple[str, ...]

    def pairs(self) -> frozenset[tuple[str, str]]:
        return frozenset((r.path, r.sha256) for r in self.resources)

    def matches(self, manifest: Manifest) -> bool:
        """Whether the manifest lists exactly the signed (path, sha256) pairs."""
        return self.pairs() == frozenset((f.path, f.sha256) for f in manifest.files)

    def check_against(self, manifest: Manifest) -> None:
        """Raise IntegrityError, naming the first difference, unless `matches(manifest)`."""
        signed = {r.path: r.sha256 for r in self.resources}
        held = {f.path: f.sha256 for f in manifest.files}
        extra = sorted(held.keys() - signed.keys(), key=lambda p: p.encode("utf-8"))
        missing = sorted(signed.keys() - held.keys(), key=lambda p: p.encode("utf-8"))
        changed = sorted(
            (p for p in held.keys() & signed.keys() if held[p] != signed[p]),
            key=lambda p: p.encode("utf-8"),
        )
        if changed:
            raise IntegrityError(
                f"signature mismatch: {changed[0]} has another sha256 ({len(changed)} files differ)"
            )
        if missing:
            raise IntegrityError(
                f"signature mismatch: {missing[0]} is signed but not in the manifest "
                f"({len(missing)} files)"
            )
        if extra:
            raise IntegrityError(
                f"signature mismatch: {extra[0]} is in the manifest but not signed "
                f"({len(extra)} files)"
            )


# --------------------------------------------------------------------------- parsing helpers


def _refuse(why: str) -> IntegrityError:
    return IntegrityError(f"bad signature bundle: {why}")


def _parse_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        return loads_object(data)
    except StrictJSONError as exc:
        raise _refuse(f"{what}: {exc}") from None


def _field(obj: dict[str, Any], key: str, kind: type, where: str) -> Any:
    """obj[key], required to exist with JSON type `kind` (bool is not an int here)."""
    if key not in obj:
        raise _refuse(f"{where}.{key} is missing")
    value = obj[key]
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise _refuse(f"{where}.{key} must be a {kind.__name__}")
    return value


def _b64(value: str, where: str) -> bytes:
    """Standard base64 with padding, as protobuf JSON writes bytes; anything else is refused."""
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise _refuse(f"{where} is not valid base64") from None


def _hex64(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or not set(value) <= _HEX:
        raise _refuse(f"{where} must be 64 lowercase hex digits")
    return value


# --------------------------------------------------------------------------- verification


def verify_bundle(bundle: bytes, public_key: ec.EllipticCurvePublicKey) -> SignedResources:
    """Check a bundle's signature and statement; return the signed files.

    Accepts the bundles `sign_manifest` and `model_signing sign key` write. Checks, in
    order: size and JSON shape, media type, key hint (when present), payload type, the
    ECDSA signature over the PAE of the payload, statement and predicate types, the
    `files`/`sha256` serialisation, every resource, and that the subject digest equals
    the digest recomputed from the resources in their listed order. Resources may be
    listed in any order (as model_signing allows) but not twice.

    Not accepted: bundles from model_signing before 1.0 (a different predicate type and
    a PAE bug it still tolerates), shard serialisation, certificate-signed bundles, and
    envelopes with more than one signature.

    Raises IntegrityError (one line) if anything does not verify or is malformed, and
    InvalidInput if `public_key` is not a supported key.
    """
    scheme = _ecdsa_for(public_key)
    if not isinstance(bundle, (bytes, bytearray, memoryview)):
        raise _refuse("expected bytes")
    if len(bundle) > MAX_BUNDLE_BYTES:
        raise _refuse(f"larger than {MAX_BUNDLE_BYTES} bytes")
    doc = _parse_json(bytes(bundle), "bundle")

    media_type = _field(doc, "mediaType", str, "bundle")
    if media_type != BUNDLE_MEDIA_TYPE:
        raise _refuse(f"media type {media_type[:80]!r}, expected {BUNDLE_MEDIA_TYPE}")

    material = _field(doc, "verificationMaterial", dict, "bundle")
    if "publicKey" not in material:
        raise _refuse("not signed with a key (verificationMaterial.publicKey is missing)")
    key_id = _field(material, "publicKey", dict, "verificationMaterial")
    hint = key_id.get("hint")
    if hint is not None and not isinstance(hint, str):
        raise _refuse("verificationMaterial.publicKey.hint must be a string")
    if hint and hint != public_key_hint(public_key):
        raise IntegrityError("signature bundle was made with a different key")
    if "tlogEntries" in material:
        _field(material, "tlogEntries", list, "verificationMaterial")

    envelope = _field(doc, "dsseEnvelope", dict, "bundle")
    payload_type = _field(envelope, "payloadType", str, "dsseEnvelope")
    if payload_type != PAYLOAD_TYPE:
        raise _refuse(f"payload type {payload_type[:80]!r}, expected {PAYLOAD_TYPE}")
    payload = _b64(_field(envelope, "payload", str, "dsseEnvelope"), "dsseEnvelope.payload")
    signatures = _field(envelope, "signatures", list, "dsseEnvelope")
    if len(signatures) != 1 or not isinstance(signatures[0], dict):
        raise _refuse("dsseEnvelope must hold exactly one signature")
    sig = _b64(_field(signatures[0], "sig", str, "signature"), "signature.sig")

    try:
        public_key.verify(sig, _pae(payload_type, payload), scheme)
    except (InvalidSignature, ValueError):
        raise IntegrityError("signature bundle does not verify with this key") from None

    # From here the payload is authentic; its checks catch a signer's inconsistency.
    return _parse_statement(_parse_json(payload, "payload"))


def _parse_statement(statement: dict[str, Any]) -> SignedResources:
    """Read a signed model_signing v1.0 statement into SignedResources."""
    statement_type = _field(statement, "_type", str, "statement")
    if statement_type != STATEMENT_TYPE:
        raise _refuse(f"statement type {statement_type[:80]!r}, expected {STATEMENT_TYPE}")
    predicate_type = _field(statement, "predicateType", str, "statement")
    if predicate_type != PREDICATE_TYPE:
        raise _refuse(f"predicate type {predicate_type[:80]!r}, expected {PREDICATE_TYPE}")

    subjects = _field(statement, "subject", list, "statement")
    if len(subjects) != 1 or not isinstance(subjects[0], dict):
        raise _refuse("statement must have exactly one subject")
    subject_name = _field(subjects[0], "name", str, "subject")
    subject_digests = _field(subjects[0], "digest", dict, "subject")
    subject_digest = _hex64(subject_digests.get("sha256"), "subject.digest.sha256")
    try:
        _check_subject_name(subject_name)
    except InvalidInput as e:
        raise _refuse(e.message) from None

    predicate = _field(statement, "predicate", dict, "statement")
    ser = _field(predicate, "serialization", dict, "predicate")
    if _field(ser, "method", str, "serialization") != "files":
        raise _refuse("only the 'files' serialization is supported")
    if _field(ser, "hash_type", str, "serialization") != "sha256":
        raise _refuse("only sha256 file digests are supported")
    _field(ser, "allow_symlinks", bool, "serialization")
    ignore_paths: tuple[str, ...] = ()
    if "ignore_paths" in ser:
        raw_ignore = _field(ser, "ignore_paths", list, "serialization")
        if not all(isinstance(p, str) for p in raw_ignore):
            raise _refuse("serialization.ignore_paths must be a list of strings")
        ignore_paths = tuple(raw_ignore)

    listed: list[tuple[str, str]] = []
    for i, item in enumerate(_field(predicate, "resources", list, "predicate")):
        if not isinstance(item, dict):
            raise _refuse(f"resources[{i}] must be an object")
        name = _field(item, "name", str, f"resources[{i}]")
        if _field(item, "algorithm", str, f"resources[{i}]") != "sha256":
            raise _refuse(f"resources[{i}] is not a sha256 digest")
        listed.append((name, _hex64(item.get("digest"), f"resources[{i}].digest")))

    if _root_digest(d for _, d in listed) != subject_digest:
        raise _refuse("subject digest does not match the listed resources")

    single_file = len(listed) == 1 and listed[0][0] == SINGLE_FILE_RESOURCE
    if single_file:
        # The one file of a single-file model is known by the subject's (file) name.
        listed = [(subject_name, listed[0][1])]
    seen: set[str] = set()
    for name, _ in listed:
        try:
            check_relpath(name)
        except InvalidInput as e:
            raise _refuse(e.message) from None
        if name in seen:
            raise _refuse(f"resource {name!r} is listed twice")
        seen.add(name)

    resources = tuple(
        SignedResource(path=name, sha256=digest)
        for name, digest in sorted(listed, key=lambda pair: pair[0].encode("utf-8"))
    )
    return SignedResources(
        subject_name=subject_name,
        subject_sha256=subject_digest,
        single_file=single_file,
        resources=resources,
        ignore_paths=ignore_paths,
    )


__all__ = [
    "BUNDLE_MEDIA_TYPE",
    "DEFAULT_IGNORE_PATHS",
    "MAX_BUNDLE_BYTES",
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "SignedResource",
    "SignedResources",
    "public_key_hint",
    "sign_manifest",
    "statement_for",
    "verify_bundle",
]
