"""Decide what a model file is from its content, and summarise it.

The file extension is not trusted: a ``.bin`` holding a pickle is reported as a pickle.
Formats with a magic number or a distinctive structure (safetensors, GGUF, npy, zip,
protocol 2+ pickles) are parsed strictly once recognised, and a malformed one raises
``FormatError`` rather than passing as opaque data. ONNX has no magic, so a failed
protobuf walk simply means "not ONNX". Only headers are read, through ``read_at``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Final

from custody.data.formats import gguf, numpy_format, onnx, pickles, safetensors
from custody.data.formats.tensor_digests import TensorSpan, gguf_spans, npy_spans, safetensors_spans
from custody.data.formats.source import ByteSource, ReadAt, open_path
from custody.data.formats.zip_archive import looks_like_zip, open_zip

KINDS: Final = (
    "safetensors",
    "gguf",
    "onnx",
    "pytorch",
    "pickle",
    "numpy",
    "numpy-zip",
    "opaque",
)
PROBE_BYTES = 64
MAX_DETAIL_ENTRIES = 64
MAX_DETAIL_STRING = 256


@dataclass(frozen=True)
class FormatInfo:
    """What a file is. ``unsafe`` means loading it as intended would run code from the file.

    ``tensors`` are the byte ranges of a safetensors or GGUF file's tensors (or a .npy file's
    array), from its validated header, for per-tensor digests; other kinds have none.
    """

    kind: str
    parameters: int | None
    unsafe: bool
    details: dict[str, Any] = field(default_factory=dict)
    tensors: tuple[TensorSpan, ...] = field(default=(), compare=False, repr=False)


def inspect(read_at: ReadAt, size: int, name: str = "") -> FormatInfo:
    """Recognise and summarise the ``size``-byte file behind ``read_at``.

    ``name`` only labels error messages; it never decides the kind.
    """
    return inspect_source(ByteSource(read_at, size, name))


def inspect_path(path: str | os.PathLike[str]) -> FormatInfo:
    """``inspect`` over a file on disk."""
    with open_path(path) as source:
        return inspect_source(source)


def inspect_source(source: ByteSource) -> FormatInfo:
    """``inspect`` over an existing ``ByteSource``."""
    name = source.name
    start = source.prefix(PROBE_BYTES)
    if safetensors.looks_like_safetensors(start, source.size):
        return _safetensors(source)
    if start[:4] == gguf.MAGIC:
        return _gguf(source)
    if numpy_format.is_npy_start(start):
        return _npy(source)
    if looks_like_zip(start):
        return _zip(source)
    if pickles.is_pickle_start(start):
        kind, details = pickles.inspect_pickle(source)
        return FormatInfo(kind=kind, parameters=None, unsafe=True, details=details)
    if name.lower().endswith(".safetensors"):
        return _safetensors(source)  # named safetensors but not shaped like one: say why
    model = onnx.recognise(source)
    if model is not None:
        return _onnx(model)
    scan = pickles.looks_like_early_protocol_pickle(source)
    if scan is not None:
        return FormatInfo(kind="pickle", parameters=None, unsafe=True, details=scan.details())
    return FormatInfo(kind="opaque", parameters=None, unsafe=False, details={})


def _safetensors(source: ByteSource) -> FormatInfo:
    header = safetensors.read_header(source)
    return FormatInfo(
        kind="safetensors",
        parameters=header.parameter_count,
        unsafe=False,
        details={
            "tensor_count": len(header.tensors),
            "dtypes": header.dtype_counts(),
            "header_bytes": header.header_length,
            "metadata": _bounded_strings(header.metadata),
        },
        tensors=safetensors_spans(header),
    )


def _gguf(source: ByteSource) -> FormatInfo:
    header = gguf.read_header(source)
    details: dict[str, Any] = {
        "gguf_version": header.version,
        "byte_order": header.byte_order,
        "tensor_count": len(header.tensors),
        "metadata_count": len(header.metadata),
        "alignment": header.alignment,
        "ggml_types": header.type_counts(),
    }
    for key in ("general.architecture", "general.name", "general.file_type"):
        value = header.metadata.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            details[key] = value[:MAX_DETAIL_STRING] if isinstance(value, str) else value
    return FormatInfo(kind="gguf", parameters=header.parameter_count, unsafe=False, details=details,
                      tensors=gguf_spans(header))


def _npy(source: ByteSource) -> FormatInfo:
    header = numpy_format.read_npy(source)
    details = header.details()
    if header.has_object:
        details.update(numpy_format.object_payload_details(source, header))
    return FormatInfo(
        kind="numpy", parameters=header.parameter_count, unsafe=header.has_object, details=details,
        tensors=npy_spans(header),
    )


def _zip(source: ByteSource) -> FormatInfo:
    with open_zip(source) as archive:
        names = archive.namelist()
    if pickles.torch_zip_members(names):
        return FormatInfo(
            kind="pytorch",
            parameters=None,
            unsafe=True,
            details=pickles.inspect_torch_zip(source, names),
        )
    if names and all(member.endswith(".npy") for member in names):
        summary = numpy_format.read_npz(source)
        members = {
            member: {"dtype": header.dtype, "shape": list(header.shape)}
            for member, header in list(summary.members.items())[:MAX_DETAIL_ENTRIES]
        }
        return FormatInfo(
            kind="numpy-zip",
            parameters=summary.parameter_count,
            unsafe=summary.has_object,
            details={
                "member_count": len(summary.members),
                "members": members,
                "has_object": summary.has_object,
            },
        )
    pickled = [member for member in names if member.endswith(".pkl")]
    return FormatInfo(
        kind="opaque",
        parameters=None,
        unsafe=bool(pickled),
        details={"container": "zip", "member_count": len(names), "pickle_members": len(pickled)},
    )


def _onnx(model: onnx.OnnxModel) -> FormatInfo:
    return FormatInfo(
        kind="onnx",
        parameters=model.parameter_count,
        unsafe=False,
        details={
            "ir_version": model.ir_version,
            "opset_imports": dict(list(model.opset_imports.items())[:MAX_DETAIL_ENTRIES]),
            "producer_name": model.producer_name,
            "producer_version": model.producer_version,
            "initializer_count": model.initializer_count,
            "sparse_initializer_count": model.sparse_initializer_count,
            "external_initializer_count": model.external_initializer_count,
            "data_types": model.data_types,
        },
    )


def _bounded_strings(values: dict[str, str]) -> dict[str, str]:
    """A report-sized copy: at most 64 entries, long values cut."""
    kept: dict[str, str] = {}
    for key, value in list(values.items())[:MAX_DETAIL_ENTRIES]:
        kept[key[:MAX_DETAIL_STRING]] = value[:MAX_DETAIL_STRING]
    return kept
