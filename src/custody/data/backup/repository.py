"""A deduplicating, encrypted store of chunks in a backup zone.

Layout under the zone::

    repos/<repo_id>/keycheck                 proves a key is this repository's key
    repos/<repo_id>/chunks/<2 hex>/<id>      one object per chunk

A chunk's id is hex HMAC-SHA256(mac key, plaintext): the same bytes get the same id within a
repository, so they are stored once, while ids from two repositories (different keys) cannot be
compared to learn whether they hold the same content.

Chunk object, format v1 (integers big-endian)::

    magic b"CUSTCHNK" | version u8 = 1 | flags u8 (bit 0: zstd) | nonce 12 | ciphertext || tag 16

    plaintext  = the chunk, zstd-compressed when flag bit 0 is set
    key        = the repository's enc key (AES-256-GCM), nonce random per object
    aad        = magic | version | flags | len(repo_id) u8 | repo_id | chunk id (32 bytes)

The AAD pins an object to its repository and its own id, so an object copied from another
repository, renamed onto another id, or with its compression flag flipped fails authentication;
the MAC of the decrypted plaintext is then checked against the id as well. Random 96-bit nonces
are safe here: even 2^32 chunks under one key keep the collision probability below 2^-32.

Compression is used only where it pays: a 64 KiB sample is compressed first (weights in float
formats gain little, and random-looking data nothing), and the compressed chunk is kept only if
the whole chunk shrank by at least 5%. Decompression is bounded: a frame that claims more than
MAX_PLAINTEXT (2 x PIECE_SIZE plus slack) is refused before any output is allocated.
"""

from __future__ import annotations

import hmac
import os
import re
import struct
import threading
from collections.abc import Iterable

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from custody.data.backup.chunking import PIECE_SIZE
from custody.data.backup.keys import RepoKeys, check_repo_id
from custody.data.backup.objects import ObjectStore
from custody.data.zones import ZoneStorage
from custody.domain.errors import IntegrityError, InvalidInput

__all__ = ["FORMAT_VERSION", "MAX_PLAINTEXT", "OVERHEAD", "Repository", "check_chunk_id", "short"]

REPOS_DIR = "repos"
MAGIC = b"CUSTCHNK"
FORMAT_VERSION = 1
FLAG_ZSTD = 0x01
_KNOWN_FLAGS = FLAG_ZSTD
_HEAD = struct.Struct(">8sBB12s")
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = _HEAD.size + TAG_SIZE

SAMPLE = 64 * 1024
ZSTD_LEVEL = 3
MIN_SAVING = 0.05
MAX_PLAINTEXT = 2 * PIECE_SIZE + 64 * 1024
"""Largest plaintext `get` will produce; chunks `put` accepts are at most PIECE_SIZE."""
MAX_OBJECT = MAX_PLAINTEXT + OVERHEAD

_CHUNK_ID = re.compile(r"[0-9a-f]{64}")
_KEYCHECK = "keycheck"
_KEYCHECK_LABEL = b"custody backup repository key check v1"


def check_chunk_id(chunk_id: str) -> str:
    if not isinstance(chunk_id, str) or not _CHUNK_ID.fullmatch(chunk_id):
        raise InvalidInput(f"bad chunk id {str(chunk_id)[:70]!r}: 64 lowercase hex digits expected")
    return chunk_id


def short(chunk_id: str) -> str:
    """How errors name a chunk: its first 12 hex digits."""
    return chunk_id[:12]


class _Codec(threading.local):
    """zstd contexts are not thread-safe; each worker thread gets its own pair."""

    def __init__(self) -> None:
        self.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True,
                                                   write_checksum=False)
        self.decompressor = zstandard.ZstdDecompressor()


class Repository:
    """Chunks of one repository: put, get (authenticated), list, delete.

    Safe to use from several threads at once: AESGCM and HMAC keep no per-call state, zstd
    contexts are per thread, and every object is written atomically.
    """

    def __init__(self, zone: ZoneStorage, repo_id: str, keys: RepoKeys) -> None:
        if not isinstance(keys, RepoKeys):
            raise InvalidInput("repository keys must be RepoKeys")
        self.zone = zone
        self.repo_id = check_repo_id(repo_id)
        self.keys = keys
        self.objects = ObjectStore(zone, f"{REPOS_DIR}/{repo_id}")
        self._aead = AESGCM(keys.enc)
        self._mac = keys.mac
        rid = repo_id.encode("ascii")
        self._aad_repo = bytes([len(rid)]) + rid
        self._codec = _Codec()

    def __repr__(self) -> str:
        return f"Repository({self.zone.url!r}, {self.repo_id!r})"

    # -- ids and paths --------------------------------------------------------------------------

    def chunk_id(self, plaintext: bytes | memoryview) -> str:
        return hmac.digest(self._mac, plaintext, "sha256").hex()

    @staticmethod
    def _rel(chunk_id: str) -> str:
        return f"chunks/{chunk_id[:2]}/{chunk_id}"

    def _aad(self, flags: int, chunk_id: str) -> bytes:
        return MAGIC + bytes([FORMAT_VERSION, flags]) + self._aad_repo + bytes.fromhex(chunk_id)

    # -- key check ------------------------------------------------------------------------------

    def _keycheck_plain(self) -> bytes:
        return hmac.digest(self._mac, _KEYCHECK_LABEL + self._aad_repo, "sha256")

    def ensure_key(self) -> None:
        """Before writing: record that this repository uses these keys, or check that it does.

        Without this, a backup run with another key would fill the repository with chunks no
        restore under the real key can open, and deduplicate against nothing.
        """
        if self.objects.read(_KEYCHECK, 4096) is None:
            nonce = os.urandom(NONCE_SIZE)
            sealed = self._aead.encrypt(nonce, self._keycheck_plain(), MAGIC + b"keycheck" + self._aad_repo)
            self.objects.put(_KEYCHECK, _HEAD.pack(MAGIC, FORMAT_VERSION, 0, nonce) + sealed)
            self.objects.sync()
            return
        self.check_key()

    def check_key(self) -> None:
        """Refuse a key that is not this repository's (wrong, or another lineage's) at once,
        with one clear error instead of a failure per chunk. A repository without a key check
        object passes: its chunks still authenticate one by one."""
        raw = self.objects.read(_KEYCHECK, 4096)
        if raw is None:
            return
        ok = False
        if len(raw) > _HEAD.size:
            magic, version, _, nonce = _HEAD.unpack_from(raw)
            if magic == MAGIC and version == FORMAT_VERSION:
                try:
                    plain = self._aead.decrypt(nonce, raw[_HEAD.size :], MAGIC + b"keycheck" + self._aad_repo)
                    ok = hmac.compare_digest(plain, self._keycheck_plain())
                except InvalidTag:
                    ok = False
        if not ok:
            raise IntegrityError(f"backup repository {self.repo_id} does not open with this key "
                                 "(wrong key, or the key check object is damaged)")

    # -- chunks ---------------------------------------------------------------------------------

    def has(self, chunk_id: str) -> bool:
        return self.objects.exists(self._rel(check_chunk_id(chunk_id)))

    def put(self, chunk_id: str, plaintext: bytes | memoryview, *, known_absent: bool = False) -> int:
        """Store a chunk under its id; returns the bytes stored (0 when it was already present).

        `chunk_id` must be `self.chunk_id(plaintext)`: it is computed once by the caller, which
        needs it anyway to deduplicate, and `get` checks it on every read. A caller that has
        just listed the repository passes known_absent=True to skip one lookup per chunk (a
        round trip on object stores); writing an existing chunk again is harmless.
        """
        check_chunk_id(chunk_id)
        if len(plaintext) > PIECE_SIZE:
            raise InvalidInput(f"chunk {short(chunk_id)} is {len(plaintext)} bytes (limit {PIECE_SIZE})")
        rel = self._rel(chunk_id)
        if not known_absent and self.objects.exists(rel):
            return 0
        obj = self.seal(chunk_id, plaintext)
        self.objects.put(rel, obj)
        return len(obj)

    def seal(self, chunk_id: str, plaintext: bytes | memoryview) -> bytearray:
        """The object bytes for a chunk (compressed when it pays, then encrypted)."""
        packed = self._compress(plaintext)
        flags = FLAG_ZSTD if packed is not None else 0
        body = packed if packed is not None else plaintext
        nonce = os.urandom(NONCE_SIZE)
        head = _HEAD.pack(MAGIC, FORMAT_VERSION, flags, nonce)
        out = bytearray(len(head) + len(body) + TAG_SIZE)
        out[: len(head)] = head
        self._aead.encrypt_into(nonce, body, self._aad(flags, chunk_id), memoryview(out)[len(head) :])
        return out

    def _compress(self, plaintext: bytes | memoryview) -> bytes | None:
        n = len(plaintext)
        if n < 64:
            return None
        cctx = self._codec.compressor
        if n > SAMPLE:
            mid = (n - SAMPLE) // 2
            if len(cctx.compress(plaintext[mid : mid + SAMPLE])) > SAMPLE * (1 - MIN_SAVING):
                return None
        packed = cctx.compress(plaintext)
        return packed if len(packed) <= n * (1 - MIN_SAVING) else None

    def get(self, chunk_id: str) -> bytes:
        """The chunk's plaintext, authenticated and checked against its id."""
        check_chunk_id(chunk_id)
        raw = self.objects.read(self._rel(chunk_id), MAX_OBJECT)
        if raw is None:
            raise IntegrityError(f"chunk {short(chunk_id)} is missing from backup repository {self.repo_id}")
        return self.open(chunk_id, raw)

    def open(self, chunk_id: str, raw: bytes | memoryview) -> bytes:
        """Decrypt and check one object's bytes (as `get` does after reading them)."""
        name = f"chunk {short(chunk_id)}"
        if len(raw) < OVERHEAD:
            raise IntegrityError(f"{name} is truncated ({len(raw)} bytes)")
        if len(raw) > MAX_OBJECT:
            raise IntegrityError(f"{name} is oversized (over {MAX_OBJECT} bytes)")
        magic, version, flags, nonce = _HEAD.unpack_from(raw)
        if magic != MAGIC:
            raise IntegrityError(f"{name} is not a chunk object (bad magic)")
        if version != FORMAT_VERSION:
            raise IntegrityError(f"{name} has unsupported format version {version}")
        if flags & ~_KNOWN_FLAGS:
            raise IntegrityError(f"{name} has unknown flags {flags:#04x}")
        try:
            body = self._aead.decrypt(nonce, memoryview(raw)[_HEAD.size :], self._aad(flags, chunk_id))
        except InvalidTag:
            raise IntegrityError(f"{name} failed authentication (corrupted, swapped with another chunk, "
                                 "or not encrypted with this repository's key)") from None
        plain = self._decompress(name, body) if flags & FLAG_ZSTD else body
        if not hmac.compare_digest(hmac.digest(self._mac, plain, "sha256"), bytes.fromhex(chunk_id)):
            raise IntegrityError(f"{name} does not match its id (content differs from what was backed up)")
        return plain

    def _decompress(self, name: str, body: bytes) -> bytes:
        try:
            size = zstandard.frame_content_size(body)
        except zstandard.ZstdError:
            raise IntegrityError(f"{name} holds a malformed zstd frame") from None
        if size < 0 or size > MAX_PLAINTEXT:
            raise IntegrityError(f"{name} would decompress to an unbounded or oversized plaintext")
        try:
            out = self._codec.decompressor.decompress(body, max_output_size=MAX_PLAINTEXT)
        except zstandard.ZstdError:
            raise IntegrityError(f"{name} does not decompress") from None
        if len(out) != size:
            raise IntegrityError(f"{name} decompressed to {len(out)} bytes, its frame says {size}")
        return out

    # -- whole repository -----------------------------------------------------------------------

    def _entries(self) -> list[tuple[str, str, int]]:
        """(relative path, chunk id or "" for a stray file, size) under chunks/."""
        found = []
        for rel, size in self.objects.walk("chunks"):
            prefix, _, name = rel.partition("/")
            ok = _CHUNK_ID.fullmatch(name) is not None and prefix == name[:2]
            found.append((f"chunks/{rel}", name if ok else "", size))
        return found

    def list_chunks(self) -> set[str]:
        return {cid for _, cid, _ in self._entries() if cid}

    def chunk_sizes(self) -> dict[str, int]:
        """Stored size of every chunk object, by chunk id (one listing)."""
        return {cid: size for _, cid, size in self._entries() if cid}

    def stored_bytes(self) -> int:
        return sum(size for _, cid, size in self._entries() if cid)

    def delete(self, chunk_ids: Iterable[str]) -> int:
        """Delete chunks (absent ones are skipped); returns the bytes freed."""
        freed = sum(self.objects.remove(self._rel(check_chunk_id(cid))) for cid in chunk_ids)
        self.objects.sync()
        return freed

    def delete_strays(self) -> tuple[int, int]:
        """Remove files under chunks/ that are not chunks (temporaries of a killed write);
        returns (files, bytes)."""
        strays = [rel for rel, cid, _ in self._entries() if not cid]
        freed = sum(self.objects.remove(rel) for rel in strays)
        self.objects.sync()
        return len(strays), freed

    def sync(self) -> None:
        """Make every chunk written so far durable (their folders' entries included)."""
        self.objects.sync()
