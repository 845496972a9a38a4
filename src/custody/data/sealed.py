"""The sealed file format: one model file encrypted under a replica's data key.

Format v1 (integers big-endian)::

    header  magic b"CUSTSEAL" | version u8 = 1 | chunk_size u32 | replica_id 16 | key_id 16
            | salt 16 | nonce_prefix 7 | path_len u16 | path (UTF-8, relative POSIX)
    body    chunk 0 .. chunk n-1, each AES-256-GCM(plaintext_i) || tag (16 bytes)

    file_key = HKDF-SHA256(ikm=DEK, salt=salt, info=b"custody sealed v1", length=32)
    nonce_i  = nonce_prefix (7) || i as u32 (4) || last flag (1: 0x01 final chunk, else 0x00)
    aad      = the header bytes, for every chunk

This is the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015). The chunk
index in the nonce pins each chunk to its position, the last flag makes truncation at a
chunk boundary detectable, the per-file salt gives every file its own key (so chunks cannot
be spliced across files even under one DEK), and the header as AAD binds ids and path.

There is no size field: the plaintext size follows from the sealed size, and only one
chunk layout is valid for a given plaintext size, so every file has exactly one encoding.
Chunks are independent, which is what allows random access and parallel sealing.
"""

from __future__ import annotations

import operator
import os
import struct
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from custody.domain.errors import IntegrityError, InvalidInput
from custody.domain.manifest import MAX_PATH_BYTES, check_relpath

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAX_CHUNK_SIZE",
    "MIN_CHUNK_SIZE",
    "TAG_SIZE",
    "ChunkCipher",
    "SealedHeader",
    "SealedReader",
    "chunk_count",
    "new_header",
    "open_file",
    "plaintext_size",
    "seal_file",
    "sealed_size",
]

MAGIC = b"CUSTSEAL"
VERSION = 1
TAG_SIZE = 16
KEY_SIZE = 32
SALT_SIZE = 16
NONCE_PREFIX_SIZE = 7
HKDF_INFO = b"custody sealed v1"

MIN_CHUNK_SIZE = 64
MAX_CHUNK_SIZE = 64 * 1024 * 1024
# A sealed chunk of exactly 4 MiB keeps object-store ranges and page-cache reads aligned.
DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024 - TAG_SIZE

# The chunk index occupies 4 bytes of the nonce; going past it would reuse nonces.
MAX_CHUNKS = 1 << 32

_FIXED = struct.Struct(">8sBI16s16s16s7sH")
FIXED_HEADER_SIZE = _FIXED.size  # 70
# The header is zero-padded to a multiple of this, so every sealed chunk starts on a 4 KiB
# boundary: writers can use O_DIRECT with aligned buffers, and each 4 MiB record maps onto
# whole disk blocks. The padding is part of the header, hence of the authenticated data.
HEADER_ALIGN = 4096

ReadAt = Callable[[int, int], bytes]


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> object: ...


def _as_int(value: object) -> int | None:
    """Accept any integer type (numpy offsets included); None for anything else."""
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def _check_chunk_size(chunk_size: int) -> None:
    if not isinstance(chunk_size, int) or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise InvalidInput(f"chunk size must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE} bytes")


@dataclass(frozen=True, slots=True)
class SealedHeader:
    """The header of a sealed file. Its exact bytes are the AAD of every chunk."""

    chunk_size: int
    replica_id: uuid.UUID
    key_id: uuid.UUID
    salt: bytes
    nonce_prefix: bytes
    path: str
    version: int = VERSION

    def __post_init__(self) -> None:
        # Validate on construction so that no header we could write is one we would refuse
        # to read back.
        if self.version != VERSION:
            raise InvalidInput(f"unsupported sealed format version {self.version}")
        _check_chunk_size(self.chunk_size)
        if not isinstance(self.replica_id, uuid.UUID) or not isinstance(self.key_id, uuid.UUID):
            raise InvalidInput("replica_id and key_id must be UUIDs")
        if not isinstance(self.salt, bytes) or len(self.salt) != SALT_SIZE:
            raise InvalidInput(f"salt must be {SALT_SIZE} bytes")
        if not isinstance(self.nonce_prefix, bytes) or len(self.nonce_prefix) != NONCE_PREFIX_SIZE:
            raise InvalidInput(f"nonce prefix must be {NONCE_PREFIX_SIZE} bytes")
        if not isinstance(self.path, str):
            raise InvalidInput("path must be a string")
        check_relpath(self.path)

    def to_bytes(self) -> bytes:
        path = self.path.encode("utf-8")
        return (
            _FIXED.pack(
                MAGIC,
                self.version,
                self.chunk_size,
                self.replica_id.bytes,
                self.key_id.bytes,
                self.salt,
                self.nonce_prefix,
                len(path),
            )
            + path
            + bytes(self.size - FIXED_HEADER_SIZE - len(path))
        )

    @property
    def size(self) -> int:
        unpadded = FIXED_HEADER_SIZE + len(self.path.encode("utf-8"))
        return -(-unpadded // HEADER_ALIGN) * HEADER_ALIGN

    @classmethod
    def parse(cls, read_at: ReadAt) -> SealedHeader:
        """Read and validate a header, reading at most FIXED_HEADER_SIZE + 1024 bytes.

        Everything here is attacker-controlled until the first chunk authenticates, so
        every field is range-checked before it is used, and the path length is bounded
        before it drives a read.
        """
        fixed = read_at(0, FIXED_HEADER_SIZE)
        if len(fixed) != FIXED_HEADER_SIZE:
            raise IntegrityError("sealed file header is truncated")
        magic, version, chunk_size, replica, key, salt, prefix, path_len = _FIXED.unpack(fixed)
        if magic != MAGIC:
            raise IntegrityError("not a sealed file: bad magic")
        if version != VERSION:
            raise IntegrityError(f"sealed file has unsupported version {version}")
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise IntegrityError(f"sealed file header has out-of-range chunk size {chunk_size}")
        if path_len == 0 or path_len > MAX_PATH_BYTES:
            raise IntegrityError(f"sealed file header has bad path length {path_len}")
        raw_path = read_at(FIXED_HEADER_SIZE, path_len)
        if len(raw_path) != path_len:
            raise IntegrityError("sealed file header is truncated")
        try:
            path = raw_path.decode("utf-8")
            header = cls(
                chunk_size=chunk_size,
                replica_id=uuid.UUID(bytes=replica),
                key_id=uuid.UUID(bytes=key),
                salt=salt,
                nonce_prefix=prefix,
                path=path,
                version=version,
            )
        except (UnicodeDecodeError, InvalidInput) as exc:
            raise IntegrityError("sealed file header has a malformed path") from exc
        padding = read_at(FIXED_HEADER_SIZE + path_len, header.size - FIXED_HEADER_SIZE - path_len)
        # Strict UTF-8 has one encoding per string and the padding must be zeros, so the
        # header has one encoding; it is checked because the AAD must be exactly the bytes on disk.
        if header.to_bytes() != fixed + raw_path + padding:
            raise IntegrityError("sealed file header is not canonical (truncated or non-zero padding)")
        return header


def new_header(
    replica_id: uuid.UUID,
    key_id: uuid.UUID,
    path: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> SealedHeader:
    """A header with a fresh random salt and nonce prefix.

    The random salt gives each sealed file its own key, so nonces never repeat under one
    key even when the same DEK seals many files; the prefix is defence in depth.
    """
    return SealedHeader(
        chunk_size=chunk_size,
        replica_id=replica_id,
        key_id=key_id,
        salt=os.urandom(SALT_SIZE),
        nonce_prefix=os.urandom(NONCE_PREFIX_SIZE),
        path=path,
    )


def chunk_count(plaintext_size: int, chunk_size: int) -> int:
    """Number of chunks; an empty file still has one (empty, final) chunk."""
    if plaintext_size < 0:
        raise InvalidInput("plaintext size must not be negative")
    _check_chunk_size(chunk_size)
    n = max(1, -(-plaintext_size // chunk_size))
    if n > MAX_CHUNKS:
        raise InvalidInput(f"file too large for chunk size {chunk_size}")
    return n


def sealed_size(plaintext_size: int, header: SealedHeader) -> int:
    n = chunk_count(plaintext_size, header.chunk_size)
    return header.size + plaintext_size + n * TAG_SIZE


def plaintext_size(sealed_size: int, header: SealedHeader) -> int:
    """Invert sealed_size; a size no plaintext could produce means the file was cut or padded."""
    body = sealed_size - header.size
    if body < TAG_SIZE:
        raise IntegrityError(f"{header.path}: sealed file is truncated")
    full = header.chunk_size + TAG_SIZE
    n = -(-body // full)
    last = body - (n - 1) * full
    if last < TAG_SIZE or (last == TAG_SIZE and n > 1) or n > MAX_CHUNKS:
        raise IntegrityError(f"{header.path}: sealed size {sealed_size} is not a valid length")
    return (n - 1) * header.chunk_size + last - TAG_SIZE


def _derive_file_key(dek: bytes, salt: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=HKDF_INFO).derive(dek)


class ChunkCipher:
    """Stateless per call so several threads can seal/open different chunks of one file at
    once (AESGCM releases the GIL).

    Only the derived file key is kept, not the DEK. The chunk length rules are enforced on
    both sides so that nothing this class writes has a second valid encoding.
    """

    __slots__ = ("_aead", "_aad", "_header")

    def __init__(self, dek: bytes, header: SealedHeader) -> None:
        if not isinstance(dek, (bytes, bytearray, memoryview)) or len(dek) != KEY_SIZE:
            raise InvalidInput(f"data key must be {KEY_SIZE} bytes")
        self._header = header
        self._aad = header.to_bytes()
        self._aead = AESGCM(_derive_file_key(bytes(dek), header.salt))

    @property
    def header(self) -> SealedHeader:
        return self._header

    def _nonce(self, index: int, last: bool) -> bytes:
        i = _as_int(index)
        if i is None or not 0 <= i < MAX_CHUNKS:
            raise InvalidInput(f"{self._header.path}: chunk index {index!r} out of range")
        index = i
        return self._header.nonce_prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")

    def _check_plain_len(self, index: int, n: int, last: bool) -> None:
        cs = self._header.chunk_size
        ok = (1 <= n <= cs or (n == 0 and index == 0)) if last else n == cs
        if not ok:
            raise InvalidInput(f"{self._header.path}: chunk {index} has invalid plaintext length {n}")

    def _check_sealed_len(self, index: int, n: int, last: bool) -> None:
        cs = self._header.chunk_size + TAG_SIZE
        ok = (TAG_SIZE + 1 <= n <= cs or (n == TAG_SIZE and index == 0)) if last else n == cs
        if not ok:
            raise IntegrityError(f"{self._header.path}: chunk {index} has invalid sealed length {n}")

    def _auth_failed(self, index: int) -> IntegrityError:
        return IntegrityError(f"{self._header.path}: chunk {index} failed authentication")

    def seal(self, index: int, plaintext: bytes | memoryview, last: bool) -> bytes:
        nonce = self._nonce(index, last)
        self._check_plain_len(index, len(plaintext), last)
        return self._aead.encrypt(nonce, plaintext, self._aad)

    def seal_into(
        self, index: int, plaintext: bytes | memoryview, last: bool, out: bytearray | memoryview
    ) -> int:
        """Like seal, but writes ciphertext||tag into `out`, which must be exactly
        len(plaintext) + TAG_SIZE bytes (e.g. a slice of a preallocated write buffer).

        Lets a pipeline seal straight into its output buffer without allocating per chunk.
        Returns the number of bytes written.
        """
        nonce = self._nonce(index, last)
        self._check_plain_len(index, len(plaintext), last)
        if len(out) != len(plaintext) + TAG_SIZE:
            raise InvalidInput(f"{self._header.path}: output buffer for chunk {index} has the wrong size")
        return self._aead.encrypt_into(nonce, plaintext, self._aad, out)

    def open(self, index: int, sealed_chunk: bytes | memoryview, last: bool) -> bytes:
        nonce = self._nonce(index, last)
        self._check_sealed_len(index, len(sealed_chunk), last)
        try:
            return self._aead.decrypt(nonce, sealed_chunk, self._aad)
        except InvalidTag:
            raise self._auth_failed(index) from None

    def open_into(
        self, index: int, sealed_chunk: bytes | memoryview, last: bool, out: bytearray | memoryview
    ) -> int:
        """Like open, but writes the plaintext into `out`, which must be exactly
        len(sealed_chunk) - TAG_SIZE bytes. On failure `out` is zeroed, so no unauthenticated
        plaintext is left behind. Returns the number of bytes written.
        """
        nonce = self._nonce(index, last)
        self._check_sealed_len(index, len(sealed_chunk), last)
        if len(out) != len(sealed_chunk) - TAG_SIZE:
            raise InvalidInput(f"{self._header.path}: output buffer for chunk {index} has the wrong size")
        try:
            return self._aead.decrypt_into(nonce, sealed_chunk, self._aad, out)
        except InvalidTag:
            view = memoryview(out).cast("B")
            view[:] = bytes(view.nbytes)
            raise self._auth_failed(index) from None


class SealedReader:
    """Random access over one sealed file: decrypts only the chunks a read spans.

    By default the final chunk is authenticated on open, so `plaintext_size` is a verified
    fact rather than a claim derived from the file's length (a file cut at a chunk boundary
    is refused at once instead of looking shorter). Pass authenticate_size=False to skip
    that read when the caller is about to `verify()` anyway.

    Holds no mutable state after construction, so one reader may serve several threads
    provided `read_at` is thread-safe.
    """

    def __init__(
        self,
        read_at: ReadAt,
        total_size: int,
        dek: bytes,
        *,
        expect_replica: uuid.UUID | None = None,
        expect_key: uuid.UUID | None = None,
        expect_path: str | None = None,
        authenticate_size: bool = True,
    ) -> None:
        if total_size < 0:
            raise InvalidInput("total size must not be negative")
        header = SealedHeader.parse(read_at)
        # Checked before any decryption: a file for another replica, key or path is wrong
        # even if it would authenticate.
        if expect_replica is not None and header.replica_id != expect_replica:
            raise IntegrityError(
                f"{header.path}: sealed for replica {header.replica_id}, expected {expect_replica}"
            )
        if expect_key is not None and header.key_id != expect_key:
            raise IntegrityError(f"{header.path}: sealed under key {header.key_id}, expected {expect_key}")
        if expect_path is not None and header.path != expect_path:
            raise IntegrityError(
                f"{header.path}: sealed file is for a different path, expected {expect_path!r}"
            )
        self.header = header
        self.plaintext_size = plaintext_size(total_size, header)
        self.chunk_count = chunk_count(self.plaintext_size, header.chunk_size)
        self._read_at = read_at
        self._cipher = ChunkCipher(dek, header)
        if authenticate_size:
            self.read_chunk(self.chunk_count - 1)

    def _chunk_span(self, first: int, last: int) -> tuple[int, int]:
        """Byte offset and length in the sealed file of chunks first..last inclusive."""
        full = self.header.chunk_size + TAG_SIZE
        start = self.header.size + first * full
        end = self.header.size + self.plaintext_size + self.chunk_count * TAG_SIZE
        end = min(end, self.header.size + (last + 1) * full)
        return start, end - start

    def _read_sealed(self, first: int, last: int) -> memoryview:
        offset, length = self._chunk_span(first, last)
        data = self._read_at(offset, length)
        if len(data) != length:
            raise IntegrityError(f"{self.header.path}: sealed file is truncated at chunk {first}")
        return memoryview(data)

    def _check_index(self, index: int) -> int:
        i = _as_int(index)
        if i is None or not 0 <= i < self.chunk_count:
            raise InvalidInput(
                f"{self.header.path}: chunk index {index!r} out of range 0..{self.chunk_count - 1}"
            )
        return i

    def read_chunk(self, index: int) -> bytes:
        index = self._check_index(index)
        sealed = self._read_sealed(index, index)
        return self._cipher.open(index, sealed, index == self.chunk_count - 1)

    def read_range(self, offset: int, length: int) -> bytes:
        """Plaintext bytes [offset, offset+length), fetched with a single read_at call."""
        off, n = _as_int(offset), _as_int(length)
        if off is None or n is None or off < 0 or n < 0:
            raise InvalidInput(f"{self.header.path}: bad range offset={offset!r} length={length!r}")
        offset, length = off, n
        if offset + length > self.plaintext_size:
            raise InvalidInput(
                f"{self.header.path}: range {offset}+{length} is past the end ({self.plaintext_size} bytes)"
            )
        if length == 0:
            return b""
        cs = self.header.chunk_size
        first, last = offset // cs, (offset + length - 1) // cs
        sealed = self._read_sealed(first, last)
        full = cs + TAG_SIZE
        out = bytearray()
        for i in range(first, last + 1):
            pos = (i - first) * full
            plain = self._cipher.open(i, sealed[pos : pos + full], i == self.chunk_count - 1)
            lo = offset - i * cs if i == first else 0
            hi = offset + length - i * cs if i == last else len(plain)
            out += plain[lo:hi]
        return bytes(out)

    def iter_chunks(self) -> Iterator[bytes]:
        """Authenticated plaintext chunks in order; each is checked before it is yielded."""
        for i in range(self.chunk_count):
            yield self.read_chunk(i)

    def verify(self, hasher: _Hasher | None = None) -> None:
        """Authenticate every chunk; optionally feed the plaintext to a hashlib object so the
        caller can compare it against the manifest digest in the same pass."""
        for chunk in self.iter_chunks():
            if hasher is not None:
                hasher.update(chunk)


def _read_exact(src: BinaryIO, n: int) -> bytes:
    parts: list[bytes] = []
    remaining = n
    while remaining:
        part = src.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def seal_file(src: BinaryIO, dst: BinaryIO, dek: bytes, header: SealedHeader, size: int) -> None:
    """Seal exactly `size` bytes of `src` into `dst`, sequentially.

    The size is a promise (typically from the manifest): a source that is shorter or longer
    has changed since it was measured, and sealing it would bind the wrong content.
    """
    cipher = ChunkCipher(dek, header)
    n = chunk_count(size, header.chunk_size)
    dst.write(header.to_bytes())
    for i in range(n):
        want = min(header.chunk_size, size - i * header.chunk_size)
        data = _read_exact(src, want)
        if len(data) != want:
            raise IntegrityError(f"{header.path}: source ended early at chunk {i} (expected {size} bytes)")
        dst.write(cipher.seal(i, data, i == n - 1))
    if src.read(1):
        raise IntegrityError(f"{header.path}: source is longer than the expected {size} bytes")


def open_file(
    src_read_at: ReadAt,
    total_size: int,
    dek: bytes,
    dst: BinaryIO,
    *,
    expect_replica: uuid.UUID | None = None,
    expect_key: uuid.UUID | None = None,
    expect_path: str | None = None,
) -> None:
    """Decrypt a whole sealed file into `dst`.

    Every chunk is authenticated before it is written, and the final chunk (hence the
    length) before anything is written; still, on IntegrityError `dst` may hold a prefix of
    the plaintext and must be discarded by the caller.
    """
    reader = SealedReader(
        src_read_at,
        total_size,
        dek,
        expect_replica=expect_replica,
        expect_key=expect_key,
        expect_path=expect_path,
    )
    for chunk in reader.iter_chunks():
        dst.write(chunk)
