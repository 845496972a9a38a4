"""The derivative data plane and the trace readers on their own: the recipe language (property
tests), quantization round trips, the GGUF layout read back by the gguf package, the identity
sketch against unrelated trained models, and suspect files read without unpickling, hostile ones
included. None of it touches a custodian, so it runs once (local)."""

from __future__ import annotations

import io
import pickle
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import trained_mlp as mlp
from conftest import CUSTODIAN, write_safetensors
from custody.data.derive import evidence, layout, marks, sketch, suspect
from custody.data.derive.transforms import (SourceTensor, Transformer, dequantize_int4, dequantize_int8, plan,
                                            quantize_int4, quantize_int8)
from custody.domain import recipes
from custody.domain.errors import InvalidInput

pytestmark = pytest.mark.skipif(CUSTODIAN != "local", reason="custodian-independent: runs once")

KEY = bytes(32)

# -- recipes ------------------------------------------------------------------------------------

STEPS = ["fp16", "bf16", "fp32", "int8", "int4:group=32", "q8_0", "q4_0", "subset:include=*.weight",
         "truncate:last=2", "truncate:first=1", "prune:fraction=0.25", "noise:sigma=0.01"]


@given(st.lists(st.sampled_from(STEPS), min_size=1, max_size=5, unique=True))
def test_a_recipe_reads_back_from_its_canonical_text(steps: list[str]) -> None:
    try:
        recipe = recipes.parse(",".join(steps))
    except InvalidInput as exc:  # two precision steps, or a step twice
        assert "twice" in exc.message
        return
    assert recipes.parse(recipe.text) == recipe
    assert [s.name for s in recipe.steps] == sorted(recipe.kinds, key=recipes.ORDER.index)


@given(st.text(max_size=80))
@settings(max_examples=300)
def test_any_text_is_a_recipe_or_one_clear_refusal(text: str) -> None:
    try:
        recipe = recipes.parse(text)
    except InvalidInput as exc:
        assert exc.message and "\n" not in exc.message
    else:
        assert recipe.steps


def test_recipe_facts_for_the_decision() -> None:
    r = recipes.parse("int4:group=64,truncate:last=4")
    assert r.text == "truncate:last=4,int4:group=64" and r.kinds == ("truncate", "int4") and r.bits == 4
    assert recipes.parse("q8_0").bits == 8 and recipes.parse("q8_0").output == "gguf"
    assert recipes.parse("prune:fraction=0.5").bits == 0


# -- quantization and layouts --------------------------------------------------------------------


@given(st.integers(1, 8), st.sampled_from([8, 16, 32, 64]), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_int8_and_int4_round_trip_within_half_a_step(rows: int, group: int, groups: int, seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal((rows, group * groups)).astype(np.float32)
    q, s = quantize_int8(x)
    assert np.all(np.abs(dequantize_int8(q, s) - x) <= s[:, None] / 2 + 1e-6)
    packed, scales = quantize_int4(x, rows, group)
    back = dequantize_int4(packed, scales)
    step = np.repeat(scales.astype(np.float32), group, axis=1)
    assert back.shape == x.shape and np.all(np.abs(back - x) <= step / 2 + 1e-3 * step + 1e-6)


@pytest.mark.parametrize("text", ["q8_0", "q4_0,truncate:first=1"])
def test_a_gguf_derivative_reads_back_with_the_gguf_package(tmp_path: Path, text: str) -> None:
    import gguf

    rng = np.random.default_rng(1)
    source = {"blk.0.ffn.weight": rng.standard_normal((64, 96)).astype(np.float32),
              "blk.1.ffn.weight": rng.standard_normal((64, 96)).astype(np.float32),
              "norm.weight": np.ones(96, np.float32), "ids": np.arange(4, dtype=np.int32)}
    dtypes = {np.dtype(np.float32): "F32", np.dtype(np.int32): "I32"}
    recipe = recipes.parse(text)
    spec = marks.MarkSpec(KEY, marks.key_id(KEY), "v", "alice")
    plans = plan(recipe, [SourceTensor(n, dtypes[v.dtype], v.shape, "m") for n, v in source.items()], spec)
    lay = layout.gguf_layout(plans, {"recipe": recipe.text}, "unit")
    t = Transformer(recipe, spec)
    with open(tmp_path / "m.gguf", "wb") as out:
        out.write(lay.preamble)
        pads = iter(lay.padding)
        for p in plans:
            for array in t.apply(p, source[p.source.name]):
                out.write(array.tobytes())
                out.write(bytes(next(pads)))
    assert (tmp_path / "m.gguf").stat().st_size == lay.size
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    kinds = {x.name: x.tensor_type.name for x in reader.tensors}
    assert kinds["blk.0.ffn.weight"] == text[:4].upper() and kinds["norm.weight"] == "F32"
    assert ("blk.1.ffn.weight" in kinds) == ("truncate" not in text)
    assert bytes(reader.get_field("custody.recipe").parts[-1]).decode() == recipe.text
    loaded = dict(suspect.load(tmp_path / "m.gguf"))
    assert np.corrcoef(loaded["blk.0.ffn.weight"].ravel(), source["blk.0.ffn.weight"].ravel())[0, 1] > 0.99


# -- identity sketches -------------------------------------------------------------------------------


def test_sketches_name_recast_and_quantized_copies_and_never_unrelated_models() -> None:
    from gguf import GGMLQuantizationType, quants

    data = mlp.digits()
    parent = mlp.trained(0, data, epochs=10)

    def z(a: dict, b: dict) -> float:
        scores = [evidence.sketch_z(sketch.cosine(sketch.of(KEY, a[n]), sketch.of(KEY, b[n])), a[n].shape[1])
                  for n in ("fc1.weight", "fc2.weight")]
        return evidence.combined_sketch_z(scores)

    tau = evidence.threshold(100, 1)
    q4 = {n: quants.dequantize(quants.quantize(v, GGMLQuantizationType.Q4_0), GGMLQuantizationType.Q4_0)
          if v.ndim == 2 and v.shape[1] % 32 == 0 else v for n, v in parent.items()}
    assert z({n: v.astype(np.float16) for n, v in parent.items()}, parent) > 2 * tau  # 13.7 is the most two
    # matrices of 64 and 128 columns can score (cos = 1)
    assert z(q4, parent) > 2 * tau
    assert z(mlp.train(parent, data, 5, seed=9), parent) > tau  # fine-tuned: still its child
    unrelated = [z(mlp.trained(seed, data, epochs=5), parent) for seed in range(1, 21)]
    assert max(unrelated) < tau, unrelated


# -- suspect files, never unpickled ------------------------------------------------------------------


class _Storage:
    """Stands in for torch.FloatStorage while pickling a checkpoint the way torch.save lays it out."""


def _torch_zip(path: Path, tensors: dict[str, np.ndarray], extra: object = None) -> None:
    """A PyTorch-style zip checkpoint written without torch: fake torch modules give the pickle the
    same globals (torch._utils._rebuild_tensor_v2, torch.FloatStorage) and persistent ids."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # noqa: ANN002, ANN202
        raise AssertionError("never called")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    storage = type("FloatStorage", (), {"__module__": "torch"})
    torch.FloatStorage, torch._utils = storage, utils

    class Ref:
        def __init__(self, key: str, n: int) -> None:
            self.key, self.n = key, n

    class Tensor:
        def __init__(self, key: str, arr: np.ndarray) -> None:
            self.ref, self.arr = Ref(key, arr.size), arr

        def __reduce__(self):  # noqa: ANN204
            stride = tuple(s // 4 for s in self.arr.strides)
            return _rebuild_tensor_v2, (self.ref, 0, self.arr.shape, stride, False, {})

    class P(pickle.Pickler):
        def persistent_id(self, obj):  # noqa: ANN001, ANN202
            return ("storage", storage, obj.key, "cpu", obj.n) if isinstance(obj, Ref) else None

    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch, "torch._utils": utils})
    try:
        buf = io.BytesIO()
        state = {name: Tensor(str(i), arr) for i, (name, arr) in enumerate(tensors.items())}
        if extra is not None:
            state["extra"] = extra
        P(buf, protocol=2).dump(state)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        for i, arr in enumerate(tensors.values()):
            z.writestr(f"archive/data/{i}", np.ascontiguousarray(arr, np.float32).tobytes())


class _Boom:
    def __reduce__(self):  # noqa: ANN204
        import os

        return (os.system, ("touch /tmp/custody-was-unpickled",))


def test_a_pytorch_checkpoint_is_read_without_unpickling(tmp_path: Path) -> None:
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    _torch_zip(tmp_path / "model.pt", {"fc.weight": w, "fc.bias": np.ones(3, np.float32)}, extra=_Boom())
    got = dict(suspect.load(tmp_path / "model.pt"))
    assert np.array_equal(got["fc.weight"], w) and np.array_equal(got["fc.bias"], np.ones(3))
    assert "extra" not in got and not Path("/tmp/custody-was-unpickled").exists()


def test_onnx_initializers_and_npz_arrays_are_read(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                              initializer=[numpy_helper.from_array(w, "fc.weight")])
    onnx.save(helper.make_model(graph), tmp_path / "m.onnx")
    assert np.array_equal(dict(suspect.load(tmp_path / "m.onnx"))["fc.weight"], w)
    np.savez(tmp_path / "m.npz", **{"fc.weight": w})
    assert np.array_equal(dict(suspect.load(tmp_path / "m.npz"))["fc.weight"], w)


@pytest.mark.parametrize("content", [
    b"GGUF" + b"\xff" * 60,  # a GGUF header whose counts run past the file
    b"PK\x03\x04" + b"\0" * 60,  # a zip with no directory
    (2**40).to_bytes(8, "little") + b"{}",  # a safetensors header larger than the file
])
def test_hostile_suspect_files_get_one_clear_error(tmp_path: Path, content: bytes) -> None:
    from custody.control.services.tracing import load_suspect

    (tmp_path / "bad.safetensors").write_bytes(content)
    with pytest.raises(InvalidInput) as caught:
        load_suspect(str(tmp_path / "bad.safetensors"))
    assert "bad.safetensors" in caught.value.message and "\n" not in caught.value.message


def test_a_symlinked_suspect_is_refused(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "real.safetensors", {"w": np.ones((16, 16), np.float32)})
    (tmp_path / "link.safetensors").symlink_to(tmp_path / "real.safetensors")
    with pytest.raises(InvalidInput):
        list(suspect.load(tmp_path / "link.safetensors"))
