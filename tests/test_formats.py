"""Model-format recognition: real files from the reference writers, hand-made broken ones, fuzz.

Nothing here loads a pickle; pickled bytes are produced with ``pickle.dumps`` and only read
back by the static scanner.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import pickle
import random
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custody.data.formats import gguf as gguf_format
from custody.data.formats import numpy_format, pickles, safetensors
from custody.data.formats import onnx as onnx_format
from custody.data.formats.detect import KINDS, FormatInfo, inspect, inspect_path
from custody.domain.errors import FormatError

# --------------------------------------------------------------------------- helpers


def reader(data: bytes) -> tuple[Callable[[int, int], bytes], int]:
    def read_at(offset: int, length: int) -> bytes:
        return data[offset : offset + length]

    return read_at, len(data)


def inspect_bytes(data: bytes, name: str = "") -> FormatInfo:
    read_at, size = reader(data)
    return inspect(read_at, size, name)


def assert_format_error(call: Callable[[], Any], name: str = "") -> FormatError:
    with pytest.raises(FormatError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    if name:
        assert name in message
    return caught.value


def safetensors_file(header: Any, data: bytes = b"", raw_header: bytes | None = None) -> bytes:
    body = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body + data


def safetensors_from_arrays(
    arrays: dict[str, np.ndarray], dtypes: dict[str, str], metadata: dict[str, str] | None = None
) -> bytes:
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    data = bytearray()
    for name, array in arrays.items():
        raw = np.ascontiguousarray(array).tobytes()
        header[name] = {
            "dtype": dtypes[name],
            "shape": list(array.shape),
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    body = json.dumps(header).encode()
    body += b" " * ((8 - len(body) % 8) % 8)
    return struct.pack("<Q", len(body)) + body + bytes(data)


def parse_st(data: bytes, name: str = "x.safetensors") -> safetensors.SafetensorsHeader:
    read_at, size = reader(data)
    return safetensors.parse_header(read_at, size, name)


# --------------------------------------------------------------------------- safetensors


def test_safetensors_written_by_hand_round_trips_values() -> None:
    arrays = {
        "embed.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
        "norm.bias": np.arange(5, dtype=ml_dtypes.bfloat16),
        "scale": np.array([1.5, -2.0], dtype=ml_dtypes.float8_e4m3fn),
        "ids": np.arange(7, dtype=np.int64),
        "mask": np.array([True, False, True]),
    }
    dtypes = {
        "embed.weight": "F32",
        "norm.bias": "BF16",
        "scale": "F8_E4M3",
        "ids": "I64",
        "mask": "BOOL",
    }
    data = safetensors_from_arrays(arrays, dtypes, metadata={"format": "pt"})
    header = parse_st(data)
    assert header.parameter_count == 12 + 5 + 2 + 7 + 3
    assert header.metadata == {"format": "pt"}
    assert header.data_start == 8 + header.header_length
    assert header.data_length == len(data) - header.data_start
    for name, array in arrays.items():
        info = header.tensors[name]
        assert info.shape == array.shape and info.dtype == dtypes[name]
        begin, end = header.absolute_range(name)
        assert (begin, end) == (header.data_start + info.begin, header.data_start + info.end)
        restored = np.frombuffer(
            data[begin:end], dtype=safetensors.numpy_dtype(info.dtype)
        ).reshape(info.shape)
        assert np.array_equal(restored.astype(np.float64), array.astype(np.float64))
    info = inspect_bytes(data, "model.bin")
    assert info.kind == "safetensors" and info.parameters == 29 and not info.unsafe
    assert info.details["tensor_count"] == 5
    assert info.details["dtypes"] == {"BF16": 1, "BOOL": 1, "F32": 1, "F8_E4M3": 1, "I64": 1}
    json.dumps(info.details)


def test_safetensors_cross_check_with_reference_writer(tmp_path: Path) -> None:
    st_numpy = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "ref.safetensors"
    st_numpy.save_file(
        {"a": np.zeros((3, 5), np.float16), "b": np.ones(7, np.int32)},
        str(path),
        metadata={"k": "v"},
    )
    info = inspect_path(path)
    assert info.kind == "safetensors" and info.parameters == 22
    assert info.details["metadata"] == {"k": "v"}


def test_safetensors_offsets_in_any_order_zero_size_and_packed_dtypes() -> None:
    header = {
        "b": {"dtype": "F4", "shape": [2, 3, 2], "data_offsets": [8, 14]},
        "a": {"dtype": "U16", "shape": [4], "data_offsets": [0, 8]},
        "empty": {"dtype": "F32", "shape": [0, 5], "data_offsets": [14, 14]},
        "c64": {"dtype": "C64", "shape": [1], "data_offsets": [14, 22]},
        "e8": {"dtype": "F8_E8M0", "shape": [2], "data_offsets": [22, 24]},
    }
    parsed = parse_st(safetensors_file(header, bytes(24)))
    assert list(parsed.tensors) == ["a", "b", "empty", "c64", "e8"]
    assert parsed.parameter_count == 4 + 12 + 0 + 1 + 2
    # An empty file body with no tensors is a valid (if useless) safetensors file.
    assert parse_st(safetensors_file({})).parameter_count == 0


def test_numpy_dtype_mapping() -> None:
    assert safetensors.numpy_dtype("F16") == np.dtype("<f2")
    assert safetensors.numpy_dtype("BF16") == np.dtype(ml_dtypes.bfloat16)
    assert safetensors.numpy_dtype("F8_E5M2") == np.dtype(ml_dtypes.float8_e5m2)
    assert safetensors.numpy_dtype("U64") == np.dtype("<u8")
    for dtype in safetensors.DTYPE_BITS:
        if safetensors.DTYPE_BITS[dtype] % 8 == 0:
            assert safetensors.numpy_dtype(dtype).itemsize * 8 == safetensors.DTYPE_BITS[dtype]
    with pytest.raises(FormatError):
        safetensors.numpy_dtype("F4")
    with pytest.raises(FormatError):
        safetensors.numpy_dtype("Q4")


GOOD_ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    ("case", "data"),
    [
        ("shorter than the length field", b"\x05\x00\x00"),
        ("header length past end", struct.pack("<Q", 500) + b'{"a": 1}'),
        ("oversized header length", struct.pack("<Q", 100_000_001) + b"{}"),
        ("huge header length", b"\xff" * 8 + b"{}"),
        (
            "offsets past the end",
            safetensors_file(
                {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8)
            ),
        ),
        (
            "overlapping tensors",
            safetensors_file(
                {
                    "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
                },
                bytes(12),
            ),
        ),
        (
            "gap",
            safetensors_file(
                {
                    "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "b": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]},
                },
                bytes(16),
            ),
        ),
        (
            "gap at start",
            safetensors_file(
                {"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)
            ),
        ),
        ("trailing bytes", safetensors_file({"a": GOOD_ENTRY}, bytes(12))),
        (
            "shape/size mismatch",
            safetensors_file(
                {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)
            ),
        ),
        (
            "unknown dtype",
            safetensors_file(
                {"a": {"dtype": "F128", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)
            ),
        ),
        ("non-object JSON", safetensors_file([1, 2, 3])),
        ("JSON string", safetensors_file("hello")),
        (
            "duplicate keys",
            safetensors_file(
                None,
                bytes(8),
                raw_header=b'{"a": %s, "a": %s}'
                % (json.dumps(GOOD_ENTRY).encode(), json.dumps(GOOD_ENTRY).encode()),
            ),
        ),
        ("invalid UTF-8", safetensors_file(None, raw_header=b'{"\xff\xfe": 1}')),
        ("invalid JSON", safetensors_file(None, raw_header=b'{"a": ')),
        ("NaN constant", safetensors_file(None, raw_header=b'{"a": NaN}')),
        (
            "deep nesting",
            safetensors_file(None, raw_header=b"{" + b'"a":[' * 5000 + b"]" * 5000 + b"}"),
        ),
        (
            "begin after end",
            safetensors_file(
                {"a": {"dtype": "U8", "shape": [0], "data_offsets": [4, 0]}}, bytes(4)
            ),
        ),
        (
            "negative dimension",
            safetensors_file({"a": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 0]}}),
        ),
        (
            "bool dimension",
            safetensors_file(
                {"a": {"dtype": "U8", "shape": [True], "data_offsets": [0, 1]}}, bytes(1)
            ),
        ),
        (
            "float offsets",
            safetensors_file(
                {"a": {"dtype": "U8", "shape": [1], "data_offsets": [0.0, 1.0]}}, bytes(1)
            ),
        ),
        (
            "three offsets",
            safetensors_file(
                {"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1, 2]}}, bytes(1)
            ),
        ),
        (
            "rank above limit",
            safetensors_file(
                {"a": {"dtype": "U8", "shape": [1] * 65, "data_offsets": [0, 1]}}, bytes(1)
            ),
        ),
        (
            "packed dtype not filling bytes",
            safetensors_file(
                {"a": {"dtype": "F4", "shape": [3], "data_offsets": [0, 1]}}, bytes(1)
            ),
        ),
        ("empty tensor name", safetensors_file({"": GOOD_ENTRY}, bytes(8))),
        ("tensor entry not an object", safetensors_file({"a": [1, 2]})),
        ("metadata not string to string", safetensors_file({"__metadata__": {"k": 1}})),
        ("metadata not an object", safetensors_file({"__metadata__": ["k"]})),
        (
            "dimension product overflows usize",
            safetensors_file(
                {"a": {"dtype": "U8", "shape": [2**40, 2**40], "data_offsets": [0, 2**80]}}
            ),
        ),
    ],
)
def test_safetensors_rejects(case: str, data: bytes) -> None:
    assert_format_error(lambda: parse_st(data, "bad.safetensors"), "bad.safetensors")
    # Named .safetensors, the detector must explain rather than call it opaque.
    assert_format_error(lambda: inspect_bytes(data, "bad.safetensors"), "bad.safetensors")


def test_safetensors_metadata_null_is_accepted() -> None:
    assert (
        parse_st(safetensors_file({"__metadata__": None, "a": GOOD_ENTRY}, bytes(8))).metadata == {}
    )


# --------------------------------------------------------------------------- GGUF


def write_gguf(path: Path) -> int:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_context_length(128)
    writer.add_float32("f", 0.5)
    writer.add_bool("b", True)
    writer.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "hello", "w\u00f6rld"])
    writer.add_array("tokenizer.ggml.scores", [0.0, 1.0, 2.0, 3.0])
    writer.add_string("long", "x" * 5000)
    writer.add_tensor("tok_embd.weight", np.zeros((10, 16), np.float32))
    writer.add_tensor("norm.weight", np.ones(16, np.float16))
    writer.add_tensor("bias", np.zeros(3, np.int32))
    # A quantised tensor: 2 rows of 64 elements in Q8_0 (34 bytes per 32 elements).
    writer.add_tensor(
        "q.weight", np.zeros((2, 68), np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_0
    )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return 160 + 16 + 3 + 128


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_gguf(path)
    return path.read_bytes()


def test_gguf_from_reference_writer(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    expected = write_gguf(path)
    info = inspect_path(path)
    assert info.kind == "gguf" and info.parameters == expected and not info.unsafe
    assert info.details["gguf_version"] == 3
    assert info.details["tensor_count"] == 4
    assert info.details["general.architecture"] == "llama"
    assert info.details["ggml_types"] == {"F16": 1, "F32": 1, "I32": 1, "Q8_0": 1}
    json.dumps(info.details)
    data = path.read_bytes()
    read_at, size = reader(data)
    header = gguf_format.parse_header(read_at, size, "tiny.gguf")
    assert header.metadata["general.name"] == "tiny"
    assert header.metadata["tokenizer.ggml.tokens"] == gguf_format.GgufArray("string", 4)
    assert header.metadata["long"].startswith("<string of 5000 bytes")
    assert header.tensors["q.weight"].shape == (64, 2)
    assert header.tensors["q.weight"].byte_length == 2 * 2 * 34
    assert header.data_start % header.alignment == 0


def test_gguf_every_truncation_is_a_format_error(gguf_bytes: bytes) -> None:
    header = gguf_format.parse_header(*reader(gguf_bytes))
    data_end = header.data_start + max(t.offset + t.byte_length for t in header.tensors.values())
    for cut in [*range(4, header.data_start + 1, 3), data_end - 1]:
        truncated = gguf_bytes[:cut]
        assert_format_error(lambda: inspect_bytes(truncated, "cut.gguf"), "cut.gguf")  # noqa: B023
    # Only the alignment padding after the last tensor may be missing.
    assert inspect_bytes(gguf_bytes[:data_end]).kind == "gguf"


def gguf_raw(version: int = 3, tensors: int = 0, kvs: int = 0, body: bytes = b"") -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, tensors, kvs) + body


def gguf_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


@pytest.mark.parametrize(
    ("case", "data"),
    [
        ("absurd tensor count", gguf_raw(tensors=2**63)),
        ("absurd kv count", gguf_raw(kvs=2**40)),
        ("counts beyond file size", gguf_raw(tensors=50, kvs=0)),
        ("version 1", gguf_raw(version=1)),
        ("unknown version", gguf_raw(version=77)),
        ("absurd key length", gguf_raw(kvs=1, body=struct.pack("<Q", 2**62) + bytes(16))),
        (
            "absurd string value",
            gguf_raw(kvs=1, body=gguf_string("k") + struct.pack("<IQ", 8, 2**60)),
        ),
        (
            "absurd array count",
            gguf_raw(kvs=1, body=gguf_string("k") + struct.pack("<IIQ", 9, 8, 2**60)),
        ),
        (
            "array past end",
            gguf_raw(kvs=1, body=gguf_string("k") + struct.pack("<IIQ", 9, 4, 1000) + bytes(8)),
        ),
        (
            "unknown value type",
            gguf_raw(kvs=1, body=gguf_string("k") + struct.pack("<I", 13) + bytes(8)),
        ),
        (
            "unknown array type",
            gguf_raw(kvs=1, body=gguf_string("k") + struct.pack("<IIQ", 9, 99, 1) + bytes(8)),
        ),
        ("duplicate key", gguf_raw(kvs=2, body=(gguf_string("k") + struct.pack("<IB", 0, 1)) * 2)),
        (
            "bad alignment",
            gguf_raw(kvs=1, body=gguf_string("general.alignment") + struct.pack("<II", 4, 3)),
        ),
        (
            "too many dimensions",
            gguf_raw(
                tensors=1,
                body=gguf_string("t")
                + struct.pack("<I", 9)
                + struct.pack("<9Q", *[1] * 9)
                + struct.pack("<IQ", 0, 0)
                + bytes(64),
            ),
        ),
        (
            "unknown ggml type",
            gguf_raw(
                tensors=1,
                body=gguf_string("t")
                + struct.pack("<IQ", 1, 4)
                + struct.pack("<IQ", 4, 0)
                + bytes(64),
            ),
        ),
        (
            "tensor data past end",
            gguf_raw(
                tensors=1,
                body=gguf_string("t")
                + struct.pack("<IQ", 1, 1000)
                + struct.pack("<IQ", 0, 0)
                + bytes(40),
            ),
        ),
        (
            "misplaced offset",
            gguf_raw(
                tensors=1,
                body=gguf_string("t")
                + struct.pack("<IQ", 1, 1)
                + struct.pack("<IQ", 0, 32)
                + bytes(96),
            ),
        ),
        (
            "duplicate tensor",
            gguf_raw(
                tensors=2,
                body=(gguf_string("t") + struct.pack("<IQ", 1, 1) + struct.pack("<IQ", 0, 0)) * 2
                + bytes(96),
            ),
        ),
        (
            "quantised row not a whole block",
            gguf_raw(
                tensors=1,
                body=gguf_string("t")
                + struct.pack("<IQ", 1, 16)
                + struct.pack("<IQ", 8, 0)
                + bytes(96),
            ),
        ),
    ],
)
def test_gguf_rejects(case: str, data: bytes) -> None:
    read_at, size = reader(data)
    assert_format_error(lambda: gguf_format.parse_header(read_at, size, "bad.gguf"), "bad.gguf")
    assert_format_error(lambda: inspect_bytes(data, "bad.gguf"), "bad.gguf")


def test_gguf_big_endian_header_is_read() -> None:
    body = gguf_string("k").replace(struct.pack("<Q", 1), struct.pack(">Q", 1)) + struct.pack(
        ">IB", 0, 7
    )
    data = b"GGUF" + struct.pack(">IQQ", 3, 0, 1) + body
    header = gguf_format.parse_header(*reader(data))
    assert (
        header.byte_order == "big" and header.metadata == {"k": 7} and header.parameter_count == 0
    )


# --------------------------------------------------------------------------- ONNX


def make_onnx_model(**save_kwargs: Any) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.zeros((4, 5), np.float32), name="w")
    bias = numpy_helper.from_array(np.zeros((5,), np.float32), name="b")
    table = numpy_helper.from_array(np.zeros((3, 2, 2), np.int64), name="table")
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([1.0, 2.0], np.float32), name="sv"),
        numpy_helper.from_array(np.array([0, 7], np.int64), name="si"),
        [3, 4],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        initializer=[weight, bias, table],
        sparse_initializer=[sparse],
    )
    return helper.make_model(
        graph, producer_name="custody-tests", opset_imports=[helper.make_opsetid("", 17)]
    )


def test_onnx_from_reference_writer(tmp_path: Path) -> None:
    import onnx

    path = tmp_path / "model.onnx"
    onnx.save_model(make_onnx_model(), str(path))
    info = inspect_path(path)
    assert info.kind == "onnx" and not info.unsafe
    assert info.parameters == 20 + 5 + 12 + 12
    assert info.details["initializer_count"] == 3
    assert info.details["sparse_initializer_count"] == 1
    assert info.details["opset_imports"] == {"ai.onnx": 17}
    assert info.details["producer_name"] == "custody-tests"
    assert info.details["data_types"] == {"FLOAT": 2, "INT64": 1}
    json.dumps(info.details)
    # The file name plays no part.
    renamed = tmp_path / "weights.bin"
    path.rename(renamed)
    assert inspect_path(renamed).kind == "onnx"


def test_onnx_with_external_data_counts_parameters(tmp_path: Path) -> None:
    import onnx
    from onnx import helper, numpy_helper

    big = numpy_helper.from_array(np.zeros((64, 64), np.float32), name="big")
    graph = helper.make_graph([], "g", [], [], initializer=[big])
    model = helper.make_model(graph)
    path = tmp_path / "ext.onnx"
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.data",
        size_threshold=0,
    )
    info = inspect_path(path)
    assert info.kind == "onnx" and info.parameters == 4096
    assert info.details["external_initializer_count"] == 1


def varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def pb_field(number: int, payload: bytes | int) -> bytes:
    if isinstance(payload, int):
        return varint(number << 3) + varint(payload)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def hand_model(tensor: bytes) -> bytes:
    graph = pb_field(2, b"g") + pb_field(5, tensor)
    return pb_field(1, 8) + pb_field(7, graph) + pb_field(8, pb_field(2, 13))


def test_onnx_packed_dims_are_counted() -> None:
    packed = pb_field(1, varint(6) + varint(7)) + pb_field(2, 1) + pb_field(9, bytes(168))
    info = inspect_bytes(hand_model(packed))
    assert info.kind == "onnx" and info.parameters == 42
    unpacked = pb_field(1, 6) + pb_field(1, 7) + pb_field(2, 1)
    assert inspect_bytes(hand_model(unpacked)).parameters == 42


def test_onnx_malformed_graph_is_a_format_error() -> None:
    negative = pb_field(1, -3 & ((1 << 64) - 1))
    assert_format_error(lambda: inspect_bytes(hand_model(negative), "neg.onnx"), "neg.onnx")
    initializer_not_message = pb_field(1, 8) + pb_field(7, pb_field(5, 3))
    assert_format_error(lambda: inspect_bytes(initializer_not_message, "m.onnx"))
    read_at, size = reader(b"\x08\x07garbage")
    assert_format_error(lambda: onnx_format.parse_model(read_at, size, "x.onnx"), "x.onnx")


def test_onnx_test_falls_back_to_opaque(tmp_path: Path) -> None:
    import onnx

    data = make_onnx_model().SerializeToString()
    assert inspect_bytes(data[: len(data) // 2]).kind == "opaque"  # truncated: not provably ONNX
    assert inspect_bytes(b"\x08\x07" + random.Random(7).randbytes(200)).kind == "opaque"
    assert inspect_bytes(pb_field(1, 8)).kind == "opaque"  # no graph
    assert inspect_bytes(pb_field(1, 8) + pb_field(99, b"") + pb_field(7, b"")).kind == "opaque"
    onnx.save_model(make_onnx_model(), str(tmp_path / "ok.onnx"))
    assert inspect_path(tmp_path / "ok.onnx").kind == "onnx"


# --------------------------------------------------------------------------- pickles and PyTorch


class _Sentinel:
    """Pickles to a call of ``os.mkdir``; scanning must never perform it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_pickles_of_every_protocol_are_unsafe(tmp_path: Path, protocol: int) -> None:
    payload = collections.OrderedDict(
        weight=[1.0, 2.0], name="x", trap=_Sentinel(str(tmp_path / "pwned"))
    )
    path = tmp_path / "model.bin"
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    info = inspect_path(path)
    assert info.kind == "pickle" and info.unsafe and info.parameters is None
    assert "collections.OrderedDict" in info.details["pickle_imports"]
    assert f"{os.mkdir.__module__}.mkdir" in info.details["pickle_imports"]
    assert info.details["pickle_scan_complete"] is True
    assert not (tmp_path / "pwned").exists()
    json.dumps(info.details)


def test_plain_dict_pickle_named_safetensors_is_a_pickle() -> None:
    info = inspect_bytes(pickle.dumps({"a": 1, "b": [1, 2]}, protocol=4), "model.safetensors")
    assert info.kind == "pickle" and info.unsafe and info.details["pickle_protocol"] == 4


def test_pytorch_zip_is_recognised(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(collections.OrderedDict(w=1), protocol=2))
        archive.writestr("archive/data/0", bytes(64))
        archive.writestr("archive/version", b"3\n")
        archive.writestr("archive/byteorder", b"little")
    info = inspect_path(path)
    assert info.kind == "pytorch" and info.unsafe and info.parameters is None
    assert info.details["container"] == "zip"
    assert info.details["archive_prefix"] == "archive"
    assert info.details["storage_records"] == 1
    assert info.details["pickle_imports"] == ["collections.OrderedDict"]
    json.dumps(info.details)


def test_pytorch_zip_with_broken_pickle_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00Xzz")
    assert_format_error(lambda: inspect_path(path), "model.pt")


def test_legacy_torch_file_is_recognised() -> None:
    parts = [
        pickle.dumps(pickles.LEGACY_TORCH_MAGIC, protocol=2),
        pickle.dumps(1001, protocol=2),
        pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2),
        pickle.dumps(collections.OrderedDict(w=[1, 2]), protocol=2),
        pickle.dumps(["0"], protocol=2),
        struct.pack("<q", 4) + bytes(16),
    ]
    info = inspect_bytes(b"".join(parts), "old.pth")
    assert info.kind == "pytorch" and info.unsafe
    assert info.details["container"] == "legacy"
    assert info.details["pickle_imports"] == ["collections.OrderedDict"]


@pytest.mark.parametrize(
    "data",
    [
        b"\x80\x04\x95\x10\x00\x00",  # frame claims more than there is
        b"\x80\x02}q\x00(X\x01\x00\x00\x00a",  # truncated mid-pickle
        b"\x80\x03\xff\xfe",  # unknown opcode
    ],
)
def test_malformed_pickle_is_a_format_error(data: bytes) -> None:
    assert_format_error(lambda: inspect_bytes(data, "weights.bin"), "weights.bin")


def test_large_pickle_is_scanned_within_bounds() -> None:
    data = pickle.dumps(
        {"blob": bytes(6 * 1024 * 1024), "od": collections.OrderedDict()}, protocol=4
    )
    info = inspect_bytes(data)
    assert info.kind == "pickle" and info.unsafe
    assert info.details["pickle_scan_complete"] is False
    assert info.details["pickle_scanned_bytes"] <= pickles.MAX_SCAN_BYTES


@pytest.mark.parametrize(
    "text",
    [
        b"(define (f x) x)\n",
        b"]]]]",
        b'{"vocab": {"a": 1}}',
        b"hello world\n",
        b"clear\n",
        b"# README\n",
    ],
)
def test_text_files_are_opaque(text: bytes) -> None:
    info = inspect_bytes(text, "tokenizer.bin")
    assert info == FormatInfo(kind="opaque", parameters=None, unsafe=False, details={})


# --------------------------------------------------------------------------- numpy


def npy_bytes(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=version, allow_pickle=True)
    return buffer.getvalue()


def test_npy_files(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    np.save(path, np.zeros((3, 4), np.float16))
    info = inspect_path(path)
    assert info.kind == "numpy" and info.parameters == 12 and not info.unsafe
    assert info.details["dtype"] == "<f2" and info.details["shape"] == [3, 4]
    fortran = inspect_bytes(npy_bytes(np.asfortranarray(np.zeros((2, 3)))))
    assert fortran.details["fortran_order"] is True
    structured = np.zeros(5, dtype=[("a", "<f4", (3,)), ("b", "<i2")])
    assert inspect_bytes(npy_bytes(structured)).parameters == 5 * 4
    v2 = inspect_bytes(npy_bytes(np.ones(7, np.int8), version=(2, 0)))
    assert v2.details["npy_version"] == "2.0" and v2.parameters == 7
    v3 = inspect_bytes(npy_bytes(np.zeros(2, dtype=[("\u00e9", "<f8")]), version=(3, 0)))
    assert v3.details["npy_version"] == "3.0" and v3.parameters == 2
    scalar = inspect_bytes(npy_bytes(np.float64(3.0)))
    assert scalar.parameters == 1 and scalar.details["shape"] == []


def test_npy_with_objects_is_unsafe_and_not_loaded(tmp_path: Path) -> None:
    array = np.array([_Sentinel(str(tmp_path / "pwned")), 1], dtype=object)
    info = inspect_bytes(npy_bytes(array), "objects.npy")
    assert info.kind == "numpy" and info.unsafe and info.details["has_object"] is True
    assert f"{os.mkdir.__module__}.mkdir" in info.details["pickle_imports"]
    assert not (tmp_path / "pwned").exists()
    structured = np.zeros(2, dtype=[("a", "<f4"), ("b", "O")])
    assert inspect_bytes(npy_bytes(structured)).unsafe


@pytest.mark.parametrize(
    "data",
    [
        npy_bytes(np.zeros(100, np.float64))[:-8],  # data truncated
        b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f8'}",  # header runs past its declared end
        b"\x93NUMPY\x09\x00\x04\x00{}\n\n",  # unknown version
        b"\x93NUMPY\x01\x00\x08\x00__import",  # not a literal
        b"\x93NUMPY\x01\x00\x10\x00[1, 2, 3]      \n",  # not a dict
        b"\x93NUMPY\x01\x00\x40\x00{'descr': '<f8', 'fortran_order': False, 'shape': (), 'x': 1}\n",
        b"\x93NUMPY\x01\x00\x38\x00{'descr': 'nonsense', 'fortran_order': False, 'shape': ()}\n",
        b"\x93NUMPY\x01\x00\x38\x00{'descr': '<f8', 'fortran_order': False, 'shape': (-1,)}\n",
        b"\x93NUMPY\x02\x00\xff\xff\xff\x7f{}",  # oversized header length
    ],
)
def test_npy_rejects(data: bytes) -> None:
    assert_format_error(lambda: inspect_bytes(data, "bad.npy"), "bad.npy")


def test_npz_archives(tmp_path: Path) -> None:
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.zeros((2, 3)), b=np.ones(5, np.int8))
    info = inspect_path(plain)
    assert info.kind == "numpy-zip" and info.parameters == 11 and not info.unsafe
    assert info.details["members"] == {
        "a": {"dtype": "<f8", "shape": [2, 3]},
        "b": {"dtype": "|i1", "shape": [5]},
    }
    packed = tmp_path / "packed.npz"
    np.savez_compressed(packed, w=np.zeros((30, 40), np.float32))
    assert inspect_path(packed).parameters == 1200
    objects = tmp_path / "objects.npz"
    np.savez(objects, o=np.array([{"a": 1}], dtype=object))
    assert inspect_path(objects).unsafe
    read_at, size = reader(plain.read_bytes())
    assert numpy_format.parse_npz(read_at, size).parameter_count == 11


def test_npz_member_with_truncated_data_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.npy", npy_bytes(np.zeros(10))[:-1])
    assert_format_error(lambda: inspect_path(path), "bad.npz")


def test_other_zips_are_opaque(tmp_path: Path) -> None:
    path = tmp_path / "bundle.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{}")
        archive.writestr("weights.h5", b"\x89HDF\r\n\x1a\n")
    info = inspect_path(path)
    assert info.kind == "opaque" and not info.unsafe and info.details["container"] == "zip"


def test_broken_zip_is_a_format_error() -> None:
    assert_format_error(lambda: inspect_bytes(b"PK\x03\x04" + bytes(100), "x.pt"), "x.pt")


# --------------------------------------------------------------------------- detection in general


def test_empty_and_tiny_files_are_opaque() -> None:
    assert inspect_bytes(b"").kind == "opaque"
    assert inspect_bytes(b"\x00").kind == "opaque"
    assert_format_error(lambda: inspect_bytes(b"", "empty.safetensors"), "empty.safetensors")


def test_decrypting_reader_and_bounded_reads(gguf_bytes: bytes) -> None:
    """Parsers only use read_at: an XOR 'decrypting' reader works; reads stay near the header."""
    key = 0x5A
    big = np.zeros((1024, 1024), np.float32)
    plain = safetensors_from_arrays({"w": big, "v": big}, {"w": "F32", "v": "F32"})
    cipher = bytes(b ^ key for b in plain)
    requested = 0

    def decrypting_read_at(offset: int, length: int) -> bytes:
        nonlocal requested
        requested += length
        return bytes(b ^ key for b in cipher[offset : offset + length])

    info = inspect(decrypting_read_at, len(cipher), "enc.safetensors")
    assert info.kind == "safetensors" and info.parameters == 2 * 1024 * 1024
    assert requested < 4096


def test_onnx_reads_stay_bounded() -> None:
    from onnx import helper, numpy_helper

    tensors = [
        numpy_helper.from_array(np.zeros((512, 1024), np.float32), name=f"t{i}") for i in range(8)
    ]
    data = helper.make_model(
        helper.make_graph([], "g", [], [], initializer=tensors)
    ).SerializeToString()
    requested = 0

    def read_at(offset: int, length: int) -> bytes:
        nonlocal requested
        requested += length
        return data[offset : offset + length]

    info = inspect(read_at, len(data))
    assert info.kind == "onnx" and info.parameters == 8 * 512 * 1024
    assert requested < len(data) // 2


def test_kinds_are_the_documented_set() -> None:
    assert set(KINDS) == {
        "safetensors",
        "gguf",
        "onnx",
        "pytorch",
        "pickle",
        "numpy",
        "numpy-zip",
        "opaque",
    }


# --------------------------------------------------------------------------- fuzzing


def assert_only_format_errors(data: bytes, name: str = "") -> None:
    try:
        info = inspect_bytes(data, name)
    except FormatError as exc:
        assert "\n" not in str(exc)
        return
    assert info.kind in KINDS
    json.dumps(info.details)


@pytest.fixture(scope="module")
def corpus(gguf_bytes: bytes) -> dict[str, bytes]:
    with io.BytesIO() as buffer:
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr(
                "archive/data.pkl", pickle.dumps(collections.OrderedDict(w=1), protocol=2)
            )
            archive.writestr("archive/data/0", bytes(16))
        torch_zip = buffer.getvalue()
    with io.BytesIO() as buffer:
        np.savez(buffer, a=np.zeros((2, 3)), b=np.ones(4, np.int8))
        npz = buffer.getvalue()
    return {
        "safetensors": safetensors_from_arrays(
            {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.int16)},
            {"a": "F32", "b": "I16"},
            {"format": "pt"},
        ),
        "gguf": gguf_bytes,
        "npy": npy_bytes(np.zeros((4, 5), np.float32)),
        "npz": npz,
        "onnx": make_onnx_model().SerializeToString(),
        "pickle": pickle.dumps(collections.OrderedDict(a=[1, 2], b="x"), protocol=4),
        "pickle0": pickle.dumps(collections.OrderedDict(a=[1, 2], b="x"), protocol=0),
        "torch_zip": torch_zip,
    }


FUZZ = settings(
    max_examples=int(os.environ.get("CUSTODY_FUZZ_EXAMPLES", "300")),
    deadline=5000,  # a guard against hangs, not a performance assertion
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(data=st.binary(max_size=512), name=st.sampled_from(["", "x.safetensors", "x.gguf", "x.bin"]))
def test_fuzz_random_bytes(data: bytes, name: str) -> None:
    assert_only_format_errors(data, name)


@FUZZ
@given(
    prefix=st.sampled_from(
        [
            b"GGUF",
            b"\x93NUMPY",
            b"PK\x03\x04",
            b"\x80\x04",
            b"\x08\x07",
            b"(",
            struct.pack("<Q", 40) + b"{",
        ]
    ),
    tail=st.binary(max_size=300),
)
def test_fuzz_random_bytes_after_magic(prefix: bytes, tail: bytes) -> None:
    assert_only_format_errors(prefix + tail)


mutation = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "cut", "insert", "delete"]),
        st.integers(0, 1 << 20),
        st.integers(0, 255),
    ),
    min_size=1,
    max_size=6,
)


def mutate(data: bytes, operations: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for operation, where, value in operations:
        if not out:
            break
        at = where % len(out)
        if operation == "flip":
            out[at] ^= 1 << (value % 8)
        elif operation == "set":
            out[at] = value
        elif operation == "cut":
            del out[at:]
        elif operation == "insert":
            out[at:at] = bytes([value]) * (value % 9 + 1)
        else:
            del out[at : at + value % 9 + 1]
    return bytes(out)


@FUZZ
@given(
    kind=st.sampled_from(
        ["safetensors", "gguf", "npy", "npz", "onnx", "pickle", "pickle0", "torch_zip"]
    ),
    operations=mutation,
)
def test_fuzz_mutated_valid_files(
    corpus: dict[str, bytes], kind: str, operations: list[tuple[str, int, int]]
) -> None:
    assert_only_format_errors(mutate(corpus[kind], operations), f"m.{kind}")


@FUZZ
@given(operations=mutation)
def test_fuzz_mutated_header_region(
    corpus: dict[str, bytes], operations: list[tuple[str, int, int]]
) -> None:
    """Mutations aimed at the first bytes, where the lengths and counts live."""
    for kind in ("safetensors", "gguf", "npy"):
        data = corpus[kind]
        focused = [(op, where % 64, value) for op, where, value in operations]
        assert_only_format_errors(mutate(data, focused), f"h.{kind}")


@FUZZ
@given(
    header=st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
        ),
        max_leaves=20,
    ),
    data_len=st.integers(0, 64),
)
def test_fuzz_safetensors_json_headers(header: Any, data_len: int) -> None:
    data = safetensors_file(header, bytes(data_len))
    with contextlib.suppress(FormatError):
        parse_st(data)
