"""The manifest of an asset version: every file's relative path, size and SHA-256.

The version digest is the SHA-256 of the canonical JSON serialisation, so two parties that
hold the same files compute the same digest without trusting each other.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import PurePosixPath

from custody.domain.errors import InvalidInput

MAX_PATH_BYTES = 1024


def check_relpath(path: str) -> str:
    """Return `path` if it is a safe relative POSIX path; refuse traversal and odd names."""
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"bad file name {path!r}: not valid UTF-8") from None
    if not path or len(encoded) > MAX_PATH_BYTES:
        raise InvalidInput(f"bad file name {path[:64]!r}: empty or too long")
    if "\\" in path or "\x00" in path or any(ord(c) < 0x20 for c in path):
        raise InvalidInput(f"bad file name {path!r}: control character or backslash")
    p = PurePosixPath(path)
    if p.is_absolute() or any(part in ("", ".", "..") for part in path.split("/")):
        raise InvalidInput(f"bad file name {path!r}: must be relative, without '.' or '..'")
    return path


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str  # relative POSIX path inside the model
    size: int
    sha256: str  # lowercase hex

    def __post_init__(self) -> None:
        check_relpath(self.path)
        if self.size < 0:
            raise InvalidInput(f"{self.path}: negative size")
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise InvalidInput(f"{self.path}: sha256 must be 64 lowercase hex digits")

    def to_dict(self) -> dict:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d: dict) -> "FileEntry":
        return cls(path=str(d["path"]), size=int(d["size"]), sha256=str(d["sha256"]))


@dataclass(frozen=True, slots=True)
class Manifest:
    """Files sorted by path (byte order of their UTF-8), unique."""

    files: tuple[FileEntry, ...]

    def __post_init__(self) -> None:
        paths = [f.path for f in self.files]
        if paths != sorted(paths, key=lambda p: p.encode("utf-8")):
            raise InvalidInput("manifest files must be sorted by path")
        if len(set(paths)) != len(paths):
            raise InvalidInput("manifest lists a path twice")

    @classmethod
    def of(cls, entries) -> "Manifest":
        return cls(tuple(sorted(entries, key=lambda e: e.path.encode("utf-8"))))

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def canonical_bytes(self) -> bytes:
        doc = {"version": 1, "files": [f.to_dict() for f in self.files]}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical_bytes()).hexdigest()

    @classmethod
    def from_json(cls, data: bytes | str) -> "Manifest":
        doc = json.loads(data)
        if doc.get("version") != 1:
            raise InvalidInput("unsupported manifest version")
        return cls(tuple(FileEntry.from_dict(d) for d in doc["files"]))
