"""The backup repository's data plane: chunking, dedup, encryption, restore into a sealed replica,
verification, pruning, and what it does with damaged chunks and hostile snapshots.

Every test runs on real files in real zones (file:// folders, and an fsspec memory:// zone).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zstandard
from conftest import hf_model, write_safetensors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyfastcdc import FastCDC

from custody.data.backup import (
    PIECE_SIZE,
    FileChunks,
    Repository,
    SnapshotManifest,
    derive,
    iter_file,
    plan,
    restore_to_replica,
)
from custody.data.backup import repository as repo_format
from custody.data.backup import snapshot as snapshot_module
from custody.data.backup.backup import backup, backup_replica
from custody.data.backup.chunking import CDC_AVG, CDC_MAX, CDC_MIN, cdc_pieces
from custody.data.backup.prune import prune
from custody.data.backup.verify import verify
from custody.data.formats.safetensors import parse_header
from custody.data.ingest import collect_sources, seal_into_zone
from custody.data.replica_files import open_sealed
from custody.data.sealed import SealedReader
from custody.data.zones import ZoneStorage
from custody.domain.errors import IntegrityError, InvalidInput
from custody.domain.manifest import FileEntry, Manifest

MASTER = bytes(range(32))
REPO = "lineage-1"
DST_REPLICA, DST_KEY = str(uuid.UUID(int=11)), str(uuid.UUID(int=12))
DST_DEK = bytes(range(64, 96))
MiB = 1 << 20


def open_repo(root: Path | str, master: bytes = MASTER, repo_id: str = REPO) -> Repository:
    url = root if isinstance(root, str) else root.as_uri()
    return Repository(ZoneStorage(url), repo_id, derive(master, repo_id))


def chunk_path(root: Path, cid: str, repo_id: str = REPO) -> Path:
    return root / "repos" / repo_id / "chunks" / cid[:2] / cid


def read_model(root: Path) -> dict[str, bytes]:
    return {s.relpath: s.path.read_bytes() for s in collect_sources(root)}


def restored(zone: ZoneStorage, snap: SnapshotManifest, replica: str = DST_REPLICA) -> dict[str, bytes]:
    """Every file of a restored replica, opened with SealedReader under the destination key."""
    out = {}
    for f in snap.files:
        with zone.reader(zone.sealed_path(replica, f.path)) as (read_at, size):
            reader = SealedReader(read_at, size, DST_DEK, expect_replica=uuid.UUID(replica),
                                  expect_key=uuid.UUID(DST_KEY), expect_path=f.path)
            out[f.path] = b"".join(reader.iter_chunks())
    return out


def restore(repo: Repository, snap: SnapshotManifest, dst_root: Path | str):  # noqa: ANN201
    url = dst_root if isinstance(dst_root, str) else dst_root.as_uri()
    return restore_to_replica(repo, snap, ZoneStorage(url), DST_REPLICA, DST_KEY, DST_DEK)


@dataclass
class Backed:
    model: Path
    zone_root: Path
    snap: SnapshotManifest
    plain: dict[str, bytes]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Backed:
    base = tmp_path_factory.mktemp("backup")
    model = base / "model"
    hf_model(model, big=9 * MiB + 123)  # one tensor is cut into three aligned pieces
    (model / "optimizer.bin").write_bytes(np.random.default_rng(3).bytes(6 * MiB))  # content-defined
    (model / "empty.txt").write_bytes(b"")
    report = backup(collect_sources(model), open_repo(base / "zone"))
    return Backed(model, base / "zone", report.manifest, read_model(model))


@pytest.fixture
def backed(pristine: Backed, tmp_path: Path) -> Backed:
    """A private copy of the backup zone, so a test may damage it."""
    shutil.copytree(pristine.zone_root, tmp_path / "zone")
    return Backed(pristine.model, tmp_path / "zone", pristine.snap, pristine.plain)


# -- round trips ------------------------------------------------------------------------------


def test_round_trip_into_a_sealed_replica(pristine: Backed, tmp_path: Path) -> None:
    snap, repo = pristine.snap, open_repo(pristine.zone_root)
    assert [f.path for f in snap.files] == sorted(pristine.plain)
    assert snap.logical_bytes == sum(len(b) for b in pristine.plain.values())
    # The snapshot restores to exactly the manifest registration computes for the same files.
    registered = seal_into_zone(collect_sources(pristine.model), ZoneStorage((tmp_path / "reg").as_uri()),
                                str(uuid.UUID(int=1)), str(uuid.UUID(int=2)), bytes(32))
    assert snap.manifest() == registered.manifest

    seen: list[int] = []
    report = restore_to_replica(repo, snap, ZoneStorage((tmp_path / "dst").as_uri()), DST_REPLICA, DST_KEY,
                                DST_DEK, progress=seen.append)
    assert (report.files, report.bytes, sum(seen)) == (len(snap.files), snap.logical_bytes, snap.logical_bytes)
    assert restored(ZoneStorage((tmp_path / "dst").as_uri()), snap) == pristine.plain
    sealed_files = list((tmp_path / "dst" / "replicas" / DST_REPLICA).rglob("*.sealed"))
    assert report.bytes_sealed == sum(p.stat().st_size for p in sealed_files)
    # The replica opens through the same path every other replica does.
    with open_sealed(ZoneStorage((tmp_path / "dst").as_uri()), DST_REPLICA, DST_KEY, "config.json", DST_DEK) as r:
        assert b"".join(r.iter_chunks()) == pristine.plain["config.json"]

    for f in snap.files:
        assert b"".join(iter_file(repo, f)) == pristine.plain[f.path]
    checked = verify(repo, snap, read_data=True)
    assert checked.chunks_checked == checked.chunks_present == len(snap.chunk_ids())
    assert checked.files_checked == len(snap.files) and checked.bytes_read >= len(snap.chunk_ids()) * 38
    assert verify(repo, snap).chunks_checked == 0


def test_backup_from_a_sealed_replica(pristine: Backed, tmp_path: Path) -> None:
    """Backing up a registered model reads its sealed replica: the same chunks as from the plain
    files, the plaintext never on disk, and every file checked against the manifest."""
    src = ZoneStorage((tmp_path / "prod").as_uri())
    replica, key, dek = str(uuid.UUID(int=1)), str(uuid.UUID(int=2)), bytes(range(1, 33))
    registered = seal_into_zone(collect_sources(pristine.model), src, replica, key, dek)
    shutil.copytree(pristine.zone_root, tmp_path / "zone")
    repo = open_repo(tmp_path / "zone")
    seen: list[int] = []
    report = backup_replica(src, replica, key, dek, registered.manifest, repo, progress=seen.append)
    assert report.manifest == pristine.snap and (report.chunks_new, report.bytes_added) == (0, 0)
    assert sum(seen) == report.bytes_read == registered.manifest.total_size
    fresh = backup_replica(src, replica, key, dek, registered.manifest, open_repo(tmp_path / "other"))
    assert fresh.manifest == pristine.snap and fresh.chunks_new == len(pristine.snap.chunk_ids())

    with pytest.raises(IntegrityError, match=r"config\.json: sealed under key"):
        backup_replica(src, replica, str(uuid.UUID(int=3)), dek, registered.manifest, repo)
    wrong = Manifest(tuple(FileEntry(f.path, f.size, "0" * 64) if f.path == "config.json" else f
                           for f in registered.manifest.files))
    with pytest.raises(IntegrityError, match=r"config\.json: SHA-256 of the source plaintext does not match"):
        backup_replica(src, replica, key, dek, wrong, repo)
    sealed_file = tmp_path / "prod" / "replicas" / replica / "optimizer.bin.sealed"
    data = bytearray(sealed_file.read_bytes())
    data[len(data) // 2] ^= 1
    sealed_file.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"optimizer\.bin: chunk \d+ failed authentication"):
        backup_replica(src, replica, key, dek, registered.manifest, repo)
    sealed_file.unlink()
    with pytest.raises(IntegrityError, match=r"optimizer\.bin: sealed file is missing from source replica"):
        backup_replica(src, replica, key, dek, registered.manifest, repo)


def test_safetensors_pieces_follow_tensors(pristine: Backed) -> None:
    path = pristine.model / "model-00002-of-00002.safetensors"
    data = path.read_bytes()
    header = parse_header(lambda o, n: data[o: o + n], len(data))
    pieces = plan(lambda o, n: data[o: o + n], len(data))
    starts = {p.offset for p in pieces}
    assert pieces[0].offset == 0 and pieces[0].length == header.data_start
    assert all(header.absolute_range(name)[0] in starts for name in header.tensors)
    big_start = header.absolute_range("model.big")[0]
    assert [(p.offset - big_start, p.length) for p in pieces if p.offset >= big_start] == [
        (0, PIECE_SIZE), (PIECE_SIZE, PIECE_SIZE), (2 * PIECE_SIZE, 1 * MiB + 123)]
    entry = next(f for f in pristine.snap.files if f.path == path.name)
    assert [n for _, n in entry.chunks] == [p.length for p in pieces]


def test_memory_zone_round_trip(tmp_path: Path) -> None:
    hf_model(tmp_path / "model", seed=5)
    plain = read_model(tmp_path / "model")
    name = f"memory://custody-backup-test-{uuid.uuid4().hex}"
    repo = open_repo(name)
    try:
        report = backup(collect_sources(tmp_path / "model"), repo)
        assert report.chunks_new == len(report.manifest.chunk_ids()) and report.bytes_added == repo.stored_bytes()
        again = backup(collect_sources(tmp_path / "model"), repo)
        assert (again.bytes_added, again.chunks_new) == (0, 0)
        assert verify(repo, report.manifest, read_data=True).files_checked == len(plain)
        restore(repo, report.manifest, name + "-dst")
        assert restored(ZoneStorage(name + "-dst"), report.manifest) == plain
        cid = sorted(report.manifest.chunk_ids())[0]
        repo.zone.fs.rm_file(f"{repo.objects.base}/chunks/{cid[:2]}/{cid}")
        with pytest.raises(IntegrityError, match=f"chunk {cid[:12]} is missing"):
            verify(repo, report.manifest)
    finally:
        for url in (name, name + "-dst"):
            zone = ZoneStorage(url)
            zone.delete_tree("")


# -- deduplication ----------------------------------------------------------------------------


def test_fine_tune_adds_no_more_than_what_changed(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    sizes = [5 * MiB + 8, 1 * MiB, 64 * 1024, 9 * MiB, 3000, 2 * MiB, 4 * MiB, 700 * 1024, 6 * MiB + 4, 40_000] * 2
    tensors = {f"layers.{i}.w": rng.integers(0, 256, size=n, dtype=np.uint8) for i, n in enumerate(sizes)}
    model = tmp_path / "model" / "model.safetensors"
    write_safetensors(model, tensors, {"step": "1000"})
    repo = open_repo(tmp_path / "zone")
    first = backup(collect_sources(model.parent), repo)
    assert first.bytes_added > sum(sizes)  # random bytes: nothing compresses

    # The fine-tune: two of twenty tensors rewritten, one added, a new header, and the tensors
    # written in another order, so every unchanged tensor sits at a new offset.
    tuned = dict(tensors)
    for name in ("layers.3.w", "layers.16.w"):
        tuned[name] = rng.integers(0, 256, size=tensors[name].size, dtype=np.uint8)
    tuned["adapter.w"] = rng.integers(0, 256, size=3 * MiB + 5, dtype=np.uint8)
    order = list(tuned)
    rng.shuffle(order)
    write_safetensors(model, {k: tuned[k] for k in order}, {"step": "2000", "tuned": "yes"})
    data = model.read_bytes()
    header_bytes = 8 + struct.unpack("<Q", data[:8])[0]
    changed = header_bytes + tuned["layers.3.w"].nbytes + tuned["layers.16.w"].nbytes + tuned["adapter.w"].nbytes

    second = backup(collect_sources(model.parent), repo)
    assert second.bytes_added <= 1.1 * changed, (second.bytes_added, changed)
    assert second.bytes_added >= changed - header_bytes  # the new tensors were stored; the header JSON compresses
    unchanged = [n for n in tensors if n not in ("layers.3.w", "layers.16.w")]
    assert second.chunks_reused >= sum(-(-tensors[n].nbytes // PIECE_SIZE) for n in unchanged)
    assert verify(repo, second.manifest, read_data=True).files_checked == 1
    assert b"".join(iter_file(repo, second.manifest.files[0])) == data


def test_content_defined_chunks_survive_an_insertion(tmp_path: Path) -> None:
    blob = tmp_path / "model" / "weights.bin"
    blob.parent.mkdir()
    original = np.random.default_rng(5).bytes(14 * MiB)
    blob.write_bytes(original)
    repo = open_repo(tmp_path / "zone")
    first = backup(collect_sources(blob.parent), repo)
    n = len(first.manifest.files[0].chunks)
    assert n >= 6

    blob.write_bytes(os.urandom(1000) + original)
    second = backup(collect_sources(blob.parent), repo)
    assert second.chunks_new <= 2 and second.chunks_reused >= n - 2
    assert second.bytes_added <= CDC_MAX + 1000 + 100


def test_same_plaintext_in_two_repositories_gets_unrelated_ids(tmp_path: Path) -> None:
    a = open_repo(tmp_path / "zone", MASTER, "repo-a")
    b = open_repo(tmp_path / "zone", bytes(32), "repo-b")
    same_master = open_repo(tmp_path / "zone", MASTER, "repo-c")
    data = b"the same tensor bytes" * 1000
    ids = {r.chunk_id(data) for r in (a, b, same_master)}
    assert len(ids) == 3
    keys = derive(MASTER, "repo-a")
    assert len({keys.enc, keys.mac, derive(MASTER, "repo-c").enc}) == 3 and "enc" not in repr(keys)
    for r in (a, b):
        assert r.put(r.chunk_id(data), data) > 0
        assert r.put(r.chunk_id(data), data) == 0  # already present
        assert r.get(r.chunk_id(data)) == data
    # An object copied from one repository into the other does not open there.
    src = chunk_path(tmp_path / "zone", a.chunk_id(data), "repo-a")
    dst = chunk_path(tmp_path / "zone", b.chunk_id(data), "repo-b")
    shutil.copy(src, dst)
    with pytest.raises(IntegrityError, match=f"chunk {b.chunk_id(data)[:12]} failed authentication"):
        b.get(b.chunk_id(data))


def test_compression_only_where_it_pays(tmp_path: Path) -> None:
    repo = open_repo(tmp_path / "zone")
    noise = os.urandom(PIECE_SIZE)
    weights = (np.random.default_rng(1).standard_normal(MiB, dtype=np.float32).view(np.uint32) >> 16).astype(
        np.uint16).tobytes()  # bf16-like: zstd saves about a fifth
    assert repo.put(repo.chunk_id(noise), noise) == len(noise) + repo_format.OVERHEAD
    stored = repo.put(repo.chunk_id(weights), weights)
    assert stored < 0.9 * len(weights)
    assert repo.get(repo.chunk_id(weights)) == weights and repo.get(repo.chunk_id(noise)) == noise
    assert repo.stored_bytes() == stored + len(noise) + repo_format.OVERHEAD
    assert repo.delete([repo.chunk_id(noise), "0" * 64]) == len(noise) + repo_format.OVERHEAD
    assert repo.list_chunks() == {repo.chunk_id(weights)}
    with pytest.raises(InvalidInput, match="limit"):
        repo.put(repo.chunk_id(noise + b"x"), noise + b"x")


def test_decompression_is_bounded(tmp_path: Path) -> None:
    """A frame that would inflate past the limit is refused before any output is made, even when
    it authenticates (only a key holder could make one, but the bound holds regardless)."""
    repo = open_repo(tmp_path / "zone")
    cid = "ab" * 32
    bomb = zstandard.ZstdCompressor(level=3).compress(bytes(repo_format.MAX_PLAINTEXT + 1))
    nonce = os.urandom(12)
    body = repo._aead.encrypt(nonce, bomb, repo._aad(repo_format.FLAG_ZSTD, cid))
    path = chunk_path(tmp_path / "zone", cid)
    path.parent.mkdir(parents=True)
    path.write_bytes(repo_format.MAGIC + bytes([1, repo_format.FLAG_ZSTD]) + nonce + body)
    with pytest.raises(IntegrityError, match=f"chunk {cid[:12]} would decompress to an unbounded or oversized"):
        repo.get(cid)


# -- damage -----------------------------------------------------------------------------------


def some_chunks(b: Backed, n: int = 2) -> list[str]:
    """Chunks of the largest file (so a restore reaches them), in order."""
    f = max(b.snap.files, key=lambda f: f.size)
    return [cid for cid, _ in f.chunks][1: 1 + n]


def test_flipped_bit_is_caught_by_restore_and_read_data(backed: Backed, tmp_path: Path) -> None:
    cid = some_chunks(backed, 1)[0]
    path = chunk_path(backed.zone_root, cid)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    repo = open_repo(backed.zone_root)
    assert verify(repo, backed.snap).chunks_present == len(backed.snap.chunk_ids())  # presence only
    for action in (lambda: restore(repo, backed.snap, tmp_path / "dst"),
                   lambda: verify(repo, backed.snap, read_data=True),
                   lambda: verify(repo, backed.snap, subset=100)):
        with pytest.raises(IntegrityError, match=rf"\.safetensors: chunk {cid[:12]} failed authentication"):
            action()
    owner = next(f for f in backed.snap.files if cid in dict(f.chunks))
    with pytest.raises(IntegrityError, match=f"{owner.path}: chunk {cid[:12]}"):
        b"".join(iter_file(repo, owner))


def test_missing_chunk_is_caught_before_anything_is_restored(backed: Backed, tmp_path: Path) -> None:
    cid = some_chunks(backed, 1)[0]
    chunk_path(backed.zone_root, cid).unlink()
    repo = open_repo(backed.zone_root)
    for action in (lambda: restore(repo, backed.snap, tmp_path / "dst"),
                   lambda: verify(repo, backed.snap),
                   lambda: verify(repo, backed.snap, read_data=True)):
        with pytest.raises(IntegrityError, match=rf"\.safetensors: chunk {cid[:12]} is missing"):
            action()
    assert not (tmp_path / "dst").exists()
    with pytest.raises(IntegrityError, match=f"chunk {cid[:12]} is missing"):
        repo.get(cid)


def test_swapped_chunks_are_caught(backed: Backed, tmp_path: Path) -> None:
    a, b = some_chunks(backed, 2)
    pa, pb = chunk_path(backed.zone_root, a), chunk_path(backed.zone_root, b)
    tmp = pa.with_name("swap")
    pa.rename(tmp)
    pb.rename(pa)
    tmp.rename(pb)
    repo = open_repo(backed.zone_root)
    verify(repo, backed.snap)  # both present
    for action in (lambda: restore(repo, backed.snap, tmp_path / "dst"),
                   lambda: verify(repo, backed.snap, read_data=True)):
        with pytest.raises(IntegrityError, match=rf"chunk ({a[:12]}|{b[:12]}) failed authentication"):
            action()
    # Renaming one object onto the other's id: one is missing, the other is the wrong chunk.
    pb.rename(tmp)
    pa.rename(pb)
    tmp.rename(pa)  # swapped back
    assert verify(repo, backed.snap, read_data=True).files_checked == len(backed.snap.files)
    pa.rename(pb)
    with pytest.raises(IntegrityError, match=f"chunk {a[:12]} is missing"):
        verify(repo, backed.snap)
    with pytest.raises(IntegrityError, match=f"chunk {b[:12]} failed authentication"):
        repo.get(b)


def test_wrong_repository_key(backed: Backed, tmp_path: Path) -> None:
    wrong = open_repo(backed.zone_root, master=bytes(32))
    for action in (lambda: restore(wrong, backed.snap, tmp_path / "dst"),
                   lambda: verify(wrong, backed.snap),
                   lambda: backup(collect_sources(backed.model), wrong)):
        with pytest.raises(IntegrityError, match=f"repository {REPO} does not open with this key"):
            action()
    assert not (tmp_path / "dst").exists()
    # Without the key check object, every chunk still refuses the wrong key on its own.
    (backed.zone_root / "repos" / REPO / "keycheck").unlink()
    cid = some_chunks(backed, 1)[0]
    with pytest.raises(IntegrityError, match=f"chunk {cid[:12]} failed authentication"):
        wrong.get(cid)
    with pytest.raises(IntegrityError, match="failed authentication"):
        restore(wrong, backed.snap, tmp_path / "dst")


# -- interrupted backups and pruning ----------------------------------------------------------


class Killed(Exception):
    pass


def test_killed_backup_leaves_orphans_that_the_next_run_reuses_and_prune_removes(tmp_path: Path) -> None:
    model = tmp_path / "model"
    hf_model(model, seed=1, big=13 * MiB)
    zone_root = tmp_path / "zone"
    repo = open_repo(zone_root)

    pieces = 0

    def progress(n: int) -> None:
        nonlocal pieces
        pieces += 1
        if pieces == 4:
            raise Killed("backup killed")

    with pytest.raises(Killed):
        backup(collect_sources(model), repo, progress=progress)
    orphans = repo.list_chunks()
    assert len(orphans) >= 4

    # Before the next run the model changes (the big tensor is rewritten), so some orphans will
    # never be referenced; a write killed mid-object left a temporary behind as well.
    hf_model(model, seed=2, big=13 * MiB)
    stray = chunk_path(zone_root, "ab" * 32).with_name("ab" * 32 + ".tmp-123456")
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"half a chunk")
    assert repo.list_chunks() == orphans

    complete = backup(collect_sources(model), repo)
    needed = complete.manifest.chunk_ids()
    assert needed & orphans  # unchanged files' chunks from the killed run are reused
    assert complete.chunks_reused >= len(needed & orphans)
    unreferenced = orphans - needed
    assert unreferenced

    before = repo.stored_bytes()
    report = prune(repo, keep=needed)
    assert report.deleted == len(unreferenced) and report.strays == 1
    assert report.bytes_freed == before - repo.stored_bytes() + len(b"half a chunk")
    assert repo.list_chunks() == needed and not stray.exists()
    assert verify(repo, complete.manifest, read_data=True).files_checked == len(complete.manifest.files)
    assert prune(repo, keep=needed).deleted == 0


# -- hostile snapshots ------------------------------------------------------------------------


def good_doc() -> dict:
    return {"version": 1, "files": [
        {"path": "a.safetensors", "size": 10, "sha256": "1" * 64, "chunks": [["a" * 64, 4], ["b" * 64, 6]]},
        {"path": "b/c.json", "size": 0, "sha256": "2" * 64, "chunks": []},
    ]}


def mutate(**change: object) -> bytes:
    doc = good_doc()
    target = doc["files"][0]
    for key, value in change.items():
        if key.startswith("doc_"):
            doc[key[4:]] = value
        else:
            target[key] = value
    return json.dumps(doc).encode()


HOSTILE = {
    "not json": b"{not json",
    "not an object": b"[1, 2]",
    "duplicate key": b'{"version": 1, "version": 1, "files": []}',
    "NaN": b'{"version": NaN, "files": []}',
    "deep nesting": b'{"version": 1, "files": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "bad utf-8": b'{"version": 1, "files": [], "\xff": 1}',
    "wrong version": mutate(doc_version=2),
    "version as bool": mutate(doc_version=True),
    "extra key": mutate(doc_extra=1),
    "file extra key": mutate(owner="x"),
    "path traversal": mutate(path="../../etc/passwd"),
    "absolute path": mutate(path="/etc/passwd"),
    "path not a string": mutate(path=7),
    "size as float": mutate(size=10.0),
    "size as bool": mutate(size=True),
    "negative size": mutate(size=-1),
    "sizes do not add up": mutate(size=11),
    "bad sha256": mutate(sha256="G" * 64),
    "upper-case chunk id": mutate(chunks=[["A" * 64, 4], ["b" * 64, 6]]),
    "short chunk id": mutate(chunks=[["a" * 12, 4], ["b" * 64, 6]]),
    "empty piece": mutate(chunks=[["a" * 64, 0], ["b" * 64, 10]]),
    "oversized piece": mutate(size=PIECE_SIZE + 1, chunks=[["a" * 64, PIECE_SIZE + 1]]),
    "piece as triple": mutate(chunks=[["a" * 64, 4, 0], ["b" * 64, 6]]),
    "piece as object": mutate(chunks=[{"id": "a" * 64, "n": 10}]),
    "files not a list": mutate(doc_files={"a": 1}),
    "unsorted": json.dumps({"version": 1, "files": good_doc()["files"][::-1]}).encode(),
    "duplicate path": json.dumps({"version": 1, "files": [good_doc()["files"][0]] * 2}).encode(),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_snapshot_json_is_rejected(name: str) -> None:
    with pytest.raises(IntegrityError, match="snapshot manifest"):
        SnapshotManifest.from_json(HOSTILE[name])


def test_snapshot_json_is_canonical_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    snap = SnapshotManifest.from_json(json.dumps(good_doc(), indent=2).encode())
    assert snap.to_json() == json.dumps(good_doc(), sort_keys=True, separators=(",", ":")).encode()
    assert SnapshotManifest.from_json(snap.to_json()) == snap and snap.logical_bytes == 10
    assert snap.chunk_ids() == {"a" * 64, "b" * 64} and len(snap.digest) == 64
    monkeypatch.setattr(snapshot_module, "MAX_SNAPSHOT_BYTES", 100)
    with pytest.raises(IntegrityError, match="oversized"):
        SnapshotManifest.from_json(snap.to_json())
    monkeypatch.setattr(snapshot_module, "MAX_SNAPSHOT_BYTES", 1 << 20)
    monkeypatch.setattr(snapshot_module, "MAX_CHUNKS", 1)
    with pytest.raises(IntegrityError, match="more than 1 chunks"):
        SnapshotManifest.from_json(snap.to_json())
    with pytest.raises(InvalidInput):
        FileChunks("x", 3, "0" * 64, (("a" * 64, 2),))


def test_bad_arguments() -> None:
    with pytest.raises(InvalidInput, match="repository id"):
        derive(MASTER, "../other")
    with pytest.raises(InvalidInput, match="32 bytes"):
        derive(b"short", REPO)


# -- chunk plans ------------------------------------------------------------------------------


def safetensors_bytes(sizes: list[int], metadata: dict[str, str], pad: int) -> bytes:
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for i, n in enumerate(sizes):
        header[f"t{i}"] = {"dtype": "U8", "shape": [n], "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode() + b" " * pad
    return struct.pack("<Q", len(raw)) + raw + bytes(offset)


def check_cover(pieces: list, size: int) -> None:
    at = 0
    for p in pieces:
        assert p.offset == at and 1 <= p.length <= PIECE_SIZE
        at += p.length
    assert at == size


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.one_of(st.integers(0, 5000), st.integers(PIECE_SIZE - 2, 3 * PIECE_SIZE + 3)),
                      max_size=12),
       metadata=st.dictionaries(st.text(max_size=8), st.text(max_size=30), max_size=3),
       pad=st.integers(0, 16))
def test_safetensors_plans_cover_the_file_at_tensor_starts(sizes: list[int], metadata: dict[str, str],
                                                            pad: int) -> None:
    data = safetensors_bytes(sizes, metadata, pad)
    pieces = plan(lambda o, n: data[o: o + n], len(data))
    check_cover(pieces, len(data))
    header = parse_header(lambda o, n: data[o: o + n], len(data))
    starts = {p.offset for p in pieces}
    assert pieces[0].length == min(header.data_start, PIECE_SIZE)
    for name, info in header.tensors.items():
        if info.byte_length:
            first = header.data_start + info.begin
            assert all(first + k in starts for k in range(0, info.byte_length, PIECE_SIZE)), name


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), size=st.one_of(st.integers(0, 300_000), st.integers(300_000, 24 * MiB)),
       window=st.sampled_from([2 * CDC_MAX, 2 * CDC_MAX + 12345, 16 * MiB]))
def test_content_defined_plans_cover_any_bytes_whatever_the_window(seed: int, size: int, window: int) -> None:
    data = np.random.default_rng(seed).bytes(size)
    if size > 9:  # sometimes make the bytes look like a (broken) safetensors header: it falls back to CDC
        data = struct.pack("<Q", min(size - 8, 1000)) + b"{" + data[9:]
    pieces = plan(lambda o, n: data[o: o + n], len(data))
    check_cover(pieces, size)
    windowed = [p for p, _ in cdc_pieces(lambda o, n: data[o: o + n], size, window=window)]
    assert windowed == pieces
    whole = FastCDC(avg_size=CDC_AVG, min_size=CDC_MIN, max_size=CDC_MAX).cut_buf(data)
    assert [(p.offset, p.length) for p in pieces] == [(c.offset, c.length) for c in whole]
