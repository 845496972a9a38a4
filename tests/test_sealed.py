"""Tests for the sealed file format (custody.data.sealed)."""

from __future__ import annotations

import hashlib
import io
import struct
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custody.data.sealed import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    TAG_SIZE,
    ChunkCipher,
    SealedHeader,
    SealedReader,
    chunk_count,
    new_header,
    open_file,
    plaintext_size,
    seal_file,
    sealed_size,
)
from custody.domain.errors import IntegrityError, InvalidInput

# --- known-answer vector -------------------------------------------------------------------

KAT_DEK = bytes(range(32))
KAT_SALT = bytes(range(0x10, 0x20))
KAT_PREFIX = bytes.fromhex("a0a1a2a3a4a5a6")
KAT_REPLICA = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
KAT_KEY = uuid.UUID("ffeeddcc-bbaa-9988-7766-554433221100")
KAT_PATH = "model/layer.bin"
KAT_CHUNK = 64
KAT_PLAINTEXT = bytes((i * 7 + 3) % 256 for i in range(150))
KAT_SEALED_HEX = (
    # header: magic, version, chunk_size, replica_id, key_id, salt, prefix, path_len, path,
    # then zero padding to 4096 bytes (85 + 4011)
    "435553545345414c" "01" "00000040"
    "00112233445566778899aabbccddeeff" "ffeeddccbbaa99887766554433221100"
    "101112131415161718191a1b1c1d1e1f" "a0a1a2a3a4a5a6" "000f" "6d6f64656c2f6c617965722e62696e"
    + "00" * 4011 +
    # chunk 0 (64 + 16)
    "3f9555e1a1e8d68c4cde692351a55b116e5f81fa8cd4fb531b8100d9d3506efd"
    "16203f35498d4c16fd76189ab2ae29aa7ecdab946e2b5e187ab167fdf0baf644"
    "0197057844528daa48de8b2f946aba27"
    # chunk 1 (64 + 16)
    "be3e320e93a5fafb7496934b9676ab3eca7af8652b5af3c623f94a92a2c4cb84"
    "8a4b7de0710937a53af2c3bf40842ed9256b820e55452fa816980fc9c7ba0ab1"
    "954788e6e1c1f9ad65995be5d1757602"
    # chunk 2, final (22 + 16)
    "a93422fe6d242a9d15b8464935340f04105ca9a2ee9fb4c980545e5399fe3c54f0905ac0f9aa"
)


def kat_header() -> SealedHeader:
    return SealedHeader(
        chunk_size=KAT_CHUNK,
        replica_id=KAT_REPLICA,
        key_id=KAT_KEY,
        salt=KAT_SALT,
        nonce_prefix=KAT_PREFIX,
        path=KAT_PATH,
    )


def test_known_answer_vector() -> None:
    out = io.BytesIO()
    seal_file(io.BytesIO(KAT_PLAINTEXT), out, KAT_DEK, kat_header(), len(KAT_PLAINTEXT))
    assert out.getvalue().hex() == KAT_SEALED_HEX


def test_known_answer_vector_with_raw_primitives() -> None:
    """Decrypt the vector by hand from the format description, sharing no code with the module."""
    sealed = bytes.fromhex(KAT_SEALED_HEX)
    path = KAT_PATH.encode()
    header = (
        b"CUSTSEAL"
        + bytes([1])
        + struct.pack(">I", KAT_CHUNK)
        + KAT_REPLICA.bytes
        + KAT_KEY.bytes
        + KAT_SALT
        + KAT_PREFIX
        + struct.pack(">H", len(path))
        + path
    )
    header += bytes(4096 - len(header))  # zero padding: chunks start on a 4 KiB boundary
    assert sealed.startswith(header)
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=KAT_SALT, info=b"custody sealed v1").derive(KAT_DEK)
    aead = AESGCM(key)
    body = sealed[len(header) :]
    sizes = [64 + 16, 64 + 16, 22 + 16]
    assert sum(sizes) == len(body)
    plain = b""
    pos = 0
    for i, n in enumerate(sizes):
        last = i == len(sizes) - 1
        nonce = KAT_PREFIX + struct.pack(">I", i) + (b"\x01" if last else b"\x00")
        plain += aead.decrypt(nonce, body[pos : pos + n], header)
        pos += n
    assert plain == KAT_PLAINTEXT


def test_known_answer_vector_opens() -> None:
    sealed = bytes.fromhex(KAT_SEALED_HEX)
    reader = SealedReader(
        reader_at(sealed),
        len(sealed),
        KAT_DEK,
        expect_replica=KAT_REPLICA,
        expect_key=KAT_KEY,
        expect_path=KAT_PATH,
    )
    assert reader.header == kat_header()
    assert reader.plaintext_size == 150
    assert reader.chunk_count == 3
    assert b"".join(reader.iter_chunks()) == KAT_PLAINTEXT


# --- helpers -------------------------------------------------------------------------------

DEK = bytes(range(100, 132))
REPLICA = uuid.UUID("11111111-2222-3333-4444-555555555555")
KEY = uuid.UUID("66666666-7777-8888-9999-000000000000")
PATH = "weights/shard-00001.safetensors"


def reader_at(data: bytes):
    def read_at(offset: int, length: int) -> bytes:
        return data[offset : offset + length]

    return read_at


def seal_bytes(
    plaintext: bytes, chunk_size: int = 64, dek: bytes = DEK, path: str = PATH
) -> tuple[bytes, SealedHeader]:
    header = new_header(REPLICA, KEY, path, chunk_size)
    out = io.BytesIO()
    seal_file(io.BytesIO(plaintext), out, dek, header, len(plaintext))
    return out.getvalue(), header


def open_bytes(sealed: bytes, dek: bytes = DEK, **expect) -> bytes:
    out = io.BytesIO()
    open_file(reader_at(sealed), len(sealed), dek, out, **expect)
    return out.getvalue()


def fully_verify(sealed: bytes, dek: bytes = DEK) -> None:
    SealedReader(reader_at(sealed), len(sealed), dek, authenticate_size=False).verify()


def chunk_bounds(sealed: bytes, header: SealedHeader) -> list[tuple[int, int]]:
    n = chunk_count(plaintext_size(len(sealed), header), header.chunk_size)
    full = header.chunk_size + TAG_SIZE
    return [(header.size + i * full, min(len(sealed), header.size + (i + 1) * full)) for i in range(n)]


chunk_sizes = st.integers(MIN_CHUNK_SIZE, 160)


@st.composite
def sealed_files(draw, min_chunks: int = 0):
    """A plaintext of 0..~5 chunks (exact multiples drawn often) and its sealed bytes."""
    cs = draw(chunk_sizes)
    n = draw(
        st.one_of(
            st.integers(min_chunks * cs, 5 * cs + cs // 2),
            st.integers(max(min_chunks, 0), 5).map(lambda k: k * cs),
        ).filter(lambda n: n >= min_chunks * cs)
    )
    plaintext = draw(st.binary(min_size=n, max_size=n))
    sealed, header = seal_bytes(plaintext, cs)
    return plaintext, sealed, header


FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- sizes ---------------------------------------------------------------------------------


def test_default_chunk_is_four_mib_sealed() -> None:
    assert DEFAULT_CHUNK_SIZE + TAG_SIZE == 4 * 1024 * 1024


@pytest.mark.parametrize(
    ("size", "expected"), [(0, 1), (1, 1), (63, 1), (64, 1), (65, 2), (128, 2), (129, 3)]
)
def test_chunk_count(size: int, expected: int) -> None:
    assert chunk_count(size, 64) == expected


def test_exact_multiple_has_no_extra_empty_chunk() -> None:
    sealed, header = seal_bytes(bytes(128), 64)
    assert len(sealed) == header.size + 2 * (64 + TAG_SIZE)
    reader = SealedReader(reader_at(sealed), len(sealed), DEK)
    assert reader.chunk_count == 2
    assert reader.read_chunk(1) == bytes(64)


def test_empty_file_is_one_empty_final_chunk() -> None:
    sealed, header = seal_bytes(b"", 64)
    assert len(sealed) == header.size + TAG_SIZE
    assert open_bytes(sealed) == b""


@given(cs=chunk_sizes, size=st.integers(0, 2000))
def test_sealed_size_inverts(cs: int, size: int) -> None:
    header = new_header(REPLICA, KEY, PATH, cs)
    assert plaintext_size(sealed_size(size, header), header) == size


@given(cs=chunk_sizes, total=st.integers(0, 3000))
def test_impossible_sealed_sizes_refused(cs: int, total: int) -> None:
    header = new_header(REPLICA, KEY, PATH, cs)
    valid = {sealed_size(n, header) for n in range(0, 3000)}
    if total in valid:
        assert sealed_size(plaintext_size(total, header), header) == total
    else:
        with pytest.raises(IntegrityError):
            plaintext_size(total, header)


def test_specific_impossible_sizes() -> None:
    header = new_header(REPLICA, KEY, PATH, 64)
    full = 64 + TAG_SIZE
    for body in (0, 1, TAG_SIZE - 1, full + TAG_SIZE, full + 1, 2 * full + 5):
        with pytest.raises(IntegrityError):
            plaintext_size(header.size + body, header)


def test_bad_chunk_sizes_refused() -> None:
    for cs in (0, 63, MAX_CHUNK_SIZE + 1):
        with pytest.raises(InvalidInput):
            new_header(REPLICA, KEY, PATH, cs)
    new_header(REPLICA, KEY, PATH, MIN_CHUNK_SIZE)
    new_header(REPLICA, KEY, PATH, MAX_CHUNK_SIZE)


# --- round trips ---------------------------------------------------------------------------


@FAST
@given(sealed_files())
def test_round_trip(case) -> None:
    plaintext, sealed, header = case
    assert len(sealed) == sealed_size(len(plaintext), header)
    assert open_bytes(sealed, expect_replica=REPLICA, expect_key=KEY, expect_path=PATH) == plaintext
    reader = SealedReader(reader_at(sealed), len(sealed), DEK)
    assert reader.plaintext_size == len(plaintext)
    assert reader.chunk_count == chunk_count(len(plaintext), header.chunk_size)
    h = hashlib.sha256()
    reader.verify(h)
    assert h.digest() == hashlib.sha256(plaintext).digest()


@FAST
@given(sealed_files(), st.data())
def test_read_range_matches_slice(case, data) -> None:
    plaintext, sealed, _ = case
    reader = SealedReader(reader_at(sealed), len(sealed), DEK)
    offset = data.draw(st.integers(0, len(plaintext)))
    length = data.draw(st.integers(0, len(plaintext) - offset))
    assert reader.read_range(offset, length) == plaintext[offset : offset + length]


def test_read_range_bounds() -> None:
    sealed, _ = seal_bytes(bytes(100), 64)
    reader = SealedReader(reader_at(sealed), len(sealed), DEK)
    assert reader.read_range(100, 0) == b""
    for offset, length in ((-1, 1), (0, -1), (0, 101), (100, 1), (101, 0)):
        with pytest.raises(InvalidInput):
            reader.read_range(offset, length)
    for index in (-1, 2):
        with pytest.raises(InvalidInput):
            reader.read_chunk(index)


def test_read_range_reads_only_spanned_chunks() -> None:
    plaintext = bytes(range(256)) * 2
    sealed, header = seal_bytes(plaintext, 64)
    calls: list[tuple[int, int]] = []

    def read_at(offset: int, length: int) -> bytes:
        calls.append((offset, length))
        return sealed[offset : offset + length]

    reader = SealedReader(read_at, len(sealed), DEK, authenticate_size=False)
    calls.clear()
    assert reader.read_range(70, 60) == plaintext[70:130]
    full = 64 + TAG_SIZE
    assert calls == [(header.size + full, 2 * full)]  # chunks 1 and 2, one read


def test_chunk_cipher_is_usable_from_threads() -> None:
    header = new_header(REPLICA, KEY, PATH, 64)
    cipher = ChunkCipher(DEK, header)
    chunks = [bytes([i]) * 64 for i in range(64)]
    with ThreadPoolExecutor(4) as pool:
        sealed = list(pool.map(lambda i: cipher.seal(i, chunks[i], i == 63), range(64)))
        opened = list(pool.map(lambda i: cipher.open(i, sealed[i], i == 63), range(64)))
    assert sealed == [cipher.seal(i, chunks[i], i == 63) for i in range(64)]
    assert opened == chunks


def test_seal_into_and_open_into() -> None:
    header = new_header(REPLICA, KEY, PATH, 64)
    cipher = ChunkCipher(DEK, header)
    buf = bytearray(10 + 64 + TAG_SIZE)
    view = memoryview(buf)[10:]
    assert cipher.seal_into(0, b"a" * 64, False, view) == 64 + TAG_SIZE
    assert bytes(view) == cipher.seal(0, b"a" * 64, False)
    out = bytearray(64)
    assert cipher.open_into(0, bytes(view), False, out) == 64
    assert out == b"a" * 64
    with pytest.raises(InvalidInput):
        cipher.seal_into(0, b"a" * 64, False, bytearray(64))
    tampered = bytearray(view)
    tampered[0] ^= 1
    out = bytearray(b"\xff" * 64)
    with pytest.raises(IntegrityError, match=r": chunk 0 failed authentication$"):
        cipher.open_into(0, bytes(tampered), False, out)
    assert out == bytes(64)  # nothing unauthenticated left behind


def test_chunk_cipher_refuses_non_canonical_lengths() -> None:
    cipher = ChunkCipher(DEK, new_header(REPLICA, KEY, PATH, 64))
    with pytest.raises(InvalidInput):
        cipher.seal(0, bytes(63), False)  # short non-final chunk
    with pytest.raises(InvalidInput):
        cipher.seal(1, b"", True)  # empty final chunk after other chunks
    with pytest.raises(InvalidInput):
        cipher.seal(0, bytes(65), True)
    with pytest.raises(InvalidInput):
        cipher.seal(1 << 32, bytes(64), False)
    with pytest.raises(IntegrityError):
        cipher.open(0, bytes(TAG_SIZE + 63), False)


# --- tampering -----------------------------------------------------------------------------


@FAST
@given(sealed_files(), st.data())
def test_any_flipped_bit_is_detected(case, data) -> None:
    _, sealed, _ = case
    bit = data.draw(st.integers(0, len(sealed) * 8 - 1))
    tampered = bytearray(sealed)
    tampered[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(IntegrityError):
        fully_verify(bytes(tampered))
    with pytest.raises(IntegrityError):
        open_bytes(bytes(tampered))


def test_every_flipped_bit_is_detected_exhaustively() -> None:
    sealed = bytes.fromhex(KAT_SEALED_HEX)
    for bit in range(len(sealed) * 8):
        tampered = bytearray(sealed)
        tampered[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(IntegrityError):
            fully_verify(bytes(tampered), KAT_DEK)


@FAST
@given(sealed_files(), st.data())
def test_truncation_is_detected(case, data) -> None:
    _, sealed, _ = case
    cut = data.draw(st.integers(0, len(sealed) - 1))
    with pytest.raises(IntegrityError):
        fully_verify(sealed[:cut])
    with pytest.raises(IntegrityError):
        SealedReader(reader_at(sealed[:cut]), cut, DEK)  # size is authenticated on open


def test_truncation_at_every_length() -> None:
    sealed = bytes.fromhex(KAT_SEALED_HEX)
    for cut in range(len(sealed)):
        with pytest.raises(IntegrityError):
            fully_verify(sealed[:cut], KAT_DEK)


def test_truncation_at_chunk_boundary_names_the_new_last_chunk() -> None:
    sealed, header = seal_bytes(bytes(200), 64)
    bounds = chunk_bounds(sealed, header)
    cut = sealed[: bounds[1][1]]  # keep chunks 0 and 1, both sealed as non-final
    with pytest.raises(IntegrityError, match=rf"^{PATH}: chunk 1 failed authentication$"):
        SealedReader(reader_at(cut), len(cut), DEK)


def test_extra_trailing_bytes_are_detected() -> None:
    sealed, _ = seal_bytes(bytes(100), 64)
    for extra in (b"\x00", bytes(TAG_SIZE), bytes(64 + TAG_SIZE)):
        with pytest.raises(IntegrityError):
            fully_verify(sealed + extra)


@FAST
@given(sealed_files(min_chunks=2), st.data())
def test_swapping_chunks_is_detected(case, data) -> None:
    _, sealed, header = case
    bounds = chunk_bounds(sealed, header)
    # Swap two full chunks so the sealed size is unchanged and only authentication can tell.
    full_chunks = [i for i, (a, b) in enumerate(bounds) if b - a == header.chunk_size + TAG_SIZE]
    i, j = data.draw(st.lists(st.sampled_from(full_chunks), min_size=2, max_size=2, unique=True))
    pieces = [sealed[a:b] for a, b in bounds]
    pieces[i], pieces[j] = pieces[j], pieces[i]
    with pytest.raises(IntegrityError):
        fully_verify(sealed[: header.size] + b"".join(pieces))


@FAST
@given(sealed_files(min_chunks=2), st.data())
def test_duplicating_a_chunk_is_detected(case, data) -> None:
    _, sealed, header = case
    bounds = chunk_bounds(sealed, header)
    pieces = [sealed[a:b] for a, b in bounds]
    i = data.draw(st.integers(0, len(pieces) - 2))  # a full chunk
    j = data.draw(st.integers(0, len(pieces)))
    pieces.insert(j, pieces[i])
    with pytest.raises(IntegrityError):
        fully_verify(sealed[: header.size] + b"".join(pieces))
    # Overwriting a chunk with a copy of another keeps the size the same.
    pieces = [sealed[a:b] for a, b in bounds]
    k = data.draw(st.sampled_from([k for k in range(len(pieces)) if k != i]))
    pieces[k] = pieces[i]
    with pytest.raises(IntegrityError):
        fully_verify(sealed[: header.size] + b"".join(pieces))


@FAST
@given(sealed_files(min_chunks=2), st.data())
def test_dropping_a_chunk_is_detected(case, data) -> None:
    _, sealed, header = case
    bounds = chunk_bounds(sealed, header)
    pieces = [sealed[a:b] for a, b in bounds]
    del pieces[data.draw(st.integers(0, len(pieces) - 1))]
    with pytest.raises(IntegrityError):
        fully_verify(sealed[: header.size] + b"".join(pieces))


@FAST
@given(st.data())
def test_splicing_from_another_file_is_detected(data) -> None:
    cs = data.draw(chunk_sizes)
    size = data.draw(st.integers(cs + 1, 4 * cs))
    plain_a = data.draw(st.binary(min_size=size, max_size=size))
    plain_b = data.draw(st.binary(min_size=size, max_size=size))
    # Same DEK, ids, path and chunk size: only the random salt and prefix differ.
    sealed_a, header_a = seal_bytes(plain_a, cs)
    sealed_b, header_b = seal_bytes(plain_b, cs)
    bounds = chunk_bounds(sealed_a, header_a)
    i = data.draw(st.integers(0, len(bounds) - 1))
    a, b = bounds[i]
    spliced = sealed_a[:a] + sealed_b[a:b] + sealed_a[b:]
    with pytest.raises(IntegrityError, match=rf"^{PATH}: chunk {i} failed authentication$"):
        fully_verify(spliced)
    # The other way round: file B's header on file A's body.
    with pytest.raises(IntegrityError):
        fully_verify(header_b.to_bytes() + sealed_a[header_a.size :])


@FAST
@given(sealed_files())
def test_wrong_dek_is_detected(case) -> None:
    _, sealed, _ = case
    with pytest.raises(IntegrityError):
        fully_verify(sealed, bytes(32))
    with pytest.raises(IntegrityError):
        open_bytes(sealed, DEK[:-1] + bytes([DEK[-1] ^ 1]))


@FAST
@given(sealed_files(), st.uuids())
def test_header_with_other_replica_is_detected(case, other) -> None:
    _, sealed, header = case
    if other == header.replica_id:
        return
    forged = SealedHeader(
        chunk_size=header.chunk_size,
        replica_id=other,
        key_id=header.key_id,
        salt=header.salt,
        nonce_prefix=header.nonce_prefix,
        path=header.path,
    )
    with pytest.raises(IntegrityError):
        fully_verify(forged.to_bytes() + sealed[header.size :])


def test_header_with_other_path_is_detected() -> None:
    sealed, header = seal_bytes(bytes(100), 64, path="a/b.bin")
    forged = SealedHeader(
        chunk_size=64,
        replica_id=header.replica_id,
        key_id=header.key_id,
        salt=header.salt,
        nonce_prefix=header.nonce_prefix,
        path="a/c.bin",
    )
    with pytest.raises(IntegrityError, match=r"^a/c\.bin: chunk \d failed authentication$"):
        fully_verify(forged.to_bytes() + sealed[header.size :])


def test_expectations_checked() -> None:
    sealed, _ = seal_bytes(bytes(100), 64)
    other = uuid.UUID(int=1)
    for expect in ({"expect_replica": other}, {"expect_key": other}, {"expect_path": "other.bin"}):
        with pytest.raises(IntegrityError, match=rf"^{PATH}: "):
            SealedReader(reader_at(sealed), len(sealed), DEK, **expect)
        with pytest.raises(IntegrityError):
            open_bytes(sealed, **expect)
    assert open_bytes(sealed, expect_replica=REPLICA, expect_key=KEY, expect_path=PATH) == bytes(100)


def test_error_messages_name_path_and_chunk() -> None:
    sealed, header = seal_bytes(bytes(300), 64)
    bounds = chunk_bounds(sealed, header)
    tampered = bytearray(sealed)
    tampered[bounds[3][0] + 5] ^= 0x80
    reader = SealedReader(reader_at(bytes(tampered)), len(tampered), DEK)
    assert reader.read_chunk(2) == bytes(64)
    with pytest.raises(IntegrityError) as info:
        reader.read_chunk(3)
    assert str(info.value) == f"{PATH}: chunk 3 failed authentication"
    with pytest.raises(IntegrityError, match=rf"^{PATH}: chunk 3 failed authentication$"):
        reader.read_range(100, 150)
    with pytest.raises(IntegrityError, match=rf"^{PATH}: chunk 3 failed authentication$"):
        reader.verify()


def test_key_material_not_in_errors() -> None:
    sealed, _ = seal_bytes(bytes(100), 64)
    wrong = bytes(range(200, 232))
    with pytest.raises(IntegrityError) as info:
        fully_verify(sealed, wrong)
    text = str(info.value)
    for secret in (wrong, DEK):
        assert secret.hex() not in text and repr(secret) not in text
    with pytest.raises(InvalidInput) as bad:
        ChunkCipher(DEK[:31], new_header(REPLICA, KEY, PATH))
    assert DEK[:31].hex() not in str(bad.value) and repr(DEK[:31]) not in str(bad.value)


# --- header parsing ------------------------------------------------------------------------


def test_header_round_trip_and_size() -> None:
    header = new_header(REPLICA, KEY, "dir/ünïcode.bin", 1000)
    raw = header.to_bytes()
    assert header.size == len(raw) == 4096  # 70 + 17, zero-padded to the 4 KiB boundary
    assert raw[70 + 17:] == bytes(4096 - 87)
    assert SealedHeader.parse(reader_at(raw + b"trailing")) == header


def test_new_header_is_random() -> None:
    a, b = new_header(REPLICA, KEY, PATH), new_header(REPLICA, KEY, PATH)
    assert a.salt != b.salt and a.nonce_prefix != b.nonce_prefix
    assert a.chunk_size == DEFAULT_CHUNK_SIZE and a.version == 1


@pytest.mark.parametrize(
    "path", ["..", "../x", "a/../b", "/abs/path", "/", "", "a//b", "./a", "a/", "a\\b", "a\x00b", "x" * 1025]
)
def test_bad_paths_refused(path: str) -> None:
    with pytest.raises(InvalidInput):
        new_header(REPLICA, KEY, path)


def _raw_header(**over) -> bytes:
    fields = {
        "magic": b"CUSTSEAL",
        "version": 1,
        "chunk_size": 64,
        "replica": REPLICA.bytes,
        "key": KEY.bytes,
        "salt": bytes(16),
        "prefix": bytes(7),
        "path": b"a.bin",
    }
    fields.update(over)
    path = fields["path"]
    path_len = over.get("path_len", len(path))
    return (
        struct.pack(
            ">8sBI16s16s16s7sH",
            fields["magic"],
            fields["version"],
            fields["chunk_size"],
            fields["replica"],
            fields["key"],
            fields["salt"],
            fields["prefix"],
            path_len,
        )
        + path
    )


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"magic": b"CUSTSEAX"}, "bad magic"),
        ({"version": 2}, "unsupported version 2"),
        ({"chunk_size": 63}, "chunk size"),
        ({"chunk_size": MAX_CHUNK_SIZE + 1}, "chunk size"),
        ({"path": b""}, "path length"),
        ({"path_len": 1025, "path": b"a" * 1025}, "path length"),
        ({"path": b"../x"}, "malformed path"),
        ({"path": b"/x"}, "malformed path"),
        ({"path": b"\xff\xfe"}, "malformed path"),
        ({"path_len": 50}, "truncated"),
    ],
)
def test_malformed_headers(over: dict, message: str) -> None:
    with pytest.raises(IntegrityError, match=message):
        SealedHeader.parse(reader_at(_raw_header(**over)))


def test_truncated_fixed_header() -> None:
    raw = _raw_header()
    for cut in (0, 8, 69):
        with pytest.raises(IntegrityError, match="truncated"):
            SealedHeader.parse(reader_at(raw[:cut]))


def test_header_parse_is_bounded() -> None:
    raw = _raw_header(path_len=0xFFFF, path=b"")
    asked: list[int] = []

    def read_at(offset: int, length: int) -> bytes:
        asked.append(length)
        return (raw + bytes(1 << 20))[offset : offset + length]

    with pytest.raises(IntegrityError):
        SealedHeader.parse(read_at)
    assert max(asked) <= 70 + 1024


# --- seal_file -----------------------------------------------------------------------------


class TrickleReader(io.RawIOBase):
    """Returns at most 7 bytes per read, like a pipe."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self._buf.read(min(n, 7) if n >= 0 else 7)


def test_seal_file_handles_short_reads() -> None:
    plaintext = bytes(range(200))
    header = new_header(REPLICA, KEY, PATH, 64)
    a, b = io.BytesIO(), io.BytesIO()
    seal_file(TrickleReader(plaintext), a, DEK, header, 200)
    seal_file(io.BytesIO(plaintext), b, DEK, header, 200)
    assert a.getvalue() == b.getvalue()
    assert open_bytes(a.getvalue()) == plaintext


def test_seal_file_size_mismatch() -> None:
    header = new_header(REPLICA, KEY, PATH, 64)
    with pytest.raises(IntegrityError, match="ended early"):
        seal_file(io.BytesIO(bytes(100)), io.BytesIO(), DEK, header, 101)
    with pytest.raises(IntegrityError, match="longer"):
        seal_file(io.BytesIO(bytes(100)), io.BytesIO(), DEK, header, 99)
    with pytest.raises(InvalidInput):
        seal_file(io.BytesIO(bytes(100)), io.BytesIO(), b"short", header, 100)


def test_numpy_integers_accepted_as_offsets() -> None:
    import numpy as np

    plaintext = bytes(range(200))
    sealed, _ = seal_bytes(plaintext, 64)
    reader = SealedReader(reader_at(sealed), len(sealed), DEK)
    assert reader.read_range(np.int64(10), np.uint32(100)) == plaintext[10:110]
    assert reader.read_chunk(np.int64(1)) == plaintext[64:128]
    with pytest.raises(InvalidInput):
        reader.read_range(1.5, 2)  # type: ignore[arg-type]
