"""The keyed identity sketch of a weight matrix: 256 numbers that survive casts and quantization.

For a matrix W (rows × cols; higher ranks are flattened to rows × rest), the sketch is
P^T (u^T W_c): W_c has each row's mean removed, u is a keyed ±1 vector over rows (so column
means, which every trained layer shares, cancel) and P a keyed Gaussian cols × 256 projection.
Two sketches are compared by their cosine. For unrelated weights the vectors u^T W_c are
independent and the cosine is near 0 (about ±1/sqrt(min(cols, 256))); casts, quantization,
pruning and fine-tuning keep it near 1. The key lives with the custodian, so nobody can shape
weights to dodge or to imitate a sketch they cannot compute.
"""

from __future__ import annotations

import hashlib
import hmac
import math

import numpy as np

SECRET = "sketches"  # the custodian secret sketches are keyed with
DIM = 256
DOMAIN = b"custody-sketch-v1"
MIN_ENTRIES = 256
ROWS_PER_STEP = 4096


def _rng(key: bytes, what: bytes, rows: int, cols: int) -> np.random.Generator:
    seed = hmac.new(key, b"|".join([DOMAIN, what, str(rows).encode(), str(cols).encode()]), hashlib.sha256).digest()
    return np.random.default_rng(int.from_bytes(seed, "big"))


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """(rows, cols) a tensor is sketched as, or None when it is too small or one-dimensional."""
    if len(shape) < 2:
        return None
    rows, cols = shape[0], math.prod(shape[1:])
    return (rows, cols) if rows >= 2 and cols >= 2 and rows * cols >= MIN_ENTRIES else None


class Sketcher:
    """Accumulates u^T W_c one block of rows at a time, so a tensor is sketched as it streams past."""

    def __init__(self, key: bytes, rows: int, cols: int) -> None:
        self.key, self.rows, self.cols = key, rows, cols
        self._u = _rng(key, b"rows", rows, cols).integers(0, 2, size=rows).astype(np.float64) * 2 - 1
        self._v = np.zeros(cols, dtype=np.float64)
        self._next = 0

    def add_rows(self, block: np.ndarray) -> None:
        block = np.asarray(block, dtype=np.float32).reshape(-1, self.cols)
        block = block - block.mean(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
        n = block.shape[0]
        self._v += (self._u[self._next:self._next + n].astype(np.float32) @ block).astype(np.float64)
        self._next += n

    def result(self) -> np.ndarray:
        if self._next != self.rows:
            raise ValueError(f"sketch saw {self._next} of {self.rows} rows")
        projection = _rng(self.key, b"projection", self.rows, self.cols).standard_normal((self.cols, DIM))
        return (self._v @ projection).astype(np.float32)


def of(key: bytes, values: np.ndarray) -> np.ndarray | None:
    """The sketch of a whole tensor (None when it is too small to sketch)."""
    shape = matrix_shape(tuple(values.shape))
    if shape is None:
        return None
    sketcher = Sketcher(key, *shape)
    flat = values.reshape(shape)
    for start in range(0, shape[0], ROWS_PER_STEP):
        sketcher.add_rows(flat[start:start + ROWS_PER_STEP])
    return sketcher.result()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b) / (na * nb) if na and nb else 0.0


def to_bytes(sketch: np.ndarray) -> bytes:
    return sketch.astype("<f4").tobytes()


def from_bytes(raw: bytes) -> np.ndarray:
    if len(raw) != DIM * 4:
        raise ValueError("a sketch is 256 little-endian float32 values")
    return np.frombuffer(raw, dtype="<f4")


FLOAT_DTYPES = {"F16": "<f2", "BF16": "bfloat16", "F32": "<f4", "F64": "<f8"}


class TensorSketches:
    """A chunk observer (like formats.tensor_digests.TensorHashes) that sketches every float matrix of
    a safetensors file as its bytes stream past: only the current tensor's partial row is kept."""

    def __init__(self, key: bytes, path: str, spans) -> None:  # noqa: ANN001 (TensorSpan sequence)
        import ml_dtypes

        self.key, self.path = key, path
        self._spans = sorted((s for s in spans if s.dtype in FLOAT_DTYPES and matrix_shape(tuple(s.shape))),
                             key=lambda s: s.start)
        self._dtypes = {k: np.dtype(ml_dtypes.bfloat16 if v == "bfloat16" else v) for k, v in FLOAT_DTYPES.items()}
        self._next = 0
        self._pending = bytearray()
        self._sketcher: Sketcher | None = None
        self.results: list[tuple[str, str, int, int, bytes]] = []

    def update(self, offset: int, data: memoryview) -> None:
        end = offset + len(data)
        while self._next < len(self._spans):
            span = self._spans[self._next]
            if span.start >= end:
                return
            lo, hi = max(span.start, offset), min(span.end, end)
            if lo < hi:
                self._feed(span, data[lo - offset: hi - offset])
            if span.end > end:
                return
            self._finish(span)

    def _feed(self, span, data: memoryview) -> None:  # noqa: ANN001
        rows, cols = matrix_shape(tuple(span.shape))
        if self._sketcher is None:
            self._sketcher = Sketcher(self.key, rows, cols)
        dtype = self._dtypes[span.dtype]
        row_bytes = cols * dtype.itemsize
        self._pending += data
        whole = len(self._pending) // row_bytes
        if whole:
            block = np.frombuffer(self._pending, dtype=dtype, count=whole * cols).reshape(whole, cols)
            self._sketcher.add_rows(block.astype(np.float32))
            del block
            del self._pending[:whole * row_bytes]

    def _finish(self, span) -> None:  # noqa: ANN001
        rows, cols = matrix_shape(tuple(span.shape))
        if self._sketcher is not None:
            self.results.append((self.path, span.name, rows, cols, to_bytes(self._sketcher.result())))
        self._sketcher = None
        self._pending = bytearray()
        self._next += 1
