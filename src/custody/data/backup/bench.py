"""Throughput of backups, restores and verification on one safetensors model (for `make bench`).

The model is one safetensors file of bf16 tensors (random normal values, which zstd shrinks by
about a fifth, like real checkpoints) with a few small norm-like tensors among large matrices.
The "fine-tune" rewrites every tenth layer with new values and appends one tensor, so the
header changes and most tensors move to new offsets. Page caches of the source and of the
repository's objects are dropped before each timed step, so reads come from the disk.

Run alone: `python -m custody.data.backup.bench --size 1073741824 --work /tmp/bench`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import time
import uuid
from pathlib import Path

import numpy as np

from custody.data.backup.backup import WORKERS, backup, backup_replica
from custody.data.backup.keys import derive
from custody.data.backup.repository import Repository
from custody.data.backup.restore import restore_to_replica
from custody.data.backup.verify import verify
from custody.data.ingest import collect_sources, seal_into_zone
from custody.data.zones import ZoneStorage

__all__ = ["throughput"]

MiB = 1 << 20
BIG_TENSOR = 48 * MiB
SMALL_TENSOR = 16 * 1024


def _layout(size: int) -> list[tuple[str, int]]:
    """(name, bytes) of tensors adding up to about `size` bytes: large matrices, each followed
    by a small norm vector, the last matrix taking what is left."""
    big = max(2 * MiB, min(BIG_TENSOR, size // 8)) & ~1
    tensors: list[tuple[str, int]] = []
    left, i = size, 0
    while left > big + SMALL_TENSOR:
        tensors += [(f"model.layers.{i}.weight", big), (f"model.layers.{i}.norm", SMALL_TENSOR)]
        left -= big + SMALL_TENSOR
        i += 1
    tensors.append(("lm_head.weight", max(2, left & ~1)))
    return tensors


def _bf16(seed: int, nbytes: int) -> bytes:
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(nbytes // 2, dtype=np.float32) * np.float32(0.02)
    return (values.view(np.uint32) >> 16).astype(np.uint16).tobytes()


def _write_model(path: Path, tensors: list[tuple[str, int, int]]) -> None:
    """A safetensors file of BF16 tensors (name, bytes, seed of its values), written tensor by tensor."""
    header: dict[str, dict[str, object]] = {}
    offset = 0
    for name, nbytes, _ in tensors:
        header[name] = {"dtype": "BF16", "shape": [nbytes // 2], "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        for _, nbytes, seed in tensors:
            fh.write(_bf16(seed, nbytes))


def _evict(path: Path) -> None:
    """Drop a file's (or every file below a folder's) pages from the page cache."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fdatasync(fd) if f.stat().st_size else None
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _mb_s(nbytes: int, seconds: float) -> float:
    return round(nbytes / seconds / 1e6, 1) if seconds > 0 else 0.0


def throughput(work: Path, size: int) -> dict:
    """Backup, second backup after a fine-tune, restore and verify --read-data of one model.

    Returns MB/s (10^6 bytes per second of plaintext) for the first backup, the restore and the
    read-data verification, and for the second backup the bytes it added against the bytes the
    fine-tune changed (rewritten tensors, the added tensor, and the new header).
    """
    work = Path(work)
    if work.exists():
        shutil.rmtree(work)
    (work / "model").mkdir(parents=True)
    model = work / "model" / "model.safetensors"
    layout = _layout(size)
    tensors = [(name, nbytes, i) for i, (name, nbytes) in enumerate(layout)]
    _write_model(model, tensors)
    logical = model.stat().st_size

    zone = ZoneStorage((work / "backup-zone").as_uri())
    repo = Repository(zone, "bench", derive(os.urandom(32), "bench"))
    _evict(model)
    first = backup(collect_sources(model.parent), repo)

    # The fine-tune: every tenth tensor gets new values, one tensor is appended.
    header_before = _header_len(model)
    # Every tenth layer (its matrix and its norm) gets new values: 10% of the tensors by count
    # and about 10% of the bytes.
    changed = [(name, nbytes, seed + 10_000 if (i // 2) % 10 == 0 and name != "lm_head.weight" else seed)
               for i, (name, nbytes, seed) in enumerate(tensors)]
    added = ("model.extra_adapter.weight", max(2, (size // 50) & ~1), 99_999)
    changed.append(added)
    _write_model(model, changed)
    header_after = _header_len(model)
    rewritten = sum(n for (_, n, s0), (_, _, s1) in zip(tensors, changed, strict=False) if s0 != s1)
    bytes_changed = rewritten + added[1] + header_after
    _evict(model)
    second = backup(collect_sources(model.parent), repo)

    # How the service backs up a registered model: from its sealed primary replica, into a fresh
    # repository (decrypting in memory, checking every file against the manifest).
    prod = ZoneStorage((work / "prod-zone").as_uri())
    replica, key, dek = str(uuid.uuid4()), str(uuid.uuid4()), os.urandom(32)
    registered = seal_into_zone(collect_sources(model.parent), prod, replica, key, dek)
    _evict(work / "prod-zone")
    other = Repository(ZoneStorage((work / "backup-zone-2").as_uri()), "bench-2", derive(os.urandom(32), "bench-2"))
    from_replica = backup_replica(prod, replica, key, dek, registered.manifest, other)
    shutil.rmtree(work / "backup-zone-2")
    shutil.rmtree(work / "prod-zone")

    dst = ZoneStorage((work / "restore-zone").as_uri())
    _evict(work / "backup-zone")
    restored = restore_to_replica(repo, second.manifest, dst, str(uuid.uuid4()), str(uuid.uuid4()), os.urandom(32))
    _evict(work / "backup-zone")
    t0 = time.perf_counter()
    checked = verify(repo, second.manifest, read_data=True)
    verify_s = time.perf_counter() - t0

    return {
        "model_bytes": logical,
        "tensors": len(tensors),
        "workers": WORKERS,
        "cpus": os.cpu_count(),
        "first_backup": {"seconds": round(first.seconds, 3), "mb_s": _mb_s(first.bytes_read, first.seconds),
                         "bytes_added": first.bytes_added, "chunks": first.chunks_new + first.chunks_reused},
        "second_backup": {"seconds": round(second.seconds, 3), "mb_s": _mb_s(second.bytes_read, second.seconds),
                          "bytes_changed": bytes_changed, "bytes_added": second.bytes_added,
                          "added_over_changed": round(second.bytes_added / bytes_changed, 4),
                          "header_bytes_before": header_before, "header_bytes_after": header_after,
                          "chunks_new": second.chunks_new, "chunks_reused": second.chunks_reused},
        "first_backup_from_sealed_replica": {"seconds": round(from_replica.seconds, 3),
                                             "mb_s": _mb_s(from_replica.bytes_read, from_replica.seconds)},
        "restore": {"seconds": round(restored.seconds, 3), "mb_s": _mb_s(restored.bytes, restored.seconds)},
        "verify_read_data": {"seconds": round(verify_s, 3), "mb_s": _mb_s(second.manifest.logical_bytes, verify_s),
                             "bytes_read": checked.bytes_read},
        "repository_bytes": repo.stored_bytes(),
    }


def _header_len(path: Path) -> int:
    with open(path, "rb") as fh:
        return 8 + struct.unpack("<Q", fh.read(8))[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1 << 30)
    parser.add_argument("--work", type=Path, default=Path("bench/work/backup"))
    parser.add_argument("--keep", action="store_true", help="keep the work folder afterwards")
    args = parser.parse_args()
    result = throughput(args.work, args.size)
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
