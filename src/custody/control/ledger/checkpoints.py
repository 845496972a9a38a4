"""Signed checkpoints of the stored ledger: taking them, on request and on a schedule, and the copy of
the newest one kept in the workspace folder, outside the database. (`checkpoint` is the note format.)

`audit verify` holds the events to every checkpoint, so deleting the newest events also means deleting
every checkpoint that covers them; the workspace copy is out of reach of database access alone. Taken
automatically after N events or M seconds (`[ledger]` in custody.toml), at most M seconds or N events
are ever unwitnessed. Every checkpoint taken is also given to the witness (`witness.py`, kept at
`[witness] url`), which cosigns it only if it extends the one it holds: history it saw cannot be
truncated or rewritten even by someone who deletes every checkpoint above. A witness failure loses
nothing (the checkpoint is stored); it is ledgered, and the next checkpoint tries again.
"""

from __future__ import annotations

import os
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from sqlalchemy import insert, select

from custody.control.ledger import checkpoint, merkle, witness
from custody.control.ledger import store as ledger
from custody.control.store import schema as t
from custody.control.store.db import UnitOfWork
from custody.control.store.repositories import as_utc
from custody.control.workspace import Workspace
from custody.domain.errors import CustodyError, IntegrityError, InvalidInput, NotFound

COPY = "ledger/checkpoint"
WITNESS_DIR = "witness"  # the witness's default place: a folder of the workspace
WITNESS_LOCK = "ledger/witness.lock"  # serializes this machine's submissions to the witness


def ledger_key(ws: Workspace, pinned: Path | None = None) -> Ed25519PublicKey:
    return _public_key(ws, "ledger", pinned)


def witness_key(ws: Workspace, pinned: Path | None = None) -> Ed25519PublicKey:
    """The witness's public key: `pinned`, or keys/witness.pub.pem (readable without the passphrase)."""
    return _public_key(ws, "witness", pinned)


def _public_key(ws: Workspace, purpose: str, pinned: Path | None = None, pem: bytes | None = None) -> Ed25519PublicKey:
    try:
        pem = pem or (pinned.read_bytes() if pinned else ws.public_key_pem(purpose))  # type: ignore[arg-type]
    except OSError as exc:
        raise InvalidInput(f"cannot read public key {pinned}: {exc.strerror}") from None
    try:
        key = load_pem_public_key(pem)
    except ValueError:
        raise IntegrityError(f"{purpose} public key is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise IntegrityError(f"{purpose} public key is not an Ed25519 key")
    return key


class LedgerSigner:
    """The custodian's ledger key in the shape of an Ed25519 private key."""

    def __init__(self, ws: Workspace) -> None:
        self._ws = ws

    def public_key(self) -> Ed25519PublicKey:
        return ledger_key(self._ws)

    def sign(self, data: bytes) -> bytes:
        return self._ws.custodian().sign("ledger", data)


def sign(ws: Workspace, size: int, root: bytes) -> str:
    return checkpoint.sign(checkpoint.Checkpoint(ws.origin, size, root), ws.origin, LedgerSigner(ws))


def check_extends(ws: Workspace, uow: UnitOfWork, size: int, root: bytes) -> None:
    """Refuse to sign a tree that is not the newest checkpoint's tree grown by appends (that one kept in
    the workspace, and that stored): signing a truncated or rewritten ledger would launder it."""
    c = t.ledger_checkpoints.c
    stored = uow.conn.execute(select(c.note).order_by(c.size.desc()).limit(1)).scalar_one_or_none()
    for note in (read_copy(ws), stored, _witnessed_note(ws)):
        if note is None:
            continue
        old = checkpoint.verify(note, ws.origin, ledger_key(ws))
        if old.origin != ws.origin:
            raise IntegrityError(f"a checkpoint of another ledger ({old.origin}) is kept here")
        if old.size > size:
            raise IntegrityError(f"the ledger holds {size} events but a checkpoint covers {old.size}: "
                                 "events were removed (run custody audit verify)")
        if old.size:
            proof = merkle.consistency_proof(old.size, size, ledger.StoredNodes(uow))
            merkle.verify_consistency(old.size, size, old.root, root, proof)


def store(uow: UnitOfWork, size: int, note: str) -> None:
    """Keep the note for `size` unless one is kept already (one checkpoint per size)."""
    c = t.ledger_checkpoints.c
    if uow.conn.execute(select(c.size).where(c.size == size)).first() is None:
        uow.conn.execute(insert(t.ledger_checkpoints).values(size=size, note=note, created_at=datetime.now(timezone.utc)))


def newest(uow: UnitOfWork) -> tuple[int, float] | None:
    """(size, unix time taken) of the newest stored checkpoint."""
    c = t.ledger_checkpoints.c
    row = uow.conn.execute(select(c.size, c.created_at).order_by(c.size.desc()).limit(1)).first()
    return None if row is None else (int(row.size), as_utc(row.created_at).timestamp())


def keep_copy(ws: Workspace, note: str) -> None:
    """Replace the workspace copy with `note` (atomically, 0600) unless the copy covers more events."""
    size = checkpoint.parse(note)[0].size
    held = read_copy(ws)
    try:
        if held is not None and checkpoint.parse(held)[0].size > size:
            return
    except IntegrityError:
        pass  # a mangled copy is replaced; verify would refuse it
    path = ws.home / COPY
    path.parent.mkdir(mode=0o700, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(note)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_copy(ws: Workspace) -> str | None:
    """The workspace copy of the newest checkpoint, or None where there is none yet."""
    try:
        return (ws.home / COPY).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"cannot read the workspace checkpoint {COPY}: {exc}") from None


# --------------------------------------------------------------------------- the witness


def witness_name(ws: Workspace) -> str:
    """The witness's key name in its cosignature lines."""
    return f"custody-witness/{ws.id}"


def open_witness(ws: Workspace, *, signing: bool = False, ledger_pub: Ed25519PublicKey | None = None,
                 witness_pub: Ed25519PublicKey | None = None) -> witness.Witness:
    """The workspace's witness. `signing`: with the custodian's witness key, to cosign (needs the keyring
    unsealed); otherwise to read and check its state, with these public keys or the workspace's. A workspace
    made before its witness gets keys/witness.pub.pem with the first cosignature; until then a reader has no
    witness key, and refuses any witness state as uncheckable (deleting the file hides nothing)."""
    url = ws.witness_url or str(ws.home / WITNESS_DIR)
    pub: Ed25519PublicKey | None
    if signing:
        custodian = ws.custodian()
        pem = custodian.public_key_pem("witness")
        pub = _public_key(ws, "witness", pem=pem)
        sign = lambda message: custodian.sign("witness", message)  # noqa: E731
        published = ws.home / "keys" / "witness.pub.pem"
        if not published.exists():
            published.write_bytes(pem)
    else:
        sign = None
        try:
            pub = witness_pub or witness_key(ws)
        except NotFound:
            pub = None
    return witness.Witness(url, witness_name(ws), pub, {ws.origin: ledger_pub or ledger_key(ws)}, sign,
                           lock=ws.home / WITNESS_LOCK)


def _witnessed_note(ws: Workspace) -> str | None:
    """The witness's newest checkpoint for `check_extends`, when it can be read and checked; a witness out of
    reach must not stop checkpoints being taken (its failure is reported where it is submitted to)."""
    try:
        held = open_witness(ws).latest(ws.origin)
    except CustodyError:
        return None
    return held.note if held else None


def submit(ws: Workspace, note: str) -> witness.Witnessed:
    """Have the witness cosign `note`, a stored checkpoint, proving consistency from the size it holds (the
    tlog-witness old size); returns what it holds then. A witness already ahead is fine where the ledger at
    its size has its root; another process's submission in between is retried from the new size."""
    w = open_witness(ws, signing=True)
    cp = checkpoint.parse(note)[0]
    for _ in range(3):
        held = w.latest(ws.origin)
        old = held.checkpoint.size if held else 0
        with ws.uow(readonly=True) as uow:
            if old > cp.size:
                _check_behind(uow, held)  # type: ignore[arg-type]
                return held  # type: ignore[return-value]
            proof = merkle.consistency_proof(old, cp.size, ledger.StoredNodes(uow)) if 0 < old < cp.size else []
        try:
            w.add_checkpoint(old, proof, note)
        except witness.WitnessConflict as exc:
            if exc.size == old:
                raise  # not a race: the same size with another root
            continue
        return w.latest(ws.origin)  # type: ignore[return-value]
    raise IntegrityError("the witness's checkpoint kept changing during the submission; the next one retries")


def _check_behind(uow: UnitOfWork, held: witness.Witnessed) -> None:
    n = ledger.size(uow)
    if n < held.checkpoint.size:
        raise IntegrityError(f"the witnessed checkpoint (size {held.checkpoint.size}, {held.location}) covers "
                             f"{held.checkpoint.size} events but the ledger holds only {n}")
    if ledger.root(uow, held.checkpoint.size)[1] != held.checkpoint.root:
        raise IntegrityError(f"ledger does not match the witnessed checkpoint (size {held.checkpoint.size}, "
                             f"{held.location})")


def witness_note(ws: Workspace, note: str) -> dict:
    """Submit `note` to the witness and say how it went; never raises. A failure loses nothing (the checkpoint
    is stored) but must be seen: it is ledgered (`ledger.witness` by system) and returned, and the next
    checkpoint retries, with consistency from the size the witness holds."""
    size = checkpoint.parse(note)[0].size
    try:
        held = submit(ws, note)
        return {"witnessed": True, "witnessed_size": held.checkpoint.size, "location": held.location,
                "time": iso_time(held.timestamp)}
    except Exception as exc:  # noqa: BLE001
        reason = exc.message if isinstance(exc, CustodyError) else f"{type(exc).__name__}: {exc}"
        outcome = exc.outcome if isinstance(exc, CustodyError) else "error"
    try:
        with ws.uow() as uow:
            ledger.append(uow, actor="system", action="ledger.witness", outcome=outcome, subject=str(size),
                          details={"tree_size": size, "reason": reason})
    except Exception:  # noqa: BLE001
        pass  # the database is likely down; the caller still gets the failure
    return {"witnessed": False, "tree_size": size, "error": reason}


def iso_time(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat().replace("+00:00", "Z")


def _due(ws: Workspace, size: int, last: tuple[int, float] | None) -> bool:
    if last is None:
        return size > 0
    covered, at = last
    return size > covered and (size - covered >= ws.checkpoint_every_events
                               or time.time() - at >= ws.checkpoint_every_seconds)


def take_if_due(ws: Workspace, seq: int | None = None, now: bool = False) -> None:
    """Sign and keep a checkpoint when the schedule says one is due; called after a commit (`seq`: the
    event it wrote) and by the server's timer. What this process last saw usually settles that none is
    due without a read (a checkpoint taken elsewhere only makes one less due). The root is read and
    signed outside any write transaction (opening the keyring may take a moment); only the insert
    writes. Never raises: without a passphrase in this process, or on any failure, it simply waits for
    the next chance, and `audit verify` reports the events a checkpoint does not cover yet. `now`: take
    one whatever the schedule says (after a key release)."""
    try:
        if not now and seq is not None and not _due(ws, seq + 1, ws.newest_checkpoint):
            return
        with ws.uow(readonly=True) as uow:
            ws.newest_checkpoint = newest(uow)
            size_now = ledger.size(uow)
            covered = ws.newest_checkpoint[0] if ws.newest_checkpoint else 0
            if not (now and size_now > covered) and not _due(ws, size_now, ws.newest_checkpoint):
                return
            size, root = ledger.root(uow)
            check_extends(ws, uow, size, root)
        note = sign(ws, size, root)
        with ws.uow() as uow:
            store(uow, size, note)
        ws.newest_checkpoint = (size, time.time())
        try:
            keep_copy(ws, note)
        finally:
            witness_note(ws, note)  # never raises; a failure is ledgered
    except Exception:  # noqa: BLE001
        pass  # a safeguard taken later must never fail (or hold up) the action that prompted it
