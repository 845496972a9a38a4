"""What a snapshot records: every file of a model version and the chunks that rebuild it.

The snapshot is the control plane's record (signed, kept with the asset), written only after a
backup has stored every chunk; the repository itself holds no list of snapshots. It is read
back from storage an attacker may reach, so parsing is strict and bounded, and every value is
checked before anything acts on it: paths are safe relative names, chunk ids are well formed,
piece lengths are within what the chunker produces, and a file's pieces add up to its size.

Canonical JSON (sorted keys, no spaces, UTF-8)::

    {"files":[{"chunks":[["<id>",<length>],...],"path":"...","sha256":"...","size":N},...],"version":1}
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from custody.data.backup.chunking import PIECE_SIZE
from custody.domain.errors import IntegrityError, InvalidInput
from custody.domain.manifest import FileEntry, Manifest, check_relpath
from custody.domain.strict_json import StrictJSONError, loads_object

__all__ = ["MAX_CHUNKS", "MAX_FILES", "MAX_SNAPSHOT_BYTES", "FileChunks", "SnapshotManifest"]

VERSION = 1
MAX_SNAPSHOT_BYTES = 512 * 1024 * 1024
MAX_FILES = 1_000_000
MAX_CHUNKS = 20_000_000  # 80 TB of 4 MiB pieces
_HEX64 = re.compile(r"[0-9a-f]{64}")
_FILE_KEYS = frozenset({"path", "size", "sha256", "chunks"})


@dataclass(frozen=True, slots=True)
class FileChunks:
    """One file: its path, size and SHA-256, and its pieces in order as (chunk id, length)."""

    path: str
    size: int
    sha256: str
    chunks: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        check_relpath(self.path)
        if type(self.size) is not int or self.size < 0:
            raise InvalidInput(f"{self.path}: size must be a non-negative integer")
        if not isinstance(self.sha256, str) or not _HEX64.fullmatch(self.sha256):
            raise InvalidInput(f"{self.path}: sha256 must be 64 lowercase hex digits")
        total = 0
        for item in self.chunks:
            if not (isinstance(item, tuple) and len(item) == 2):
                raise InvalidInput(f"{self.path}: each chunk must be a (chunk id, length) pair")
            cid, length = item
            if not isinstance(cid, str) or not _HEX64.fullmatch(cid):
                raise InvalidInput(f"{self.path}: chunk id {str(cid)[:70]!r} is not 64 lowercase hex digits")
            if type(length) is not int or not 1 <= length <= PIECE_SIZE:
                raise InvalidInput(f"{self.path}: chunk {cid[:12]} has length {length!r} (1..{PIECE_SIZE})")
            total += length
        if total != self.size:
            raise InvalidInput(f"{self.path}: chunks add up to {total} bytes, the file has {self.size}")

    def entry(self) -> FileEntry:
        return FileEntry(self.path, self.size, self.sha256)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256,
                "chunks": [[cid, length] for cid, length in self.chunks]}


@dataclass(frozen=True, slots=True)
class SnapshotManifest:
    """Files sorted by path (byte order of their UTF-8), each path once."""

    files: tuple[FileChunks, ...]

    def __post_init__(self) -> None:
        paths = [f.path.encode("utf-8") for f in self.files]
        if paths != sorted(paths):
            raise InvalidInput("snapshot files must be sorted by path")
        if len(set(paths)) != len(paths):
            raise InvalidInput("snapshot lists a path twice")

    @classmethod
    def of(cls, files: list[FileChunks] | tuple[FileChunks, ...]) -> SnapshotManifest:
        return cls(tuple(sorted(files, key=lambda f: f.path.encode("utf-8"))))

    @property
    def logical_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def chunk_ids(self) -> set[str]:
        return {cid for f in self.files for cid, _ in f.chunks}

    def manifest(self) -> Manifest:
        """The asset-version manifest these files restore to (paths, sizes, SHA-256)."""
        return Manifest(tuple(f.entry() for f in self.files))

    def to_json(self) -> bytes:
        doc = {"version": VERSION, "files": [f.to_dict() for f in self.files]}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    @property
    def digest(self) -> str:
        """SHA-256 of the canonical JSON: what the control plane signs and records."""
        return hashlib.sha256(self.to_json()).hexdigest()

    @classmethod
    def from_json(cls, data: bytes | str) -> SnapshotManifest:
        """Parse a stored snapshot; anything malformed, oversized or inconsistent is an IntegrityError."""
        raw = data.encode("utf-8") if isinstance(data, str) else data
        if not isinstance(raw, (bytes, bytearray)):
            raise IntegrityError("snapshot manifest must be bytes")
        if len(raw) > MAX_SNAPSHOT_BYTES:
            raise IntegrityError(f"snapshot manifest is oversized ({len(raw)} bytes, limit {MAX_SNAPSHOT_BYTES})")
        try:
            doc = loads_object(bytes(raw))
        except StrictJSONError as exc:
            raise IntegrityError(f"snapshot manifest: {exc}") from None
        try:
            return cls._from_doc(doc)
        except InvalidInput as exc:
            raise IntegrityError(f"snapshot manifest: {exc.message}") from None

    @classmethod
    def _from_doc(cls, doc: dict[str, Any]) -> SnapshotManifest:
        if set(doc) != {"version", "files"}:
            raise InvalidInput(f"unexpected or missing keys {sorted(set(doc) ^ {'version', 'files'})[:5]}")
        if type(doc["version"]) is not int or doc["version"] != VERSION:
            raise InvalidInput(f"unsupported version {str(doc['version'])[:20]!r}")
        files = doc["files"]
        if not isinstance(files, list) or len(files) > MAX_FILES:
            raise InvalidInput(f"files must be a list of at most {MAX_FILES} entries")
        out: list[FileChunks] = []
        total_chunks = 0
        for item in files:
            if not isinstance(item, dict) or set(item) != _FILE_KEYS:
                raise InvalidInput("a file entry must have exactly path, size, sha256 and chunks")
            path, chunks = item["path"], item["chunks"]
            if not isinstance(path, str):
                raise InvalidInput("a file path must be a string")
            if not isinstance(chunks, list):
                raise InvalidInput(f"{path}: chunks must be a list")
            total_chunks += len(chunks)
            if total_chunks > MAX_CHUNKS:
                raise InvalidInput(f"more than {MAX_CHUNKS} chunks")
            pairs = []
            for pair in chunks:
                if not isinstance(pair, list) or len(pair) != 2:
                    raise InvalidInput(f"{path}: each chunk must be a [chunk id, length] pair")
                pairs.append((pair[0], pair[1]))
            out.append(FileChunks(path=path, size=item["size"], sha256=item["sha256"], chunks=tuple(pairs)))
        return cls(tuple(out))
