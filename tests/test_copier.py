"""Copying a sealed replica into another zone under a fresh key: re-sealing, integrity, resume, full disks.

Source replicas are made by the real registration data plane; every check reads real files.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from custody.data import sealed
from custody.data.copier import CopyReport, copy_replica
from custody.data.ingest import collect_sources, seal_into_zone
from custody.data.replica_files import open_sealed, verify_replica
from custody.data.zones import ZoneStorage
from custody.domain.errors import CustodyError, IntegrityError, InvalidInput
from custody.domain.manifest import FileEntry, Manifest

SRC_REPLICA, SRC_KEY = str(uuid.UUID(int=1)), str(uuid.UUID(int=2))
DST_REPLICA, DST_KEY = str(uuid.UUID(int=3)), str(uuid.UUID(int=4))
SRC_DEK, DST_DEK = bytes(range(32)), bytes(range(100, 132))
RECORD = sealed.DEFAULT_CHUNK_SIZE + sealed.TAG_SIZE
HEADER = 4096  # every path here fits the first 4 KiB block
SIZES = {"big.bin": 10 * 2**20, "mid.bin": 9 * 2**20, "part.bin": 5 * 2**20, "config.json": 321,
         "sub/tokenizer.txt": 4097, "empty.txt": 0}
CHUNKS = {"big.bin": 3, "mid.bin": 3, "part.bin": 2, "config.json": 1, "sub/tokenizer.txt": 1, "empty.txt": 1}


@dataclass
class Source:
    zone: ZoneStorage
    root: Path
    manifest: Manifest
    plain: dict[str, bytes]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Source:
    base = tmp_path_factory.mktemp("copier-src")
    rng = np.random.default_rng(7)
    plain = {name: rng.bytes(size) for name, size in SIZES.items()}
    for name, data in plain.items():
        (base / "model" / name).parent.mkdir(parents=True, exist_ok=True)
        (base / "model" / name).write_bytes(data)
    zone = ZoneStorage((base / "zone").as_uri())
    report = seal_into_zone(collect_sources(base / "model"), zone, SRC_REPLICA, SRC_KEY, SRC_DEK)
    return Source(zone, base / "zone", report.manifest, plain)


@pytest.fixture
def source(pristine: Source, tmp_path: Path) -> Source:
    """A private copy of the source zone, so a test may tamper with it."""
    shutil.copytree(pristine.root, tmp_path / "src")
    return Source(ZoneStorage((tmp_path / "src").as_uri()), tmp_path / "src", pristine.manifest, pristine.plain)


@pytest.fixture
def dst(tmp_path: Path) -> ZoneStorage:
    return ZoneStorage((tmp_path / "dst").as_uri())


def copy(source: Source, dst: ZoneStorage, manifest: Manifest | None = None, **kw: object) -> CopyReport:
    return copy_replica(source.zone, SRC_REPLICA, SRC_KEY, SRC_DEK, manifest or source.manifest,
                        dst, DST_REPLICA, DST_KEY, DST_DEK, **kw)  # type: ignore[arg-type]


def src_file(source: Source, name: str) -> Path:
    return source.root / "replicas" / SRC_REPLICA / f"{name}.sealed"


def dst_file(dst: ZoneStorage, name: str) -> Path:
    return Path(dst.root) / "replicas" / DST_REPLICA / f"{name}.sealed"


def decrypted(zone: ZoneStorage, replica: str, key: str, name: str, dek: bytes) -> bytes:
    with open_sealed(zone, replica, key, name, dek) as reader:
        return b"".join(reader.iter_chunks())


def check_destination(source: Source, dst: ZoneStorage) -> None:
    """Every chunk authenticates under the new key and the plaintext is the original's."""
    report = verify_replica(dst, DST_REPLICA, DST_KEY, source.manifest, DST_DEK)
    assert report.chunks == sum(CHUNKS.values())
    for name, data in source.plain.items():
        assert decrypted(dst, DST_REPLICA, DST_KEY, name, DST_DEK) == data, name


def opens_with(path: Path, dek: bytes) -> bool:
    data = path.read_bytes()
    try:
        sealed.SealedReader(lambda off, n: data[off: off + n], len(data), dek).verify()
    except IntegrityError:
        return False
    return True


def test_copy_reseals_every_file_under_the_new_key(source: Source, dst: ZoneStorage) -> None:
    seen: list[int] = []
    report = copy(source, dst, progress=seen.append)
    assert (report.files, report.bytes, report.resumed_chunks) == (6, sum(SIZES.values()), 0)
    assert sum(seen) == report.bytes and report.seconds > 0
    assert report.bytes_sealed == sum(dst_file(dst, n).stat().st_size for n in SIZES)
    check_destination(source, dst)
    probe = source.plain["big.bin"][:64]
    for name in SIZES:
        new, old = dst_file(dst, name), src_file(source, name)
        header = sealed.SealedHeader.parse(lambda off, n, b=new.read_bytes(): b[off: off + n])
        assert (str(header.replica_id), str(header.key_id), header.path) == (DST_REPLICA, DST_KEY, name)
        assert new.read_bytes()[HEADER:] != old.read_bytes()[HEADER:]  # fresh salt: new ciphertext
        assert opens_with(new, DST_DEK) and not opens_with(new, SRC_DEK), name
        assert opens_with(old, SRC_DEK) and not opens_with(old, DST_DEK), name
        assert probe not in new.read_bytes()
    # A destination file does not pass for the source replica either, whatever the key.
    data = dst_file(dst, "big.bin").read_bytes()
    with pytest.raises(IntegrityError, match=f"expected {SRC_REPLICA}"):
        sealed.SealedReader(lambda off, n: data[off: off + n], len(data), DST_DEK,
                            expect_replica=uuid.UUID(SRC_REPLICA))


def test_tampered_or_missing_source_names_file_and_chunk(source: Source, dst: ZoneStorage) -> None:
    path = src_file(source, "big.bin")
    data = bytearray(path.read_bytes())
    data[HEADER + RECORD + 100] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"big\.bin: chunk 1 failed authentication"):
        copy(source, dst)
    data[HEADER + RECORD + 100] ^= 0x01
    path.write_bytes(bytes(data[:HEADER + 2 * RECORD]))  # cut at a chunk boundary: chunk 1 is not final
    with pytest.raises(IntegrityError, match=r"big\.bin"):
        copy(source, dst)
    path.write_bytes(bytes(data))
    shutil.copy(src_file(source, "mid.bin"), src_file(source, "part.bin"))  # a valid file, wrong path
    with pytest.raises(IntegrityError, match=r"mid\.bin.*different path.*part\.bin"):
        copy(source, dst)
    src_file(source, "part.bin").unlink()
    with pytest.raises(IntegrityError, match=r"part\.bin: sealed file is missing"):
        copy(source, dst)


def test_manifest_mismatch(source: Source, dst: ZoneStorage) -> None:
    def changed(name: str, **kw: object) -> Manifest:
        files = [FileEntry(f.path, int(kw.get("size", f.size)), str(kw.get("sha256", f.sha256)))  # type: ignore[arg-type]
                 if f.path == name else f for f in source.manifest.files]
        return Manifest(tuple(files))

    with pytest.raises(IntegrityError, match=r"mid\.bin: SHA-256 .* does not match the manifest"):
        copy(source, dst, changed("mid.bin", sha256="0" * 64))
    with pytest.raises(IntegrityError, match=r"config\.json: source holds 321 bytes, the manifest says 320"):
        copy(source, dst, changed("config.json", size=320))


def test_resume_keeps_authenticated_chunks_and_drops_the_rest(source: Source, dst: ZoneStorage) -> None:
    assert copy(source, dst).resumed_chunks == 0
    big, mid, part = (dst_file(dst, n) for n in ("big.bin", "mid.bin", "part.bin"))
    os.truncate(big, HEADER + RECORD + 1000)  # killed in the middle of record 1
    os.truncate(mid, HEADER + 2 * RECORD)  # killed at a record boundary
    with part.open("ab") as fh:  # a complete file with garbage after it
        fh.write(os.urandom(5000))
    prefixes = {big: big.read_bytes()[:HEADER + RECORD], mid: mid.read_bytes(),
                part: part.read_bytes()[:HEADER + RECORD]}
    untouched = {n: dst_file(dst, n).stat().st_mtime_ns for n in ("config.json", "sub/tokenizer.txt", "empty.txt")}

    seen: list[int] = []
    report = copy(source, dst, progress=seen.append)
    assert report.resumed_chunks == 1 + 2 + 1 + 3  # kept records, plus the three complete small files
    assert sum(seen) == report.bytes
    for path, prefix in prefixes.items():
        assert path.read_bytes().startswith(prefix), path  # same header, same records
    assert {n: dst_file(dst, n).stat().st_mtime_ns for n in untouched} == untouched
    check_destination(source, dst)

    # A finished copy run again writes nothing and keeps every chunk.
    stamps = {n: dst_file(dst, n).stat().st_mtime_ns for n in SIZES}
    assert copy(source, dst).resumed_chunks == sum(CHUNKS.values())
    assert {n: dst_file(dst, n).stat().st_mtime_ns for n in SIZES} == stamps


KILLED_COPY = """
import os, signal, sys
from custody.data.copier import copy_replica
from custody.data.zones import ZoneStorage
from custody.domain.manifest import Manifest
src, dst, manifest, limit = sys.argv[1], sys.argv[2], Manifest.from_json(sys.argv[3]), int(sys.argv[4])
done = 0
def progress(n):
    global done
    done += n
    if done >= limit:
        os.kill(os.getpid(), signal.SIGKILL)
copy_replica(ZoneStorage(src), {src_ids}, Manifest.from_json(sys.argv[3]), ZoneStorage(dst), {dst_ids}, progress)
"""


def test_resume_after_the_process_is_killed(source: Source, dst: ZoneStorage) -> None:
    """A real SIGKILL part-way through; running the copy again finishes it from what is in place."""
    script = KILLED_COPY.format(src_ids=repr((SRC_REPLICA, SRC_KEY, SRC_DEK))[1:-1],
                                dst_ids=repr((DST_REPLICA, DST_KEY, DST_DEK))[1:-1])
    killed = subprocess.run([sys.executable, "-c", script, source.zone.url, dst.url,
                             source.manifest.canonical_bytes().decode(), str(3 * RECORD)], timeout=60)
    assert killed.returncode == -signal.SIGKILL
    report = copy(source, dst)
    assert 0 < report.resumed_chunks < sum(CHUNKS.values())
    check_destination(source, dst)


def test_resume_steps_back_past_a_record_that_does_not_authenticate(source: Source, dst: ZoneStorage) -> None:
    copy(source, dst)
    big = dst_file(dst, "big.bin")
    data = bytearray(big.read_bytes()[:HEADER + 2 * RECORD + 10])
    data[HEADER + RECORD + 5] ^= 0x80  # record 1 was torn
    big.write_bytes(bytes(data))
    # Record 0 of big.bin, and every other file whole.
    assert copy(source, dst).resumed_chunks == 1 + sum(CHUNKS.values()) - CHUNKS["big.bin"]
    check_destination(source, dst)


def test_a_destination_file_with_another_header_is_started_over(source: Source, dst: ZoneStorage) -> None:
    copy(source, dst)
    shutil.copy(src_file(source, "big.bin"), dst_file(dst, "big.bin"))  # another replica's file
    dst_file(dst, "mid.bin").write_bytes(os.urandom(HEADER + RECORD))  # not a sealed file at all
    shutil.copy(dst_file(dst, "part.bin"), dst_file(dst, "config.json"))  # right ids, wrong path
    os.truncate(dst_file(dst, "config.json"), HEADER + RECORD)
    report = copy(source, dst)
    assert report.resumed_chunks == CHUNKS["part.bin"] + CHUNKS["sub/tokenizer.txt"] + CHUNKS["empty.txt"]
    check_destination(source, dst)


def test_unaligned_chunk_size_copies_and_resumes(tmp_path: Path, dst: ZoneStorage) -> None:
    """Records that are not block multiples go through the page cache, resume included."""
    (tmp_path / "m").mkdir()
    data = np.random.default_rng(3).bytes(10_000)
    (tmp_path / "m" / "w.bin").write_bytes(data)
    zone = ZoneStorage((tmp_path / "s").as_uri())
    manifest = seal_into_zone(collect_sources(tmp_path / "m"), zone, SRC_REPLICA, SRC_KEY, SRC_DEK,
                              chunk_size=1000).manifest
    source = Source(zone, tmp_path / "s", manifest, {"w.bin": data})
    assert copy(source, dst).resumed_chunks == 0
    os.truncate(dst_file(dst, "w.bin"), HEADER + 4 * 1016 + 7)
    assert copy(source, dst).resumed_chunks == 4
    assert decrypted(dst, DST_REPLICA, DST_KEY, "w.bin", DST_DEK) == data
    verify_replica(dst, DST_REPLICA, DST_KEY, manifest, DST_DEK)


def test_object_store_destination_restarts_unfinished_files(source: Source) -> None:
    dst = ZoneStorage(f"memory://copier-{uuid.uuid4().hex}")
    try:
        assert copy(source, dst).resumed_chunks == 0
        check_destination(source, dst)
        rel = dst.sealed_path(DST_REPLICA, "big.bin")
        dst.write_bytes(rel, dst.read_bytes(rel)[:HEADER + 2 * RECORD])
        assert copy(source, dst).resumed_chunks == sum(CHUNKS.values()) - CHUNKS["big.bin"]
        check_destination(source, dst)
    finally:
        dst.delete_tree("replicas")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_destination_is_one_line(source: Source, dst: ZoneStorage) -> None:
    """/dev/full answers every write with ENOSPC, exactly like a full disk."""
    target = dst_file(dst, "big.bin")
    target.parent.mkdir(parents=True)
    target.symlink_to("/dev/full")
    with pytest.raises(CustodyError) as err:
        copy(source, dst)
    assert not isinstance(err.value, IntegrityError)
    assert str(err.value) == "destination zone is full (writing big.bin)"


def test_unwritable_destination_is_one_line(source: Source, dst: ZoneStorage) -> None:
    Path(dst.root).mkdir(parents=True)
    (Path(dst.root) / "replicas").write_bytes(b"a file where a folder should be")
    with pytest.raises(CustodyError) as err:
        copy(source, dst)
    message = str(err.value)
    assert "writing to the destination zone failed" in message and "\n" not in message
    assert not isinstance(err.value, IntegrityError)


def test_refuses_copies_that_would_share_a_key_or_overwrite_the_source(source: Source, dst: ZoneStorage) -> None:
    with pytest.raises(InvalidInput, match="onto itself"):
        copy_replica(source.zone, SRC_REPLICA, SRC_KEY, SRC_DEK, source.manifest,
                     ZoneStorage(source.zone.url + "/"), SRC_REPLICA, DST_KEY, DST_DEK)
    with pytest.raises(InvalidInput, match="its own data key"):
        copy_replica(source.zone, SRC_REPLICA, SRC_KEY, SRC_DEK, source.manifest, dst, DST_REPLICA, SRC_KEY, DST_DEK)
    with pytest.raises(InvalidInput, match="its own data key"):
        copy_replica(source.zone, SRC_REPLICA, SRC_KEY, SRC_DEK, source.manifest, dst, DST_REPLICA, DST_KEY, SRC_DEK)
    with pytest.raises(InvalidInput, match="not a UUID"):
        copy_replica(source.zone, SRC_REPLICA, SRC_KEY, SRC_DEK, source.manifest, dst, "x", DST_KEY, DST_DEK)
    assert not Path(dst.root).exists()
