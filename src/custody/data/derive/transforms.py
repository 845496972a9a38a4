"""What a recipe does to the tensors of one model, planned from headers and applied one tensor at a time.

`plan` decides, from the source headers alone, which tensors are kept and what each becomes
(name, dtype, shape, byte length), so the output's header is written before any weight is
read. `Transformer.apply` then turns one source tensor into its output arrays. Values are
worked on in float32; only float tensors change, other tensors are kept as they are.
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from custody.data.derive import marks
from custody.data.formats import safetensors
from custody.domain.errors import InvalidInput
from custody.domain.recipes import Recipe

FLOATS = {"F16", "BF16", "F32", "F64"}
CAST = {"fp32": "F32", "fp16": "F16", "bf16": "BF16"}
NUMPY = {"F16": np.dtype("<f2"), "BF16": np.dtype(ml_dtypes.bfloat16), "F32": np.dtype("<f4"),
         "F64": np.dtype("<f8"), "I8": np.dtype("i1"), "U8": np.dtype("u1")}
BLOCK = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block|blk)\.(\d+)\.")
SCALE_SUFFIX = ".qscale"
GGUF_BLOCK = 32  # Q8_0 and Q4_0 quantize rows in blocks of 32


@dataclass(frozen=True, slots=True)
class SourceTensor:
    name: str
    dtype: str  # safetensors dtype name
    shape: tuple[int, ...]
    file: str


@dataclass(frozen=True, slots=True)
class OutputTensor:
    """One output array: `kind` says how it is stored (a safetensors dtype, or "Q8_0"/"Q4_0"/"F32"... for GGUF)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True, slots=True)
class TensorPlan:
    source: SourceTensor
    outputs: tuple[OutputTensor, ...]  # the tensor itself, then its scales when quantized
    marked: bool


def _is_float(t: SourceTensor) -> bool:
    return t.dtype in FLOATS


def kept(recipe: Recipe, tensors: list[SourceTensor]) -> list[SourceTensor]:
    """The tensors `subset` and `truncate` keep, in source order; InvalidInput when none are left."""
    out = list(tensors)
    subset = recipe.step("subset")
    if subset is not None:
        include = [g for g in (subset.get("include") or "").split("|") if g]
        exclude = [g for g in (subset.get("exclude") or "").split("|") if g]
        out = [t for t in out if (not include or any(fnmatch.fnmatchcase(t.name, g) for g in include))
               and not any(fnmatch.fnmatchcase(t.name, g) for g in exclude)]
    truncate = recipe.step("truncate")
    if truncate is not None:
        blocks = sorted({int(m.group(1)) for t in out if (m := BLOCK.search(t.name))})
        if not blocks:
            raise InvalidInput("truncate: the model has no numbered blocks (layers.N., h.N., blocks.N., blk.N.)")
        first, last = truncate.get("first"), truncate.get("last")
        keep = set(blocks[:int(first)] if first else blocks[-int(last or 0):])
        out = [t for t in out if not (m := BLOCK.search(t.name)) or int(m.group(1)) in keep]
    if not out:
        raise InvalidInput(f"recipe {recipe.text} keeps no tensor of the model")
    return out


def plan(recipe: Recipe, tensors: list[SourceTensor], mark: marks.MarkSpec | None) -> list[TensorPlan]:
    """Every kept tensor's outputs, from headers alone."""
    names = {t.name for t in tensors}
    plans: list[TensorPlan] = []
    for t in kept(recipe, tensors):
        is_marked = mark is not None and marks.markable(t.name, t.shape, _is_float(t), mark.include)
        outputs = _outputs(recipe, t)
        for extra in outputs[1:]:
            if extra.name in names:
                raise InvalidInput(f"the model already has a tensor named {extra.name!r}: its scales cannot be stored")
        plans.append(TensorPlan(t, outputs, is_marked))
    _check_reduced(recipe, plans)
    return plans


KEPT_WHOLE = 0.05  # share of a quantized derivative's float elements that may keep full precision (norms, biases)


def _check_reduced(recipe: Recipe, plans: list[TensorPlan]) -> None:
    """A recipe that says 8 or 4 bits must keep (almost) every float element at that precision: the
    decision and the approvals were made on those bits."""
    if recipe.bits not in (4, 8) or recipe.step("cast") is not None:
        return
    floats = [p for p in plans if _is_float(p.source)]
    total = sum(math.prod(p.source.shape) for p in floats)
    whole = sum(math.prod(p.source.shape) for p in floats if p.outputs[0].kind in FLOATS)
    if total and whole > KEPT_WHOLE * total:
        raise InvalidInput(f"recipe {recipe.text} would keep {whole / total:.0%} of the weights at full precision "
                           f"(one-dimensional tensors are not quantized): it is not a {recipe.bits}-bit derivative")


def _outputs(recipe: Recipe, t: SourceTensor) -> tuple[OutputTensor, ...]:
    n = int(np.prod(t.shape, dtype=np.int64)) if t.shape else 1
    same = (OutputTensor(t.name, t.dtype, t.shape, n * safetensors.DTYPE_BITS[t.dtype] // 8),)
    if not _is_float(t):
        return same if recipe.output == "safetensors" else _gguf_plain(t, n)
    if (cast := recipe.step("cast")) is not None:
        dtype = CAST[cast.get("dtype") or ""]
        return (OutputTensor(t.name, dtype, t.shape, n * NUMPY[dtype].itemsize),)
    rows = t.shape[0] if len(t.shape) >= 2 else 0
    cols = n // rows if rows else 0
    if recipe.step("int8") is not None and rows:
        return (OutputTensor(t.name, "I8", t.shape, n), OutputTensor(t.name + SCALE_SUFFIX, "F32", (rows,), rows * 4))
    if (int4 := recipe.step("int4")) is not None and rows:
        group = int(int4.get("group") or 64)
        if cols % group:
            raise InvalidInput(f"int4: tensor {t.name!r} has {cols} columns, not a multiple of group {group}: "
                               "pick a group that divides them, or leave the tensor out (subset:exclude=)")
        return (OutputTensor(t.name, "U8", (rows, cols // 2), n // 2),
                OutputTensor(t.name + SCALE_SUFFIX, "F16", (rows, cols // group), rows * (cols // group) * 2))
    if (gguf := recipe.step("gguf")) is not None:
        if rows and t.shape[-1] % GGUF_BLOCK:
            raise InvalidInput(f"gguf: tensor {t.name!r} is {t.shape[-1]} wide, not a multiple of {GGUF_BLOCK}: "
                               "it cannot be quantized; leave it out (subset:exclude=)")
        if rows:
            kind = (gguf.get("type") or "").upper()
            per_block = 34 if kind == "Q8_0" else 18  # fp16 scale + 32 int8, or + 16 bytes of nibbles
            return (OutputTensor(t.name, kind, t.shape, n // GGUF_BLOCK * per_block),)
        return (OutputTensor(t.name, "F32", t.shape, n * 4),)
    return same


def _gguf_plain(t: SourceTensor, n: int) -> tuple[OutputTensor, ...]:
    gguf_kinds = {"I8": 1, "I16": 2, "I32": 4, "I64": 8}
    if t.dtype not in gguf_kinds:
        raise InvalidInput(f"tensor {t.name!r} ({t.dtype}) has no GGUF type: leave it out with subset:exclude=")
    return (OutputTensor(t.name, t.dtype, t.shape, n * gguf_kinds[t.dtype]),)


class Transformer:
    """Applies a recipe's value steps, the mark and the precision step to one tensor at a time."""

    def __init__(self, recipe: Recipe, mark: marks.MarkSpec | None) -> None:
        self.recipe = recipe
        self.mark = mark
        self._rng = np.random.default_rng(int.from_bytes(os.urandom(32), "big"))  # noise nobody can subtract

    def values(self, p: TensorPlan, source: np.ndarray) -> np.ndarray:
        """The float32 values after pruning, noise and the mark (before any change of precision)."""
        x = np.array(source, dtype=np.float32)
        if (prune := self.recipe.step("prune")) is not None and x.ndim >= 2 and x.size:
            k = int(x.size * float(prune.get("fraction") or 0))
            if k:
                threshold = np.partition(np.abs(x).ravel(), k - 1)[k - 1]
                x[np.abs(x) <= threshold] = 0
        if (noise := self.recipe.step("noise")) is not None and x.size:
            x += self._rng.normal(0.0, float(noise.get("sigma") or 0) * float(x.std()), size=x.shape).astype(np.float32)
        if p.marked and self.mark is not None:
            x = marks.apply(self.mark, p.source.name, x)
        return x

    def apply(self, p: TensorPlan, source: np.ndarray) -> list[np.ndarray]:
        """The output arrays of one tensor, in `p.outputs` order, as the bytes to store."""
        if not _is_float(p.source):
            return [np.ascontiguousarray(source)]
        x = self.values(p, source)
        out = p.outputs[0]
        if out.kind in NUMPY and len(p.outputs) == 1:
            return [x.astype(NUMPY[out.kind])]
        if out.kind == "I8":
            return list(quantize_int8(x))
        if out.kind == "U8":
            return list(quantize_int4(x, out.shape[0], int(self.recipe.step("int4").get("group") or 64)))
        from gguf import GGMLQuantizationType, quants

        return [quants.quantize(x.reshape(out.shape), GGMLQuantizationType[out.kind])]


def quantize_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (output channel) symmetric int8: x ≈ q * scale[row]."""
    rows = x.reshape(x.shape[0], -1)
    scale = np.abs(rows).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(rows / scale[:, None]), -127, 127).astype(np.int8)
    return q.reshape(x.shape), scale.astype(np.float32)


def quantize_int4(x: np.ndarray, rows: int, group: int) -> tuple[np.ndarray, np.ndarray]:
    """Group-wise symmetric int4 in [-8, 7], two per byte (low nibble first): x ≈ q * scale[row, group]."""
    blocks = x.reshape(rows, -1, group)
    scale = np.abs(blocks).max(axis=2) / 7.0
    scale[scale == 0] = 1.0
    scale = scale.astype(np.float16).astype(np.float32)
    scale[scale == 0] = 1.0
    q = (np.clip(np.rint(blocks / scale[:, :, None]), -8, 7).astype(np.int16) + 8).astype(np.uint8).reshape(rows, -1)
    packed = (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)
    return packed, scale.astype(np.float16)


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return (q.reshape(q.shape[0], -1).astype(np.float32) * scale.astype(np.float32)[:, None]).reshape(q.shape)


def dequantize_int4(packed: np.ndarray, scale: np.ndarray) -> np.ndarray:
    rows = packed.shape[0]
    q = np.empty((rows, packed.shape[1] * 2), dtype=np.int16)
    q[:, 0::2] = packed & 0x0F
    q[:, 1::2] = packed >> 4
    groups = scale.shape[1]
    values = (q - 8).astype(np.float32).reshape(rows, groups, -1) * scale.astype(np.float32)[:, :, None]
    return values.reshape(rows, -1)
