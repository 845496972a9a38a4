"""Recognise ONNX models and count their initializer parameters from the protobuf wire format.

Field numbers follow onnx.proto: ModelProto ``ir_version`` = 1, ``graph`` = 7,
``opset_import`` = 8; GraphProto ``initializer`` = 5, ``sparse_initializer`` = 15;
TensorProto ``dims`` = 1, ``data_type`` = 2, ``data_location`` = 14; SparseTensorProto
``dims`` = 3. ONNX has no magic number, so recognition is structural: the file must start
with ``ir_version``, its top level must walk cleanly to the last byte using only ModelProto
fields with their declared wire types, and it must hold a graph. Random bytes essentially
never pass, so a failed top-level walk means "not ONNX" rather than "broken ONNX".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from custody.data.formats.protobuf_wire import (
    LENGTH_DELIMITED,
    VARINT,
    FieldBudget,
    WireError,
    as_int64,
    decode_packed_varints,
    iter_fields,
)
from custody.data.formats.source import ByteSource, ReadAt

MAX_IR_VERSION = 1024
MAX_TOP_LEVEL_FIELDS = 100_000
MAX_FIELDS = 4_000_000
"""Total protobuf fields one inspection may visit (nodes and initializer fields included)."""
MAX_RANK = 64
MAX_OPSETS = 1024
MAX_KEPT_STRING_BYTES = 256

# ModelProto fields and the wire type each must use.
_MODEL_FIELDS: dict[int, int] = {
    1: VARINT,  # ir_version
    2: LENGTH_DELIMITED,  # producer_name
    3: LENGTH_DELIMITED,  # producer_version
    4: LENGTH_DELIMITED,  # domain
    5: VARINT,  # model_version
    6: LENGTH_DELIMITED,  # doc_string
    7: LENGTH_DELIMITED,  # graph
    8: LENGTH_DELIMITED,  # opset_import
    14: LENGTH_DELIMITED,  # metadata_props
    20: LENGTH_DELIMITED,  # training_info
    25: LENGTH_DELIMITED,  # functions
    26: LENGTH_DELIMITED,  # configuration
}
_IR_VERSION, _PRODUCER_NAME, _PRODUCER_VERSION, _GRAPH, _OPSET_IMPORT = 1, 2, 3, 7, 8
_GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 5, 15
_TENSOR_DIMS, _TENSOR_DATA_TYPE, _TENSOR_DATA_LOCATION = 1, 2, 14
_SPARSE_DIMS = 3
_OPSET_DOMAIN, _OPSET_VERSION = 1, 2
_EXTERNAL = 1

DATA_TYPE_NAMES: dict[int, str] = {
    0: "UNDEFINED",
    1: "FLOAT",
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    8: "STRING",
    9: "BOOL",
    10: "FLOAT16",
    11: "DOUBLE",
    12: "UINT32",
    13: "UINT64",
    14: "COMPLEX64",
    15: "COMPLEX128",
    16: "BFLOAT16",
    17: "FLOAT8E4M3FN",
    18: "FLOAT8E4M3FNUZ",
    19: "FLOAT8E5M2",
    20: "FLOAT8E5M2FNUZ",
    21: "UINT4",
    22: "INT4",
    23: "FLOAT4E2M1",
    24: "FLOAT8E8M0",
    25: "UINT2",
    26: "INT2",
    27: "FLOAT6E2M3",
    28: "FLOAT6E3M2",
}


@dataclass(frozen=True)
class OnnxModel:
    ir_version: int
    producer_name: str
    producer_version: str
    opset_imports: dict[str, int]
    initializer_count: int
    sparse_initializer_count: int
    external_initializer_count: int
    parameter_count: int
    data_types: dict[str, int] = field(default_factory=dict)


@dataclass
class _TopLevel:
    ir_version: int
    graph_start: int
    graph_length: int
    producer_name: str = ""
    producer_version: str = ""
    opset_imports: dict[str, int] = field(default_factory=dict)


def parse_model(read_at: ReadAt, size: int, name: str = "") -> OnnxModel:
    """An ONNX model's summary; ``FormatError`` unless the bytes are a well-formed ModelProto."""
    source = ByteSource(read_at, size, name)
    model = recognise(source)
    if model is None:
        raise source.fail("not an ONNX model (no well-formed ModelProto with a graph)")
    return model


def looks_like_onnx(start: bytes) -> bool:
    """Cheap pre-test: every serialised ModelProto begins with the ``ir_version`` tag."""
    return len(start) >= 2 and start[0] == 0x08 and start[1] > 0


def recognise(source: ByteSource) -> OnnxModel | None:
    """The model summary, ``None`` if the top level is not a ModelProto.

    Once the top level has proved to be ONNX, a malformed graph raises ``FormatError``.
    """
    if not looks_like_onnx(source.prefix(2)):
        return None
    budget = FieldBudget(MAX_FIELDS)
    try:
        top = _walk_top_level(source, FieldBudget(MAX_TOP_LEVEL_FIELDS))
    except WireError:
        return None
    if top is None:
        return None
    try:
        return _summarise_graph(source, top, budget)
    except WireError as exc:
        raise source.fail(f"malformed ONNX graph: {exc}") from None


def _walk_top_level(source: ByteSource, budget: FieldBudget) -> _TopLevel | None:
    ir_version: int | None = None
    graph: tuple[int, int] | None = None
    producer_name = producer_version = ""
    opsets: dict[str, int] = {}
    for index, item in enumerate(iter_fields(source, 0, source.size, budget)):
        expected = _MODEL_FIELDS.get(item.number)
        if expected is None or expected != item.wire_type:
            return None
        if index == 0 and item.number != _IR_VERSION:
            return None
        if item.number == _IR_VERSION:
            ir_version = item.value
        elif item.number == _GRAPH:
            if graph is not None:
                return None
            graph = (item.value, item.length)
        elif item.number == _PRODUCER_NAME:
            producer_name = _short_string(source, item.value, item.length)
        elif item.number == _PRODUCER_VERSION:
            producer_version = _short_string(source, item.value, item.length)
        elif item.number == _OPSET_IMPORT and len(opsets) < MAX_OPSETS:
            domain, version = _opset(source, item.value, item.length, budget)
            opsets[domain or "ai.onnx"] = version
    if ir_version is None or not 1 <= ir_version <= MAX_IR_VERSION or graph is None:
        return None
    return _TopLevel(
        ir_version=ir_version,
        graph_start=graph[0],
        graph_length=graph[1],
        producer_name=producer_name,
        producer_version=producer_version,
        opset_imports=opsets,
    )


def _opset(source: ByteSource, start: int, length: int, budget: FieldBudget) -> tuple[str, int]:
    domain, version = "", 0
    for item in iter_fields(source, start, start + length, budget):
        if item.number == _OPSET_DOMAIN and item.wire_type == LENGTH_DELIMITED:
            domain = _short_string(source, item.value, item.length)
        elif item.number == _OPSET_VERSION and item.wire_type == VARINT:
            version = as_int64(item.value)
    return domain, version


def _summarise_graph(source: ByteSource, top: _TopLevel, budget: FieldBudget) -> OnnxModel:
    dense = sparse = external = parameters = 0
    data_types: dict[str, int] = {}
    graph_end = top.graph_start + top.graph_length
    for item in iter_fields(source, top.graph_start, graph_end, budget):
        if item.number == _GRAPH_INITIALIZER:
            _require_message(item.wire_type, "initializer")
            dims, data_type, location = _tensor(source, item.value, item.length, budget)
            dense += 1
            parameters += math.prod(dims)
            type_name = DATA_TYPE_NAMES.get(data_type, f"type-{data_type}")
            data_types[type_name] = data_types.get(type_name, 0) + 1
            external += location == _EXTERNAL
        elif item.number == _GRAPH_SPARSE_INITIALIZER:
            _require_message(item.wire_type, "sparse_initializer")
            sparse += 1
            parameters += math.prod(_sparse_dims(source, item.value, item.length, budget))
    return OnnxModel(
        ir_version=top.ir_version,
        producer_name=top.producer_name,
        producer_version=top.producer_version,
        opset_imports=top.opset_imports,
        initializer_count=dense,
        sparse_initializer_count=sparse,
        external_initializer_count=external,
        parameter_count=parameters,
        data_types=dict(sorted(data_types.items())),
    )


def _require_message(wire_type: int, what: str) -> None:
    if wire_type != LENGTH_DELIMITED:
        raise WireError(f"{what} is not an embedded message")


def _tensor(
    source: ByteSource, start: int, length: int, budget: FieldBudget
) -> tuple[list[int], int, int]:
    """``(dims, data_type, data_location)`` of a TensorProto; its data is skipped."""
    dims: list[int] = []
    data_type = location = 0
    for item in iter_fields(source, start, start + length, budget):
        if item.number == _TENSOR_DIMS:
            _collect_dims(source, item.wire_type, item.value, item.length, dims)
        elif item.number == _TENSOR_DATA_TYPE and item.wire_type == VARINT:
            data_type = as_int64(item.value)
        elif item.number == _TENSOR_DATA_LOCATION and item.wire_type == VARINT:
            location = as_int64(item.value)
    return dims, data_type, location


def _sparse_dims(source: ByteSource, start: int, length: int, budget: FieldBudget) -> list[int]:
    dims: list[int] = []
    for item in iter_fields(source, start, start + length, budget):
        if item.number == _SPARSE_DIMS:
            _collect_dims(source, item.wire_type, item.value, item.length, dims)
    return dims


def _collect_dims(
    source: ByteSource, wire_type: int, value: int, length: int, dims: list[int]
) -> None:
    """Append one ``repeated int64`` entry, written either unpacked (varint) or packed."""
    if wire_type == VARINT:
        values = [value]
    elif wire_type == LENGTH_DELIMITED:
        if length > MAX_RANK * 10:
            raise WireError("packed dims field is too long")
        values = decode_packed_varints(source.read(value, length, "packed dims"), MAX_RANK)
    else:
        raise WireError("dims field has the wrong wire type")
    for raw in values:
        dim = as_int64(raw)
        if dim < 0:
            raise WireError(f"negative dimension {dim}")
        dims.append(dim)
    if len(dims) > MAX_RANK:
        raise WireError(f"tensor rank above {MAX_RANK}")


def _short_string(source: ByteSource, start: int, length: int) -> str:
    raw = source.read_buffered(start, min(length, MAX_KEPT_STRING_BYTES), "string")
    return raw.decode("utf-8", errors="replace")


_TENSOR_FLOAT_DATA, _TENSOR_NAME, _TENSOR_RAW_DATA = 4, 8, 9
FLOAT_TYPES = {1: "<f4", 10: "<f2", 11: "<f8", 16: "bfloat16"}


@dataclass(frozen=True)
class Initializer:
    """Where one dense initializer's values lie in the file (raw_data, or packed float_data)."""

    name: str
    dims: tuple[int, ...]
    data_type: int
    start: int
    length: int


def initializers(source: ByteSource) -> list[Initializer]:
    """The dense float initializers whose values the file holds (external data is not followed)."""
    budget = FieldBudget(MAX_FIELDS)
    try:
        top = _walk_top_level(source, budget)
        if top is None:
            raise source.fail("not an ONNX model")
        out = []
        for item in iter_fields(source, top.graph_start, top.graph_start + top.graph_length, budget):
            if item.number != _GRAPH_INITIALIZER:
                continue
            _require_message(item.wire_type, "initializer")
            name, dims, data_type, where = "", [], 0, None
            for f in iter_fields(source, item.value, item.value + item.length, budget):
                if f.number == _TENSOR_DIMS:
                    _collect_dims(source, f.wire_type, f.value, f.length, dims)
                elif f.number == _TENSOR_DATA_TYPE and f.wire_type == VARINT:
                    data_type = as_int64(f.value)
                elif f.number == _TENSOR_NAME and f.wire_type == LENGTH_DELIMITED:
                    name = _short_string(source, f.value, f.length)
                elif f.number in (_TENSOR_RAW_DATA, _TENSOR_FLOAT_DATA) and f.wire_type == LENGTH_DELIMITED:
                    where = (f.value, f.length)
            if data_type in FLOAT_TYPES and where is not None and dims:
                out.append(Initializer(name, tuple(dims), data_type, *where))
        return out
    except WireError as exc:
        raise source.fail(f"malformed ONNX graph: {exc}") from None
