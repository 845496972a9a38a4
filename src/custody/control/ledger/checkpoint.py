"""Signed ledger checkpoints as C2SP signed notes (c2sp.org/signed-note, c2sp.org/tlog-checkpoint).

A checkpoint states "the ledger had ``size`` entries and this Merkle root"; signing it in the
common note format lets anyone holding the ledger's verifier key (``vkey``) check it with
ordinary transparency-log tooling, and lets witnesses add cosignatures without any change here.

Wire format::

    <origin>\\n<size>\\n<base64 root>\\n
    \\n
    — <key name> <base64(4-byte key hash || Ed25519 signature)>\\n

Parsing is strict and bounded because notes arrive from outside: anything that is not exactly
the format (size limit, UTF-8, control characters, non-canonical numbers or base64, a body
with extension lines) raises ``IntegrityError`` before any signature is looked at.

Pure functions; no I/O here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from custody.domain.errors import IntegrityError

__all__ = [
    "MAX_NOTE_BYTES",
    "MAX_SIGNATURES",
    "Checkpoint",
    "key_hash",
    "parse",
    "parse_vkey",
    "sign",
    "sign_text",
    "verify",
    "vkey",
]

MAX_NOTE_BYTES = 1 << 20
"""Largest note accepted; a checkpoint with a few dozen signatures is under 8 KiB."""

MAX_SIGNATURES = 100
"""The spec asks verifiers to accept at least 16 signatures and to bound the number."""

ALG_ED25519 = 0x01
ROOT_SIZE = 32
_SIG_PREFIX = "\u2014 "  # EM DASH, space
_SIZE_RE = re.compile(r"(?:0|[1-9][0-9]{0,19})")
_MAX_SIZE = (1 << 64) - 1


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: which log (``origin``), how many leaves, and their Merkle root."""

    origin: str
    size: int
    root: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str) or not self.origin or _has_control(self.origin):
            raise ValueError("checkpoint origin must be one non-empty line without control characters")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 0 <= self.size <= _MAX_SIZE:
            raise ValueError("checkpoint size must be an integer in [0, 2**64)")
        if not isinstance(self.root, bytes) or len(self.root) != ROOT_SIZE:
            raise ValueError(f"checkpoint root must be {ROOT_SIZE} bytes")

    def body(self) -> bytes:
        """The exact bytes that are signed: three lines, each ending in a newline."""
        return f"{self.origin}\n{self.size}\n{_b64(self.root)}\n".encode()


# --------------------------------------------------------------------------- keys


def _raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode_strict(text: str, what: str) -> bytes:
    """Standard padded base64 only, and only its canonical spelling, so one value has one note."""
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise IntegrityError(f"checkpoint {what} is not valid base64") from None
    if _b64(data) != text:
        raise IntegrityError(f"checkpoint {what} is not canonical base64")
    return data


def _has_control(text: str) -> bool:
    """ASCII control characters (below U+0020), which signed notes forbid except for newlines."""
    return any(ord(ch) < 0x20 for ch in text)


def _valid_name(name: str) -> bool:
    """Key names: non-empty, no Unicode spaces, no '+', no control characters (signed-note §Format)."""
    return (
        isinstance(name, str)
        and bool(name)
        and "+" not in name
        and not any(ch.isspace() for ch in name)
        and not _has_control(name)
    )


def _require_name(name: str) -> None:
    if not _valid_name(name):
        raise ValueError("key name must be non-empty, without spaces, '+' or control characters")


def key_hash(name: str, public_key: Ed25519PublicKey) -> bytes:
    """4-byte key ID: SHA-256(name || 0x0A || 0x01 || raw key)[:4].

    It only picks which signature line to check; the key itself is what authenticates.
    """
    _require_name(name)
    data = name.encode() + b"\n" + bytes([ALG_ED25519]) + _raw_public(public_key)
    return hashlib.sha256(data).digest()[:4]


def vkey(name: str, public_key: Ed25519PublicKey) -> str:
    """Verifier key string ``<name>+<hex key hash>+<base64(0x01 || raw key)>`` for publishing."""
    return f"{name}+{key_hash(name, public_key).hex()}+{_b64(bytes([ALG_ED25519]) + _raw_public(public_key))}"


def parse_vkey(text: str) -> tuple[str, Ed25519PublicKey]:
    """Read a verifier key string back, refusing it unless its key hash matches its key."""
    if not isinstance(text, str) or len(text) > 1024:
        raise IntegrityError("verifier key is malformed")
    parts = text.split("+", 2)
    if len(parts) != 3 or not _valid_name(parts[0]) or not re.fullmatch(r"[0-9a-f]{8}", parts[1]):
        raise IntegrityError("verifier key is malformed")
    name, hash_hex, key_b64 = parts
    raw = _b64decode_strict(key_b64, "verifier key")
    if len(raw) != 33 or raw[0] != ALG_ED25519:
        raise IntegrityError("verifier key is not an Ed25519 key")
    try:
        public_key = Ed25519PublicKey.from_public_bytes(raw[1:])
    except ValueError:
        raise IntegrityError("verifier key is not an Ed25519 key") from None
    if key_hash(name, public_key).hex() != hash_hex:
        raise IntegrityError("verifier key hash does not match its key")
    return name, public_key


# --------------------------------------------------------------------------- signing


def sign_text(text: str, name: str, private_key: Ed25519PrivateKey) -> str:
    """Sign any note text (non-empty, ending in a newline) and return the signed note.

    Checkpoints go through ``sign``; this lower layer exists so the exact note encoding can
    be checked against the published signed-note test vectors.
    """
    _require_name(name)
    if not text.endswith("\n") or _has_control(text.replace("\n", "")):
        raise ValueError("note text must end in a newline and contain no other control characters")
    data = text.encode()
    signature = private_key.sign(data)
    line = f"{_SIG_PREFIX}{name} {_b64(key_hash(name, private_key.public_key()) + signature)}\n"
    return f"{text}\n{line}"


def sign(cp: Checkpoint, name: str, private_key: Ed25519PrivateKey) -> str:
    """Signed note for ``cp`` with one Ed25519 signature line under key ``name``."""
    return sign_text(cp.body().decode(), name, private_key)


# --------------------------------------------------------------------------- parsing


def _split_note(note: str | bytes) -> tuple[str, list[tuple[str, bytes, bytes]]]:
    """Split a note into its text and signature lines, enforcing the signed-note grammar."""
    if isinstance(note, bytes):
        if len(note) > MAX_NOTE_BYTES:
            raise IntegrityError("checkpoint note is too large")
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise IntegrityError("checkpoint note is not UTF-8") from None
    elif not isinstance(note, str):
        raise IntegrityError("checkpoint note must be text")
    if len(note) > MAX_NOTE_BYTES:
        raise IntegrityError("checkpoint note is too large")
    try:
        size = len(note.encode("utf-8"))
    except UnicodeEncodeError:
        raise IntegrityError("checkpoint note is not valid UTF-8 text") from None
    if size > MAX_NOTE_BYTES:
        raise IntegrityError("checkpoint note is too large")
    if _has_control(note.replace("\n", "")):
        raise IntegrityError("checkpoint note contains control characters")
    if not note.endswith("\n"):
        raise IntegrityError("checkpoint note does not end in a newline")
    cut = note.rfind("\n\n")
    if cut < 0:
        raise IntegrityError("checkpoint note has no blank line before its signatures")
    text, block = note[: cut + 1], note[cut + 2 :]
    lines = block[:-1].split("\n") if block else []
    if not lines:
        raise IntegrityError("checkpoint note has no signatures")
    if len(lines) > MAX_SIGNATURES:
        raise IntegrityError("checkpoint note has too many signatures")
    signatures = []
    for line in lines:
        if not line.startswith(_SIG_PREFIX):
            raise IntegrityError("checkpoint note has a malformed signature line")
        fields = line[len(_SIG_PREFIX) :].split(" ")
        if len(fields) != 2 or not _valid_name(fields[0]):
            raise IntegrityError("checkpoint note has a malformed signature line")
        blob = _b64decode_strict(fields[1], "signature")
        if len(blob) < 5:
            raise IntegrityError("checkpoint note has a malformed signature line")
        signatures.append((fields[0], blob[:4], blob[4:]))
    return text, signatures


def _parse_body(text: str) -> Checkpoint:
    lines = text[:-1].split("\n")
    if len(lines) != 3:
        raise IntegrityError("checkpoint body must be exactly origin, size and root lines")
    origin, size_text, root_text = lines
    if not origin:
        raise IntegrityError("checkpoint origin is empty")
    if not _SIZE_RE.fullmatch(size_text):
        raise IntegrityError("checkpoint size is not a canonical decimal number")
    size = int(size_text)
    if size > _MAX_SIZE:
        raise IntegrityError("checkpoint size is out of range")
    root = _b64decode_strict(root_text, "root")
    if len(root) != ROOT_SIZE:
        raise IntegrityError(f"checkpoint root is not {ROOT_SIZE} bytes")
    return Checkpoint(origin=origin, size=size, root=root)


def parse(note: str | bytes) -> tuple[Checkpoint, list[tuple[str, bytes, bytes]]]:
    """Checkpoint and ``(key name, 4-byte key hash, signature)`` lines of a note, unverified.

    Nothing returned here is trustworthy until ``verify`` has checked a signature. A body
    with extension lines is refused: custody never writes them and ``Checkpoint`` cannot
    carry them, so accepting one would silently drop signed content.
    """
    text, signatures = _split_note(note)
    return _parse_body(text), signatures


def verify(note: str | bytes, name: str, public_key: Ed25519PublicKey) -> Checkpoint:
    """The checkpoint of ``note``, provided the ledger key signed these exact body bytes.

    Signatures by other keys (witnesses, rotated keys) are ignored, as the spec requires;
    but a line that claims the ledger key (same name and key hash) and does not verify
    rejects the whole note.
    """
    _require_name(name)
    text, signatures = _split_note(note)
    checkpoint = _parse_body(text)
    expected = key_hash(name, public_key)
    mine = [sig for (sig_name, sig_hash, sig) in signatures if sig_name == name and sig_hash == expected]
    if not mine:
        raise IntegrityError("checkpoint is not signed by the ledger key")
    body = text.encode()
    for signature in mine:
        try:
            public_key.verify(signature, body)
        except InvalidSignature:
            raise IntegrityError("checkpoint signature does not verify with the ledger key") from None
    return checkpoint
