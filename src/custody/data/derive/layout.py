"""The derivative's file, laid out from the plan before any weight is read.

A safetensors file or a GGUF file is a header that fixes every tensor's offset and then the
tensors' bytes; both are known from the plan, so the output is written as one stream, tensor by
tensor, and its size is known before it starts (the sealed writer needs it).
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass

from custody.data.derive.transforms import OutputTensor, TensorPlan

GGUF_ALIGNMENT = 32


@dataclass(frozen=True, slots=True)
class Layout:
    preamble: bytes  # everything before the first tensor's bytes
    outputs: tuple[OutputTensor, ...]  # in file order
    padding: tuple[int, ...]  # zero bytes written after each output

    @property
    def size(self) -> int:
        return len(self.preamble) + sum(o.nbytes for o in self.outputs) + sum(self.padding)


def safetensors_layout(plans: list[TensorPlan], metadata: dict[str, str]) -> Layout:
    header: dict = {"__metadata__": dict(metadata)}
    offset = 0
    outputs = [o for p in plans for o in p.outputs]
    for o in outputs:
        header[o.name] = {"dtype": o.kind, "shape": list(o.shape), "data_offsets": [offset, offset + o.nbytes]}
        offset += o.nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    return Layout(struct.pack("<Q", len(raw)) + raw, tuple(outputs), (0,) * len(outputs))


def gguf_layout(plans: list[TensorPlan], metadata: dict[str, str], name: str) -> Layout:
    """A GGUF v3 preamble written by the gguf package's own writer, into memory."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.gguf_writer import WriterState

    writer = GGUFWriter(path=None, arch="custody-derivative")
    writer.add_name(name)
    for key, value in sorted(metadata.items()):
        writer.add_string(f"custody.{key}", value)
    outputs = [o for p in plans for o in p.outputs]
    for o in outputs:
        raw = GGMLQuantizationType[o.kind if o.kind in ("Q8_0", "Q4_0") else _GGML[o.kind]]
        byte_shape = _byte_shape(o)
        writer.add_tensor_info(o.name, byte_shape, np.dtype(np.uint8) if o.kind in ("Q8_0", "Q4_0") else _NP[o.kind],
                               o.nbytes, raw_dtype=raw)
    buffer = io.BytesIO()
    writer.fout = [buffer]  # the writer's header, key-value and tensor-info steps, into memory
    writer.state = WriterState.EMPTY
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    preamble = buffer.getvalue()
    preamble += b"\0" * (-len(preamble) % GGUF_ALIGNMENT)
    return Layout(preamble, tuple(outputs), tuple(-o.nbytes % GGUF_ALIGNMENT for o in outputs))


_GGML = {"F32": "F32", "F16": "F16", "BF16": "BF16", "I8": "I8", "I16": "I16", "I32": "I32", "I64": "I64"}


def _byte_shape(o: OutputTensor) -> tuple[int, ...]:
    """The shape the gguf writer takes for `o`: quantized tensors as their rows of block bytes."""
    if o.kind in ("Q8_0", "Q4_0"):
        per_block = 34 if o.kind == "Q8_0" else 18
        return (*o.shape[:-1], o.shape[-1] // 32 * per_block)
    return o.shape


class _Np(dict):
    def __missing__(self, key: str):  # noqa: ANN204
        import numpy as np

        return np.dtype({"F32": "<f4", "F16": "<f2", "I8": "i1", "I16": "<i2", "I32": "<i4", "I64": "<i8"}[key])


_NP = _Np()
