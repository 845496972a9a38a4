"""The per-recipient mark: an independent, keyed ±1 spread-spectrum pattern per (recipient, tensor).

For each marked tensor W, a keyed half of its entries moves by ±alpha·std(W) (the chips: +1, -1,
or 0 outside that half). Mask and signs come from HMAC-SHA256(mark key, version, recipient, tensor, shape), so
every recipient's pattern is independent of every other's: averaging copies weakens each mark
but never points at someone who was not averaged in (shared-chip codes with per-bit payloads
would). Only 2-D float weight matrices are marked; norms, biases, embeddings and the output
head stay untouched unless a name is asked for.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
from dataclasses import dataclass

import numpy as np

SECRET = "marks"  # the custodian secret marks are keyed with
DOMAIN = b"custody-mark-v1"
DEFAULT_ALPHA = 0.03
MIN_ENTRIES = 256  # smaller matrices carry too little to be worth a mark
UNMARKED = ("*embed*", "*wte*", "*wpe*", "*lm_head*", "head.*", "*.head.*", "output.*", "*classifier*",
            "*norm*", "*bias*", "*ln_*", "*.ln*")


@dataclass(frozen=True, slots=True)
class MarkSpec:
    """What marks a copy: for whom, on which version's weights, under which key, how strongly."""

    key: bytes
    key_id: str
    version: str  # the reference version (the unmarked weights the mark is measured against)
    recipient: str
    alpha: float = DEFAULT_ALPHA
    include: tuple[str, ...] = ()  # names marked although UNMARKED would skip them


def key_id(key: bytes) -> str:
    """A name for the mark key that says nothing about it."""
    return "mark-" + hashlib.sha256(b"custody-mark-key-id|" + key).hexdigest()[:16]


def markable(name: str, shape: tuple[int, ...], float_dtype: bool, include: tuple[str, ...] = ()) -> bool:
    if not float_dtype or len(shape) != 2 or shape[0] * shape[1] < MIN_ENTRIES:
        return False
    if any(fnmatch.fnmatchcase(name, g) for g in include):
        return True
    return not any(fnmatch.fnmatchcase(name.lower(), g) for g in UNMARKED)


ROWS_PER_BLOCK = 1024  # patterns are drawn per block of rows, so no tensor's pattern is held whole


def _chip_table() -> np.ndarray:
    """Two random bits per entry, eight entries per 16-bit word: bit 0 puts the entry in the mask,
    bit 1 gives its sign; chips are +1, -1, or 0 outside the mask."""
    words = np.arange(1 << 16, dtype=np.uint32)[:, None]
    shifts = 2 * np.arange(8, dtype=np.uint32)[None, :]
    inside = (words >> shifts) & 1
    sign = ((words >> (shifts + 1)) & 1).astype(np.int8) * 2 - 1
    return (inside.astype(np.int8) * sign).astype(np.int8)


_CHIPS = _chip_table()


def pattern(key: bytes, version: str, recipient: str, name: str, shape: tuple[int, ...], block: int) -> np.ndarray:
    """One recipient's chips (+1, -1, 0) over rows [block·1024, (block+1)·1024) of one tensor, as int8
    (rows in the block × the tensor's other dimensions flattened): a keyed half of the entries
    carries a keyed sign, independently for every recipient, tensor and block."""
    rows, cols = shape[0], int(np.prod(shape[1:]))
    label = b"\0".join([DOMAIN, version.encode(), recipient.encode(), name.encode(),
                        "x".join(map(str, shape)).encode(), str(block).encode()])
    seed = hmac.new(key, label, hashlib.sha256).digest()
    n = min(ROWS_PER_BLOCK, rows - block * ROWS_PER_BLOCK) * cols
    words = np.frombuffer(np.random.default_rng(int.from_bytes(seed, "big")).bytes(2 * -(-n // 8)), dtype="<u2")
    return np.take(_CHIPS, words, axis=0).reshape(-1)[:n].reshape(-1, cols)


def blocks(shape: tuple[int, ...]) -> range:
    return range(-(-shape[0] // ROWS_PER_BLOCK))


def apply(spec: MarkSpec, name: str, values: np.ndarray) -> np.ndarray:
    """`values` (float32, changed in place) with the recipient's mark added."""
    amplitude = np.float32(spec.alpha * float(values.std()))
    flat = values.reshape(values.shape[0], -1)
    for b in blocks(values.shape):
        chips = pattern(spec.key, spec.version, spec.recipient, name, values.shape, b)
        rows = flat[b * ROWS_PER_BLOCK: b * ROWS_PER_BLOCK + chips.shape[0]]
        rows += chips.astype(np.float32) * amplitude
    return values
