"""A witness for the ledger: c2sp.org/tlog-witness, cosigning with c2sp.org/tlog-cosignature v1 (Ed25519).

Why: the database is convenient, not trusted (DESIGN.md, "Trust roots"). Whoever can write it can delete
the newest events together with every checkpoint stored beside them, and rebuild the tree over a rewritten
history; whoever can also write the workspace folder replaces the `ledger/checkpoint` copy too. A witness
keeps, for each log origin, the newest checkpoint it cosigned, somewhere of its own (any fsspec URL), and
cosigns a new one only when an RFC 6962 consistency proof shows that it extends the one it holds. History
it has seen can then neither shrink nor change without `audit verify` noticing, and its cosignature (by a
key kept with the custodian, never in the database) lets anyone holding its public key check its record.

`Witness.add_checkpoint` is the spec's add-checkpoint call as a function; its refusals map to the spec's
HTTP answers:
    unknown origin ............................................. NotFound (404)
    no valid signature by the log's key ........................ IntegrityError (403)
    old size above the checkpoint's size, or a proof too long .. InvalidInput (400)
    old size other than the size held (the body: that size) .... WitnessConflict, `.size` (409)
    same size as held but another root ......................... WitnessConflict (409)
    consistency proof does not verify .......................... IntegrityError (422)
Checking the old size and recording the new checkpoint happen under one lock, so two submissions cannot
roll the witness back (the race the spec describes).

Storage under the witness URL, per origin (a file-name-safe form of it):
    <origin-safe>/latest    the newest cosigned note (replaced atomically on a local file system)
    <origin-safe>/<size>    every cosigned note, write-once: never replaced by other content
A cosigned note is the log's signed note with the witness's cosignature line appended.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import fsspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from custody.control.ledger import checkpoint, merkle
from custody.control.ledger.checkpoint import Checkpoint
from custody.domain.errors import CustodyError, IntegrityError, InvalidInput, NotFound

__all__ = [
    "ALG_COSIGNATURE_V1",
    "MAX_PROOF_LINES",
    "Witness",
    "WitnessConflict",
    "Witnessed",
    "cosign",
    "key_id",
    "message",
    "origin_dir",
    "verify_cosigned",
    "vkey",
]

ALG_COSIGNATURE_V1 = 0x04
"""Signature type byte of Ed25519 cosignature/v1 in key IDs and verifier keys (not 0x01: another message)."""

MAX_PROOF_LINES = 63
"""tlog-witness: a client must not send more consistency proof lines than this."""

MAX_TIMESTAMP = (1 << 63) - 1
MAX_CLOCK_SKEW = 300
"""Seconds a cosignature's time may lie ahead of the verifier's clock (the spec lets verifiers refuse)."""

_BLOB = 8 + 64  # timestamp || Ed25519 signature, after the 4-byte key ID
_EM = "\u2014 "


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _check_name(name: str) -> None:
    """signed-note key names: non-empty, no spaces, no '+', no control characters."""
    if (not isinstance(name, str) or not name or "+" in name or any(ch.isspace() for ch in name)
            or any(ord(ch) < 0x20 for ch in name)):
        raise ValueError("witness name must be non-empty, without spaces, '+' or control characters")


def key_id(name: str, public_key: Ed25519PublicKey) -> bytes:
    """SHA-256(name || 0x0A || 0x04 || 32-byte key)[:4]: picks the line to check; the key authenticates."""
    _check_name(name)
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_COSIGNATURE_V1]) + _raw(public_key)).digest()[:4]


def vkey(name: str, public_key: Ed25519PublicKey) -> str:
    """The witness's verifier key `<name>+<hex key ID>+<base64(0x04 || key)>`, to publish."""
    material = base64.b64encode(bytes([ALG_COSIGNATURE_V1]) + _raw(public_key)).decode()
    return f"{name}+{key_id(name, public_key).hex()}+{material}"


def message(body: bytes, timestamp: int) -> bytes:
    """What is signed: "cosignature/v1", "time <POSIX seconds>", then the checkpoint body (its final newline
    included). The header separates this from a plain note signature by the same key."""
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or not 0 <= timestamp <= MAX_TIMESTAMP:
        raise ValueError("cosignature time must be an integer in [0, 2**63)")
    return b"cosignature/v1\ntime %d\n" % timestamp + body


def cosign(cp: Checkpoint, name: str, public_key: Ed25519PublicKey, sign: Callable[[bytes], bytes],
           timestamp: int) -> str:
    """One cosignature line: `— <name> base64(key ID || u64 big-endian time || Ed25519 signature)`."""
    signature = sign(message(cp.body(), timestamp))
    if len(signature) != 64:
        raise IntegrityError("the witness key did not give a 64-byte Ed25519 signature")
    blob = key_id(name, public_key) + timestamp.to_bytes(8, "big") + signature
    return f"{_EM}{name} {base64.b64encode(blob).decode()}\n"


def verify_cosigned(note: str | bytes, name: str, public_key: Ed25519PublicKey, *,
                    now: float | None = None) -> tuple[Checkpoint, int]:
    """The checkpoint of `note` and the time of its newest cosignature by this witness key.

    Lines by other keys are ignored; a line that claims this key (name and key ID) and does not verify,
    or is malformed, or is dated past 2**63 - 1 or (with `now`) too far in the future, refuses the note.
    The log's own signature is not checked here: see `checkpoint.verify`.
    """
    cp, signatures = checkpoint.parse(note)
    wanted = key_id(name, public_key)
    mine = [blob for (sig_name, sig_id, blob) in signatures if sig_name == name and sig_id == wanted]
    if not mine:
        raise IntegrityError("it carries no cosignature by the witness key")
    newest = -1
    for blob in mine:
        if len(blob) != _BLOB:
            raise IntegrityError("its witness cosignature is malformed")
        timestamp = int.from_bytes(blob[:8], "big")
        if timestamp > MAX_TIMESTAMP:
            raise IntegrityError("its witness cosignature has an impossible time")
        if now is not None and timestamp > now + MAX_CLOCK_SKEW:
            raise IntegrityError("its witness cosignature is dated in the future")
        try:
            public_key.verify(blob[8:], message(cp.body(), timestamp))
        except InvalidSignature:
            raise IntegrityError("its witness cosignature does not verify with the witness key") from None
        newest = max(newest, timestamp)
    return cp, newest


class WitnessConflict(IntegrityError):
    """The witness holds another checkpoint than the caller assumed (tlog-witness 409): `size` is its size,
    from which the caller should prove consistency; or it holds another root at the same size (a fork)."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size

    @property
    def details(self) -> dict:
        return {"witness_size": self.size}


@dataclass(frozen=True)
class Witnessed:
    """The newest checkpoint a witness cosigned for one origin, as it keeps it."""

    checkpoint: Checkpoint
    timestamp: int  # POSIX seconds of the newest cosignature
    note: str  # the cosigned note
    location: str  # where it is kept


def origin_dir(origin: str) -> str:
    """A file-name-safe folder for an origin (custody's contain '/'): readable, and unique through a hash."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", origin).strip("._")[:64] or "log"
    return f"{slug}-{hashlib.sha256(origin.encode()).hexdigest()[:12]}"


class Witness:
    """A witness over an fsspec location. `logs` maps each origin it witnesses to the log's Ed25519 key,
    whose signature line is named after the origin (as custody signs). `sign` signs with the witness key;
    a witness opened only to read its state (`audit verify`) has none, and where its public key is unknown
    too, anything it keeps is refused as uncheckable. `lock`: a local file whose exclusive lock serializes
    submissions of all processes on this machine."""

    def __init__(self, url: str, name: str, public_key: Ed25519PublicKey | None, logs: Mapping[str, Ed25519PublicKey],
                 sign: Callable[[bytes], bytes] | None = None, *, lock: Path | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        _check_name(name)
        try:
            self.fs, self.root = fsspec.core.url_to_fs(url)
        except (ValueError, ImportError) as exc:
            raise CustodyError(f"witness URL {url!r} is not usable: {exc}") from None
        self.url, self.name, self.public_key, self.logs = url, name, public_key, dict(logs)
        self._sign, self._lock, self._clock = sign, lock, clock
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    # -- where things are -----------------------------------------------------------------

    def location(self, origin: str, leaf: str = "latest") -> str:
        """Where the note is kept, as a person would look for it (the URL as configured, plus the path)."""
        return f"{self.url.rstrip('/')}/{origin_dir(origin)}/{leaf}"

    def _path(self, origin: str, leaf: str) -> str:
        return f"{self.root.rstrip('/')}/{origin_dir(origin)}/{leaf}"

    # -- reading its state -------------------------------------------------------------------

    def latest(self, origin: str) -> Witnessed | None:
        """The newest checkpoint cosigned for `origin`, or None before the first. What is kept is checked
        as anything from outside: the log's signature and this witness's own cosignature must verify."""
        where = self.location(origin)
        data = self._read(self._path(origin, "latest"), where)
        if data is None:
            return None
        return self._check_kept(origin, data, where)

    def _check_kept(self, origin: str, data: bytes, where: str) -> Witnessed:
        if self.public_key is None:
            raise IntegrityError(f"the witnessed checkpoint {where} cannot be checked: the witness's public key "
                                 "is unknown")
        try:
            note = data.decode("utf-8")
            cp = checkpoint.verify(note, origin, self._log_key(origin))
            cosigned, timestamp = verify_cosigned(note, self.name, self.public_key)  # no clock check: a clock
            # set back must not make the witness refuse its own record
        except (IntegrityError, UnicodeDecodeError) as exc:
            reason = exc.message if isinstance(exc, IntegrityError) else "it is not UTF-8 text"
            raise IntegrityError(f"the witnessed checkpoint {where} is refused: {reason}") from None
        if cp.origin != origin:
            raise IntegrityError(f"the witnessed checkpoint {where} is for another ledger ({cp.origin})")
        return Witnessed(cosigned, timestamp, note, where)

    def _log_key(self, origin: str) -> Ed25519PublicKey:
        key = self.logs.get(origin)
        if key is None:
            raise NotFound(f"this witness does not follow the log {origin!r}")
        return key

    def _read(self, path: str, where: str) -> bytes | None:
        try:
            return self.fs.cat_file(path)
        except FileNotFoundError:
            return None
        except OSError as exc:  # out of reach is not evidence of tampering: exit 1, not 5
            raise CustodyError(f"cannot read the witnessed checkpoint {where}: {exc.strerror or exc}") from None

    # -- add-checkpoint -----------------------------------------------------------------------

    def add_checkpoint(self, old_size: int, consistency_proof: Sequence[bytes], note: str | bytes) -> str:
        """Cosign `note` if it extends the checkpoint held for its origin, record it, and return the
        cosignature line. `old_size` must be the size held (0 before the first), and the proof must lead
        from the held checkpoint to this one (empty from 0, and between equal sizes)."""
        if self._sign is None or self.public_key is None:
            raise InvalidInput("this witness was opened to read only; it cannot cosign")
        cp, _ = checkpoint.parse(note)
        key = self._log_key(cp.origin)
        try:
            checkpoint.verify(note, cp.origin, key)
        except IntegrityError as exc:
            raise IntegrityError(f"the witness refuses the checkpoint: {exc.message}") from None
        if isinstance(old_size, bool) or not isinstance(old_size, int) or not 0 <= old_size <= cp.size:
            raise InvalidInput(f"old size {old_size} is not between 0 and the checkpoint's size {cp.size}")
        if len(consistency_proof) > MAX_PROOF_LINES:
            raise InvalidInput(f"a consistency proof has at most {MAX_PROOF_LINES} hashes")
        text = note if isinstance(note, str) else note.decode("utf-8")
        with self._locked():
            held = self.latest(cp.origin)
            held_size = held.checkpoint.size if held else 0
            if old_size != held_size:
                raise WitnessConflict(f"the witness holds a checkpoint of size {held_size}, not {old_size}",
                                      held_size)
            if held is not None and held_size == cp.size:
                if held.checkpoint.root != cp.root:
                    raise WitnessConflict(f"the witness holds another tree of size {held_size}: the log forked",
                                          held_size)
                return self._own_line(held.note)  # already cosigned: the same statement again
            if held is None:
                if consistency_proof:
                    raise InvalidInput("a consistency proof from size 0 must be empty")
            else:
                try:
                    merkle.verify_consistency(held_size, cp.size, held.checkpoint.root, cp.root,
                                              list(consistency_proof))
                except IntegrityError as exc:
                    raise IntegrityError(f"the checkpoint of size {cp.size} does not extend the witnessed one of "
                                         f"size {held_size}: {exc.message}") from None
            line = cosign(cp, self.name, self.public_key, self._sign, int(self._clock()))
            cosigned = self._without_own_lines(text) + line
            try:
                cosigned = self._write_once(cp, cosigned)
                self._replace(self._path(cp.origin, "latest"), cosigned.encode())
            except OSError as exc:
                raise CustodyError(f"the witness cannot record its cosignature at {self.location(cp.origin)}: "
                                   f"{exc.strerror or exc}") from None
            return self._own_line(cosigned)

    def _own_line(self, note: str) -> str:
        prefix = f"{_EM}{self.name} "
        wanted = key_id(self.name, self.public_key)
        lines = [ln for ln in note.split("\n") if ln.startswith(prefix)
                 and base64.b64decode(ln[len(prefix):])[:4] == wanted]
        return lines[-1] + "\n"

    def _without_own_lines(self, note: str) -> str:
        """The note less any line under this witness's name (a resubmitted cosigned note gets one line)."""
        prefix = f"{_EM}{self.name} "
        return "".join(ln for ln in note.splitlines(keepends=True) if not ln.startswith(prefix))

    # -- writing -------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        if self._lock is None:
            yield
            return
        self._lock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self._lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _write_once(self, cp: Checkpoint, cosigned: str) -> str:
        """Keep `<size>`, never replacing other content. If it is there already (a submission cut short
        after writing it), it must be this witness's cosignature of this very checkpoint, which is kept."""
        path, where = self._path(cp.origin, str(cp.size)), self.location(cp.origin, str(cp.size))
        data = cosigned.encode()
        if self._create(path, data):
            return cosigned
        existing = self._read(path, where) or b""
        if existing == data:
            return cosigned
        try:
            kept = self._check_kept(cp.origin, existing, where)
        except IntegrityError as exc:
            raise IntegrityError(f"{exc.message}; it is write-once, so nothing was cosigned") from None
        if kept.checkpoint != cp:
            raise IntegrityError(f"the witnessed checkpoint {where} holds another tree of size {cp.size}: "
                                 "the log forked")
        return kept.note

    def _mkdirs(self, path: str) -> None:
        folder = path.rsplit("/", 1)[0]
        if self.local:  # the witness's own folder too is private (makedirs gives `mode` to the leaf only)
            for each in (self.root, folder):
                os.makedirs(each, mode=0o700, exist_ok=True)
        else:
            self.fs.makedirs(folder, exist_ok=True)

    def _create(self, path: str, data: bytes) -> bool:
        """Write `path` unless it exists; False where it did."""
        self._mkdirs(path)
        if not self.local:
            if self.fs.exists(path):
                return False
            self.fs.pipe_file(path, data)
            return True
        tmp = self._local_tmp(path, data)
        try:
            os.link(tmp, path)  # atomic: fails where the name is taken, never half-written
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True

    def _replace(self, path: str, data: bytes) -> None:
        self._mkdirs(path)
        if not self.local:
            self.fs.pipe_file(path, data)
            return
        os.replace(self._local_tmp(path, data), path)

    @staticmethod
    def _local_tmp(path: str, data: bytes) -> str:
        folder, name = path.rsplit("/", 1)
        tmp = f"{folder}/.{name}.{secrets.token_hex(6)}.partial"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp
