"""Data plane for reading tensors out of a sealed safetensors file without plaintext on disk.

Only the chunks the header and the requested tensors span are decrypted.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from custody.data import sealed
from custody.data.formats import safetensors
from custody.domain.errors import NotFound


class _CachedReader:
    """Decrypts each chunk at most once while one file is being read."""

    def __init__(self, reader: sealed.SealedReader, max_chunks: int = 8) -> None:
        self.reader = reader
        self._chunk = lru_cache(maxsize=max_chunks)(reader.read_chunk)

    def read_at(self, offset: int, length: int) -> bytearray:
        cs = self.reader.header.chunk_size
        out = bytearray()
        end = offset + length
        pos = offset
        while pos < end:
            index = pos // cs
            chunk = self._chunk(index)
            start = pos - index * cs
            take = min(end - pos, len(chunk) - start)
            if take <= 0:
                break
            out += chunk[start : start + take]
            pos += take
        return out


def tensor_names(reader: sealed.SealedReader) -> list[str]:
    cached = _CachedReader(reader)
    return list(safetensors.parse_header(cached.read_at, reader.plaintext_size, name=reader.header.path).tensors)


def read_tensors(reader: sealed.SealedReader, names: list[str] | None = None) -> dict[str, np.ndarray]:
    cached = _CachedReader(reader)
    header = safetensors.parse_header(cached.read_at, reader.plaintext_size, name=reader.header.path)
    wanted = list(header.tensors) if names is None else names
    out: dict[str, np.ndarray] = {}
    for name in wanted:
        info = header.tensors.get(name)
        if info is None:
            raise NotFound(f"{reader.header.path} has no tensor {name!r}")
        raw = cached.read_at(header.data_start + info.begin, info.end - info.begin)
        out[name] = np.frombuffer(raw, dtype=safetensors.numpy_dtype(info.dtype)).reshape(info.shape)
    return out
