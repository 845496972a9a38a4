"""The statistics `trace` and `identify` decide on.

Trace. Each suspect tensor S is matched to the original W (by name and shape) and regressed on
it row by row (S ≈ a·W + b); the residual R keeps what is not the original, a recipient's mark
included. For a recipient k with pattern (mask, signs) the per-tensor statistic is
Z_t = Σ_mask R·sign / sqrt(Σ_mask R²). Given R, an innocent's signs are independent fair ±1
(they come from a key and a name that never touched the suspect), so by Hoeffding's inequality
P(Z_t ≥ x) ≤ exp(-x²/2) whatever R is (on a large tensor, on whole blocks of rows chosen from its
shape alone: see MAX_ENTRIES). Tensors are combined with weights fixed before any pattern
is looked at (w_t ∝ the mark's expected strength, a·alpha·std(W)·sqrt(n)/std(R)), which keeps the
bound: P(z_k ≥ tau) ≤ exp(-tau²/2). With tau = sqrt(2·ln(R·M/eps)) over R recipients and M scans,
the chance that any innocent is ever accused is at most eps.

Copy. Whether the suspect is this asset at all is the correlation of S with W over all matched
entries; an unrelated model's is about ±1/sqrt(n), so z_copy = r·sqrt(n) is compared with the same tau.

Identify. Per-tensor sketches (sketch.py) are compared by cosine; c·sqrt(d) with d = min(cols, 256)
is about standard normal for unrelated weights, and the tensors' scores are averaged as
Σ/sqrt(T). Distribution statistics alone (means, norms) are never evidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from custody.data.derive import marks, sketch

DEFAULT_EPS = 1e-6


def threshold(recipients: int, scans: int, eps: float = DEFAULT_EPS) -> float:
    return math.sqrt(2.0 * math.log(max(1, recipients) * max(1, scans) / eps))


def as_matrix(values: np.ndarray) -> np.ndarray:
    return values.reshape(values.shape[0], -1) if values.ndim >= 2 else values.reshape(1, -1)


def align(suspect: np.ndarray, original: np.ndarray) -> np.ndarray | None:
    """The suspect as the original's shape: as it is, transposed, or (for a quantized file that kept
    rows × cols) reshaped; None when it cannot be the same tensor."""
    if suspect.shape == original.shape:
        return suspect
    if suspect.size != original.size:
        return None
    if suspect.ndim == 2 and original.ndim == 2 and suspect.shape == original.shape[::-1]:
        return suspect.T
    if as_matrix(suspect).shape == as_matrix(original).shape:
        return suspect.reshape(original.shape)
    return None


MAX_ENTRIES = 1 << 21
"""Entries of one tensor that trace reads: whole blocks of rows, evenly spaced, chosen from the
shape alone (before any pattern is drawn), so the bound holds on them as on the whole tensor. Two
million entries put a marked copy tens of standard deviations above tau; more only costs time."""


def sampled_blocks(shape: tuple[int, ...]) -> list[int]:
    every = list(marks.blocks(shape))
    per_block = marks.ROWS_PER_BLOCK * (math.prod(shape[1:]) if len(shape) > 1 else 1)
    k = max(1, min(len(every), MAX_ENTRIES // max(1, per_block)))
    return every if k >= len(every) else [every[int(i * len(every) / k)] for i in range(k)]


def _rows(matrix: np.ndarray, blocks: list[int]) -> np.ndarray:
    size = marks.ROWS_PER_BLOCK
    return np.concatenate([matrix[b * size:(b + 1) * size] for b in blocks]).astype(np.float64)


@dataclass
class Residual:
    """One matched tensor's regression on the original, over its sampled blocks of rows."""

    name: str
    shape: tuple[int, ...]  # the original's
    blocks: list[int]
    residual: np.ndarray  # the sampled rows × cols, float64
    slope: float  # the median of the per-row slopes a
    correlation: float  # of the suspect with the original, over the sampled entries
    entries: int
    weight: float  # the mark's expected strength in this tensor, fixed before any pattern is read


def regress(name: str, suspect: np.ndarray, original: np.ndarray, alpha: float) -> Residual:
    blocks = sampled_blocks(tuple(original.shape))
    s = _rows(as_matrix(np.asarray(suspect)), blocks)
    w = _rows(as_matrix(np.asarray(original)), blocks)
    wc = w - w.mean(axis=1, keepdims=True)
    sc = s - s.mean(axis=1, keepdims=True)
    ww = (wc * wc).sum(axis=1)
    ws = (wc * sc).sum(axis=1)
    a = np.divide(ws, ww, out=np.zeros_like(ws), where=ww > 0)
    residual = sc - a[:, None] * wc
    ss = float((sc * sc).sum())
    corr = float(ws.sum() / math.sqrt(float(ww.sum()) * ss)) if ss > 0 and ww.sum() > 0 else 0.0
    noise = float(residual.std())
    slope = float(np.median(a))
    weight = (abs(slope) * alpha * float(w.std()) * math.sqrt(w.size) / noise) if noise > 0 else 0.0
    return Residual(name, tuple(original.shape), blocks, residual, slope, corr, int(w.size), weight)


def tensor_score(r: Residual, key: bytes, version: str, recipient: str) -> tuple[float, float]:
    """(Σ R·chip, Σ_mask R²) of one recipient's pattern over the tensor's sampled blocks."""
    total, energy, at = 0.0, 0.0, 0
    for b in r.blocks:
        chips = marks.pattern(key, version, recipient, r.name, r.shape, b).astype(np.float64)
        rows = r.residual[at:at + chips.shape[0]]
        at += chips.shape[0]
        total += float(np.einsum("ij,ij->", rows, chips))
        energy += float(np.einsum("ij,ij->", rows * rows, np.abs(chips)))
    return total, energy


def combine(per_tensor: list[tuple[float, float, float]]) -> float:
    """z from (weight, Σ R·sign, Σ R²) per tensor: Σ w·Z_t / sqrt(Σ w²)."""
    num = sum(w * (t / math.sqrt(e)) for w, t, e in per_tensor if e > 0)
    den = math.sqrt(sum(w * w for w, _, e in per_tensor if e > 0))
    return num / den if den > 0 else 0.0


def copy_z(residuals: list[Residual]) -> float:
    """How strongly the suspect follows the original: the entry-weighted correlation times sqrt(n)."""
    n = sum(r.entries for r in residuals)
    if not n:
        return 0.0
    r = sum(x.correlation * x.entries for x in residuals) / n
    return r * math.sqrt(n)


def sketch_z(cos: float, cols: int) -> float:
    d = min(cols, sketch.DIM)
    return cos * math.sqrt(d)


def combined_sketch_z(scores: list[float]) -> float:
    return sum(scores) / math.sqrt(len(scores)) if scores else 0.0
