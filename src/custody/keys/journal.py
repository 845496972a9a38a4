"""The custodian's own record of what it released: an append-only file of MAC-chained lines.

Single use of a grant is decided here, not in the control-plane database: a database writer who
resets a done request, or deletes the row that marks its grant spent, meets this record instead.
Each line is one JSON object whose `mac` is HMAC-SHA256 under a key only the custodian holds,
over the previous line's MAC and this line's other fields, so an edited, reordered or spliced
line breaks the chain and every later release fails closed until someone looks.

What one grant may do (the "use" is the grant's authority-block revocation id):
- `source`: release the source key, any number of times until the use is closed (a copy killed
  part-way resumes and needs it again);
- `destination`: create or open one destination key; a second, different one only after the
  first was `abandon`ed (the sweeper removed a failed attempt);
- `close`: the copy finished; nothing more is released under it;
- `read`: a read's single release, which closes the use at once.
Releases without a grant (`maintain`: verify a replica, check a backup repository) are recorded too.
`shred` records a destroyed data key: the custodian never releases or rewraps it again, even when
an old copy of the database puts its wrapped form back. `record` notes the digest of the newest
signed state of a principal, zone, version or exception row (control/records.py), so an earlier
signed state put back in the database is refused.

The journal guards against writers of the database. Someone who can also write the custodian's
own folder can roll it back to an earlier prefix, as they could roll the local keyring back to one
holding destroyed KEKs: keep that folder (or the token, or KMS) out of their reach.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from custody.domain.errors import IntegrityError

GENESIS = b"custody-release-journal-v1"
MAX_LINE = 4096


class Spent(Exception):
    """The grant's use is over (or another destination holds it); the message says which."""


@dataclass
class _Use:
    destination: str | None = None
    closed: bool = False


@dataclass
class Journal:
    """`key` None: a reader (of the record digests) that cannot check MACs or write."""

    path: Path
    key: bytes | None
    _uses: dict[str, _Use] = field(default_factory=dict)
    _shredded: set[str] = field(default_factory=set)
    _records: dict[tuple[str, str], str] = field(default_factory=dict)
    _offset: int = 0
    _seq: int = 0
    _mac: bytes = GENESIS

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._catch_up(fd)
            self._fd = fd
            yield
        finally:
            os.close(fd)

    def _catch_up(self, fd: int) -> None:
        """Read and check the lines other processes appended since this one last looked."""
        size = os.fstat(fd).st_size
        if size < self._offset:
            raise IntegrityError(f"the custodian's release journal {self.path} was truncated")
        if size == self._offset:
            return
        data = os.pread(fd, size - self._offset, self._offset)
        if not data.endswith(b"\n"):
            raise IntegrityError(f"the custodian's release journal {self.path} ends in a partial line")
        for raw in data.splitlines():
            self._apply(self._check(raw))
        self._offset = size

    def _check(self, raw: bytes) -> dict:
        try:
            entry = json.loads(raw)
            mac = bytes.fromhex(entry.pop("mac"))
        except (ValueError, KeyError, AttributeError, TypeError):
            raise IntegrityError(f"the custodian's release journal is malformed after line {self._seq}") from None
        if entry.get("seq") != self._seq + 1 or (self.key is not None and not hmac.compare_digest(mac, self._sign(entry))):
            raise IntegrityError(f"the custodian's release journal was altered at line {self._seq + 1}")
        self._seq, self._mac = entry["seq"], mac
        return entry

    def _sign(self, entry: dict) -> bytes:
        if self.key is None:
            raise IntegrityError("a reader of the release journal cannot write to it")
        body = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
        return hmac.new(self.key, self._mac + body, hashlib.sha256).digest()

    def _apply(self, entry: dict) -> None:
        if entry["op"] == "record":
            self._records[(entry["kind"], entry["id"])] = entry["digest"]
            return
        if entry["op"] == "shred":
            self._shredded.add(entry["key"])
            return
        use = entry.get("use")
        if not use:
            return
        state = self._uses.setdefault(use, _Use())
        op = entry["op"]
        if op == "destination":
            state.destination = entry["key"]
        elif op == "abandon" and state.destination == entry["key"]:
            state.destination = None
        elif op in ("close", "read"):
            state.closed = True

    def _append(self, **fields: object) -> None:
        entry = {"seq": self._seq + 1, "at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), **fields}
        mac = self._sign(entry)
        line = json.dumps({**entry, "mac": mac.hex()}, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        if len(line) > MAX_LINE:
            raise IntegrityError("a release journal line would be too long")
        os.write(self._fd, line)
        os.fsync(self._fd)
        self._offset += len(line)
        self._seq, self._mac = entry["seq"], mac
        self._apply(entry)

    # -- the decisions ---------------------------------------------------------------------------

    def _alive(self, key: str) -> None:
        if key in self._shredded:
            raise Spent(f"data key {key} was destroyed (the custodian's own record): nothing releases it again")

    def source(self, use: str, key: str, request: str) -> None:
        with self._locked():
            self._alive(key)
            if self._uses.get(use, _Use()).closed:
                raise Spent("grant already used: its copy finished (the custodian's own record)")
            self._append(op="source", use=use, key=key, request=request)

    def destination(self, use: str, key: str, request: str, *, first: bool = True) -> None:
        """`first`: the key is being made for this grant now; otherwise (a resumed copy) it must be the
        very key this grant made."""
        with self._locked():
            self._alive(key)
            state = self._uses.get(use, _Use())
            if not first and state.destination != key:
                raise Spent("this key is not the one this grant made: a resumed copy writes only into its own")
            if state.closed:
                raise Spent("grant already used: its copy finished (the custodian's own record)")
            if state.destination not in (None, key):
                raise Spent("grant already made a destination key: one grant, one copy (the custodian's own record)")
            self._append(op="destination", use=use, key=key, request=request)

    def read(self, use: str, key: str, request: str) -> None:
        with self._locked():
            self._alive(key)
            if use in self._uses:
                raise Spent("grant already used: one approval, one read (the custodian's own record)")
            self._append(op="read", use=use, key=key, request=request)

    def close(self, use: str, request: str) -> None:
        with self._locked():
            if not self._uses.get(use, _Use()).closed:
                self._append(op="close", use=use, request=request)

    def abandon(self, use: str, key: str, request: str) -> None:
        with self._locked():
            if self._uses.get(use, _Use()).destination == key:
                self._append(op="abandon", use=use, key=key, request=request)

    def maintain(self, key: str, why: str) -> None:
        with self._locked():
            self._alive(key)
            self._append(op="maintain", key=key, why=why[:200])

    def shred(self, key: str, why: str) -> None:
        with self._locked():
            if key not in self._shredded:
                self._append(op="shred", key=key, why=why[:200])

    def shredded(self) -> set[str]:
        with self._locked():
            return set(self._shredded)

    def record(self, kind: str, ident: str, digest: str) -> None:
        with self._locked():
            if self._records.get((kind, ident)) != digest:
                self._append(op="record", kind=kind, id=ident, digest=digest)

    def releases(self) -> list[tuple[int, str, str, str]]:
        """(line, time, operation, request) of every release made under a grant, oldest first."""
        out = []
        if not self.path.exists():
            return out
        with self._locked():
            data = os.pread(self._fd, self._offset, 0)
        for raw in data.splitlines():
            entry = json.loads(raw)
            if entry.get("op") in ("source", "destination", "read") and entry.get("request"):
                out.append((entry["seq"], entry["at"], entry["op"], entry["request"]))
        return out

    def recorded(self, kind: str) -> set[str]:
        """The ids of every row of this kind whose signed state was noted (a deleted row stays here)."""
        if not self.path.exists():
            return set()
        with self._locked():
            return {ident for (k, ident) in self._records if k == kind}

    def newest_record(self, kind: str, ident: str) -> str | None:
        """The digest of the newest signed state of a row, where one was noted."""
        if not self.path.exists():
            return None
        with self._locked():
            return self._records.get((kind, ident))
