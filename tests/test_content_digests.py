"""Per-tensor content digests reported by registration's data plane (safetensors and GGUF).

Expected digests are computed independently: hashlib over bytes that the reference libraries
(`safetensors`, `gguf`) hand back, never over ranges from custody's own parsers.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import uuid
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from custody.data import ingest
from custody.data.formats.tensor_digests import TensorHashes, TensorSpan
from custody.data.ingest import IngestReport, collect_sources, seal_into_zone
from custody.data.zones import ZoneStorage
from custody.domain.errors import CustodyError, FormatError
from custody.domain.model import MIN_DISTINCTIVE_BYTES, TensorDigest

CHUNK = 1000  # not a multiple of any element size, so tensors and elements straddle chunks


def seal(model: Path, zone: Path | str, chunk_size: int = CHUNK) -> IngestReport:
    url = zone if isinstance(zone, str) else zone.as_uri()
    return seal_into_zone(collect_sources(model), ZoneStorage(url), str(uuid.uuid4()), str(uuid.uuid4()),
                          os.urandom(32), chunk_size=chunk_size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def by_name(report: IngestReport) -> dict[str, TensorDigest]:
    return {t.name: t for t in report.tensors}


def reference_safetensors(path: Path) -> dict[str, bytes]:
    """Each tensor's bytes as the safetensors library loads them."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return {name: np.ascontiguousarray(f.get_tensor(name)).tobytes() for name in f.keys()}


def write_raw_safetensors(path: Path, tensors: dict[str, tuple[str, list[int], bytes]]) -> None:
    """A safetensors file from raw bytes (for bf16, which the numpy writer does not know)."""
    header, offset = {}, 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(raw for _, _, raw in tensors.values()))


@pytest.fixture
def model(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    return folder


# ------------------------------------------------------------------------------ safetensors


def test_safetensors_digests_equal_hashlib_over_reference_bytes(model: Path, tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1)
    tensors = {
        "embed.weight": rng.standard_normal((41, 53)).astype(np.float16),  # 4,346 bytes over 5 chunks
        "layer.0.weight": rng.standard_normal((11, 7)).astype(np.float32),
        "layer.0.bias": np.zeros(1100, np.float32),
        "norm.weight": np.ones(2048, np.float16),  # exactly 4 KiB, constant
        "ids": rng.integers(-5, 5, 700, dtype=np.int64),
        "scalar": np.array(3.5, np.float32),
        "empty": np.zeros((0, 4), np.float32),
        "tiny": rng.standard_normal(5).astype(np.float32),
    }
    path = model / "model.safetensors"
    save_file(tensors, str(path))
    report = seal(model, tmp_path / "zone")

    expected = reference_safetensors(path)
    got = by_name(report)
    assert set(got) == set(tensors)
    for name, raw in expected.items():
        t = got[name]
        assert t.digest == sha(raw), name
        assert t.size == len(raw) and t.path == "model.safetensors"
        assert t.shape == tensors[name].shape
    assert got["embed.weight"].dtype == "F16" and got["ids"].dtype == "I64"
    distinctive = {name for name, t in got.items() if t.distinctive}
    assert distinctive == {"embed.weight", "ids"}  # constant, tiny and empty tensors are not
    assert got["embed.weight"].size > 3 * CHUNK
    # File order: tensors as they lie in the data section.
    raw = path.read_bytes()
    header = json.loads(raw[8: 8 + struct.unpack("<Q", raw[:8])[0]])
    assert [t.name for t in report.tensors] == sorted(tensors, key=lambda n: header[n]["data_offsets"])


def test_bf16_constants_and_near_constants(model: Path, tmp_path: Path) -> None:
    """Constant means every element equal, checked over the whole tensor, across chunks."""
    ones = np.ones(6000, ml_dtypes.bfloat16)
    last_differs = ones.copy()
    last_differs[-1] = 2.0
    middle_differs = ones.copy()
    middle_differs[3001] = 0.5  # past the quick check, in a later chunk
    alternating = np.tile(np.array([1.0, 2.0], ml_dtypes.bfloat16), 3000)  # periodic, two values
    sign_zero = np.zeros(6000, ml_dtypes.bfloat16)
    sign_zero[4000] = -0.0  # another bit pattern: counted as another value
    bytes_repeating = np.full(5000, 0x3C, np.uint8)
    f16_pattern = np.ones(3000, np.float16)  # bytes 00 3C repeated: constant by element, not by byte
    tensors = {
        "ones": ones, "last_differs": last_differs, "middle_differs": middle_differs,
        "alternating": alternating, "sign_zero": sign_zero,
    }
    raw = {name: ("BF16", list(a.shape), a.tobytes()) for name, a in tensors.items()}
    raw["bytes_repeating"] = ("U8", [5000], bytes_repeating.tobytes())
    raw["f16_pattern"] = ("F16", [3000], f16_pattern.tobytes())
    path = model / "m.safetensors"
    write_raw_safetensors(path, raw)
    got = by_name(seal(model, tmp_path / "zone", chunk_size=4096 + 7))
    assert {n: t.distinctive for n, t in got.items()} == {
        "ones": False, "last_differs": True, "middle_differs": True, "alternating": True,
        "sign_zero": True, "bytes_repeating": False, "f16_pattern": False,
    }
    for name, (_, _, data) in raw.items():
        assert got[name].digest == sha(data)
        assert got[name].dtype == raw[name][0]


def test_threshold_is_4_kib(model: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    below = rng.standard_normal(MIN_DISTINCTIVE_BYTES // 4 - 1).astype(np.float32)
    at = rng.standard_normal(MIN_DISTINCTIVE_BYTES // 4).astype(np.float32)
    write_raw_safetensors(model / "m.safetensors", {"below": ("F32", [below.size], below.tobytes()),
                                                    "at": ("F32", [at.size], at.tobytes())})
    got = by_name(seal(model, tmp_path / "zone"))
    assert got["at"].distinctive and got["at"].size == 4096
    assert not got["below"].distinctive


def test_several_files_and_non_tensor_files(model: Path, tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(3)
    save_file({"w": rng.standard_normal(3000).astype(np.float32)}, str(model / "b.safetensors"))
    save_file({"w": rng.standard_normal(3000).astype(np.float32)}, str(model / "a.safetensors"))
    np.save(model / "extra.npy", rng.standard_normal(3000))
    (model / "config.json").write_text("{}")
    report = seal(model, tmp_path / "zone")
    assert [t.path for t in report.tensors] == ["a.safetensors", "b.safetensors", "extra.npy"]
    for t in report.tensors[:2]:
        assert t.digest == sha(reference_safetensors(model / t.path)["w"])
    array = report.tensors[2]  # a .npy file's one array, hashed over its data alone
    assert (array.name, array.shape, array.distinctive) == ("(array)", (3000,), True)
    assert array.digest == hashlib.sha256(np.load(model / "extra.npy").tobytes()).hexdigest()


def test_streamed_zone_reports_the_same_digests(model: Path, tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    save_file({"w": np.random.default_rng(4).standard_normal((50, 50)).astype(np.float32)},
              str(model / "m.safetensors"))
    local = seal(model, tmp_path / "zone")
    streamed = seal(model, f"memory://custody-test-{uuid.uuid4()}")
    assert streamed.tensors == local.tensors and local.tensors


@pytest.mark.parametrize(("offsets", "message"), [
    ([[0, 400], [200, 600]], "overlaps"),
    ([[0, 400], [400, 10**12]], "past the data section|needs"),
    ([[0, 400], [500, 900]], "gap"),
])
def test_hostile_safetensors_header_refused_before_any_digest(model: Path, tmp_path: Path, offsets: list,
                                                              message: str) -> None:
    header = {"a": {"dtype": "F32", "shape": [100], "data_offsets": offsets[0]},
              "b": {"dtype": "F32", "shape": [100], "data_offsets": offsets[1]}}
    head = json.dumps(header).encode()
    (model / "m.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + os.urandom(800))
    with pytest.raises(FormatError, match=message):
        seal(model, tmp_path / "zone")


def test_header_rewritten_after_parsing_fails_the_registration(model: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranges parsed from one header must not be hashed over a file that now says otherwise."""
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal(2000).astype(np.float32), rng.standard_normal(2000).astype(np.float32)
    path = model / "m.safetensors"
    write_raw_safetensors(path, {"a": ("F32", [2000], a.tobytes()), "b": ("F32", [2000], b.tobytes())})
    swapped = path.read_bytes().replace(b'"a"', b'"c"')
    real_inspect = ingest.inspect_format

    def inspect_then_rewrite(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        info = real_inspect(*args, **kwargs)
        path.write_bytes(swapped)  # same size, another header
        return info

    monkeypatch.setattr(ingest, "inspect_format", inspect_then_rewrite)
    with pytest.raises(CustodyError, match="changed while it was being read"):
        seal(model, tmp_path / "zone")


# ------------------------------------------------------------------------------ GGUF


def test_gguf_digests_equal_hashlib_over_reference_bytes(model: Path, tmp_path: Path) -> None:
    import gguf
    from gguf.quants import quantize

    rng = np.random.default_rng(6)
    Q8 = gguf.GGMLQuantizationType.Q8_0
    path = model / "m.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "hello"])
    writer.add_tensor("tok_embd.weight", rng.standard_normal((40, 64)).astype(np.float32))
    writer.add_tensor("norm.weight", np.ones(3000, np.float16))
    writer.add_tensor("bias", rng.standard_normal(3).astype(np.float32))  # 12 bytes, then padding
    writer.add_tensor("blk.0.q.weight", quantize(rng.standard_normal((16, 256)).astype(np.float32), Q8), raw_dtype=Q8)
    writer.add_tensor("blk.0.k.weight", quantize(np.full((16, 256), 0.25, np.float32), Q8), raw_dtype=Q8)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    got = by_name(seal(model, tmp_path / "zone"))
    reader = gguf.GGUFReader(str(path))
    assert set(got) == {t.name for t in reader.tensors}
    for t in reader.tensors:
        raw = bytes(np.ascontiguousarray(t.data).view(np.uint8).reshape(-1)[: t.n_bytes])
        assert len(raw) == t.n_bytes and got[t.name].digest == sha(raw), t.name
        assert got[t.name].size == t.n_bytes and got[t.name].dtype == t.tensor_type.name
        assert got[t.name].shape == tuple(int(x) for x in t.shape)
    assert {n for n, t in got.items() if t.distinctive} == {"tok_embd.weight", "blk.0.q.weight"}
    # Identical Q8_0 blocks (one scale, one value) are one repeated element, not content.
    assert got["blk.0.k.weight"].size == 16 * 8 * 34 and not got["blk.0.k.weight"].distinctive


# ------------------------------------------------------------------------------ any layout


@st.composite
def layouts(draw: st.DrawFn) -> tuple[bytes, list[TensorSpan], int]:
    """Random spans with random gaps (as GGUF's padding); some tensors one repeated unit."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32)))
    data, spans = bytearray(rng.bytes(draw(st.integers(0, 40)))), []
    for i in range(draw(st.integers(0, 8))):
        unit = draw(st.sampled_from([1, 2, 3, 4, 18, 34]))
        count = draw(st.integers(0, 3000))
        kind = draw(st.sampled_from(["random", "constant", "almost"]))
        body = bytearray(rng.bytes(unit * count) if kind == "random" else rng.bytes(unit) * count)
        if kind == "almost" and body:
            body[draw(st.integers(0, len(body) - 1))] ^= 1
        start = len(data)
        data += body
        spans.append(TensorSpan(f"t{i}", "X", (count,), start, len(data), unit))
        data += rng.bytes(draw(st.integers(0, 40)))
    chunk = draw(st.integers(len(data) // 500 + 1, len(data) + 1))
    return bytes(data), spans, chunk


def is_distinctive(raw: bytes, unit: int) -> bool:
    return len(raw) >= MIN_DISTINCTIVE_BYTES and raw != raw[:unit] * (len(raw) // unit)


@settings(max_examples=150, deadline=None)
@given(layout=layouts())
def test_any_layout_any_chunking(layout: tuple[bytes, list[TensorSpan], int]) -> None:
    data, spans, chunk = layout
    hashes = TensorHashes("f", spans, seen=[(0, data[:17])])
    for offset in range(0, len(data), chunk):
        hashes.update(offset, memoryview(data)[offset: offset + chunk])
    results = hashes.results()
    assert [t.name for t in results] == [s.name for s in spans]
    for span, t in zip(spans, results):
        raw = data[span.start: span.end]
        assert t.digest == sha(raw) and t.size == len(raw)
        assert t.distinctive == is_distinctive(raw, span.unit), span


def test_unread_tensor_is_an_error_not_a_digest() -> None:
    hashes = TensorHashes("f", [TensorSpan("t", "F32", (4,), 10, 26, 4)])
    hashes.update(0, memoryview(bytes(20)))
    with pytest.raises(CustodyError, match="not read to the end"):
        hashes.results()


def test_overlapping_spans_are_refused_not_hashed() -> None:
    spans = [TensorSpan("a", "F32", (4,), 0, 16, 4), TensorSpan("b", "F32", (4,), 8, 24, 4)]
    with pytest.raises(CustodyError, match="overlap"):
        TensorHashes("f", spans)


def test_generated_buffers_deflate_far_more_than_weights(model: Path, tmp_path: Path) -> None:
    """Position ids, masks and norm weights near 1 are in unrelated models too; learned weights are not."""
    import ml_dtypes
    from safetensors.numpy import save_file

    rng = np.random.default_rng(5)
    save_file({"position_ids": np.arange(8192, dtype=np.int64),
               "mask": np.tril(np.ones((256, 256), dtype=np.uint8)),
               "norm": (1 + rng.standard_normal(40000) * 0.01).astype(ml_dtypes.bfloat16).view(np.uint16),
               "weight": (rng.standard_normal(40000) * 0.02).astype(ml_dtypes.bfloat16).view(np.uint16),
               "quant": np.clip(rng.standard_normal(70000) * 30, -127, 127).astype(np.int8)},
              str(model / "m.safetensors"))
    report = seal(model, tmp_path / "zone")
    generated = {t.name: t.deflated < 0.5 for t in report.tensors}
    assert generated == {"position_ids": True, "mask": True, "norm": True, "weight": False, "quant": False}
    assert all(t.distinctive for t in report.tensors)  # none of them is one value repeated
