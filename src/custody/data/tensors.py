"""Data plane for reading tensors out of a sealed safetensors file without plaintext on disk.

Only the chunks the header and the requested tensors span are decrypted.
"""

from __future__ import annotations

import json
import struct
from functools import lru_cache

import numpy as np

from custody.data import sealed
from custody.data.formats import safetensors
from custody.domain.errors import InvalidInput, NotFound


class CachedReader:
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
    cached = CachedReader(reader)
    return list(safetensors.parse_header(cached.read_at, reader.plaintext_size, name=reader.header.path).tensors)


def read_tensors(reader: sealed.SealedReader, names: list[str] | None = None) -> dict[str, np.ndarray]:
    cached = CachedReader(reader)
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


def _dtype_name(dtype: np.dtype) -> str:
    for name in safetensors.DTYPE_BITS:
        try:
            if safetensors.numpy_dtype(name) == dtype:
                return name
        except Exception:  # noqa: BLE001 - bit-packed or unavailable dtypes hold no numpy array
            continue
    raise InvalidInput(f"no safetensors dtype holds numpy {dtype}")


def to_safetensors(tensors: dict[str, np.ndarray]) -> bytes:
    """Tensors in the safetensors layout, for a read served over HTTP (plaintext in memory only)."""
    header: dict = {}
    offset = 0
    for name, arr in tensors.items():
        header[name] = {"dtype": _dtype_name(arr.dtype), "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    return b"".join([struct.pack("<Q", len(raw)), raw, *(np.ascontiguousarray(a).tobytes() for a in tensors.values())])


def from_safetensors(data: bytes, name: str = "response") -> dict[str, np.ndarray]:
    """Tensors parsed from safetensors bytes with the strict header reader."""
    view = memoryview(data)
    header = safetensors.parse_header(lambda at, n: bytes(view[at:at + n]), len(data), name=name)
    return {key: np.frombuffer(view[header.data_start + info.begin:header.data_start + info.end],
                               dtype=safetensors.numpy_dtype(info.dtype)).reshape(info.shape)
            for key, info in header.tensors.items()}
