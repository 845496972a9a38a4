"""Data plane for a replica's sealed files once written: verify, read, delete.

Verification decrypts every chunk and recomputes every file's SHA-256 against the manifest the
control plane hands over; any mismatch names the file and, where it can, the chunk.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from uuid import UUID

from custody.data import sealed
from custody.data.zones import SEALED_SUFFIX, ZoneStorage
from custody.domain.errors import IntegrityError, NotFound
from custody.domain.manifest import Manifest


@dataclass(frozen=True, slots=True)
class VerifyReport:
    files: int
    bytes: int
    chunks: int


def open_sealed(zone: ZoneStorage, replica_id: str, key_id: str, relpath: str, dek: bytes):  # noqa: ANN201
    """A context manager giving a SealedReader over one sealed file of a replica."""
    from contextlib import contextmanager

    @contextmanager
    def _cm():  # noqa: ANN202
        with zone.reader(zone.sealed_path(replica_id, relpath)) as (read_at, size):
            yield sealed.SealedReader(
                read_at, size, dek, expect_replica=UUID(replica_id), expect_key=UUID(key_id), expect_path=relpath
            )

    return _cm()


def verify_replica(zone: ZoneStorage, replica_id: str, key_id: str, manifest: Manifest, dek: bytes) -> VerifyReport:
    expected = {zone.sealed_path(replica_id, f.path) for f in manifest.files}
    present = set(zone.files_under(zone.replica_dir(replica_id)))
    extra = sorted(p for p in present - expected if p.endswith(SEALED_SUFFIX))
    if extra:
        raise IntegrityError(f"replica {replica_id}: unexpected sealed file {extra[0]}")
    chunks = 0
    for entry in manifest.files:
        try:
            with open_sealed(zone, replica_id, key_id, entry.path, dek) as reader:
                if reader.plaintext_size != entry.size:
                    raise IntegrityError(
                        f"{entry.path}: sealed file holds {reader.plaintext_size} bytes, manifest says {entry.size}"
                    )
                hasher = hashlib.sha256()
                reader.verify(hasher)
                chunks += reader.chunk_count
        except NotFound:
            raise IntegrityError(f"{entry.path}: sealed file is missing from zone storage") from None
        if hasher.hexdigest() != entry.sha256:
            raise IntegrityError(f"{entry.path}: SHA-256 of the decrypted file does not match the manifest")
    return VerifyReport(files=len(manifest.files), bytes=manifest.total_size, chunks=chunks)


def delete_replica_files(zone: ZoneStorage, replica_id: str) -> None:
    zone.delete_tree(zone.replica_dir(replica_id))
