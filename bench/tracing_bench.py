"""`make bench` trace section: how well per-recipient marks survive what a leaker does, and how long
marking and tracing take.

On a real trained model (an MLP on scikit-learn's digits, tests/trained_mlp.py), 20 recipients:
the attribution rate under each attack, the highest z any innocent recipient reached (over every
attack and over 500 unrelated models and variants), tau, and the accuracy change a mark costs.
Then a 1 GiB bf16 model (64 matrices of 4096 x 2048): seconds to mark it, and seconds to trace a
Q8_0-quantized leak of it against 20 recipients, from the suspect's file to the verdict.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

KEY = bytes(range(32))
REFERENCE = "reference-version"
RECIPIENTS = [f"researcher-{i:02d}" for i in range(20)]


def _marks(names: list[str], recipients: list[str]):  # noqa: ANN202
    from custody.control.store.lineage_repo import Mark
    from custody.data.derive import marks

    return [Mark(f"replica-{r}", REFERENCE, r, marks.key_id(KEY), marks.DEFAULT_ALPHA, tuple(names), None,
                 datetime.now(timezone.utc)) for r in recipients]


def _marked(values: dict[str, np.ndarray], recipient: str) -> dict[str, np.ndarray]:
    from custody.data.derive import marks

    spec = marks.MarkSpec(KEY, marks.key_id(KEY), REFERENCE, recipient)
    return {n: (marks.apply(spec, n, np.array(v, np.float32)) if marks.markable(n, v.shape, True) else v)
            for n, v in values.items()}


def attacks() -> dict:
    import ml_dtypes
    from gguf import GGMLQuantizationType, quants

    from custody.data.derive.transforms import dequantize_int8, quantize_int8

    def q(kind: str):  # noqa: ANN202
        t = GGMLQuantizationType[kind]
        return lambda a: quants.dequantize(quants.quantize(a, t), t) if a.ndim == 2 and a.shape[1] % 32 == 0 else a

    def prune(a: np.ndarray) -> np.ndarray:
        if a.ndim < 2:
            return a
        out = a.copy()
        out[np.abs(out) <= np.quantile(np.abs(out), 0.3)] = 0
        return out

    return {"fp16": lambda a: a.astype(np.float16).astype(np.float32),
            "bf16": lambda a: a.astype(ml_dtypes.bfloat16).astype(np.float32),
            "int8": lambda a: dequantize_int8(*quantize_int8(a)) if a.ndim == 2 else a,
            "q8_0": q("Q8_0"), "q4_0": q("Q4_0"), "prune-30%": prune,
            "noise-5%": lambda a: a + np.random.default_rng(3).normal(0, 0.05 * a.std(), a.shape).astype(np.float32)}


def bench_small(quick: bool) -> dict:
    import trained_mlp as mlp
    from custody.control.services import tracing
    from custody.data.derive import evidence, marks

    data = mlp.digits()
    parent = mlp.trained(0, data)
    names = [n for n in parent if marks.markable(n, parent[n].shape, True)]
    recorded = _marks(names, RECIPIENTS)
    copies = {r: _marked(parent, r) for r in RECIPIENTS}
    base = mlp.accuracy(parent, data)
    changes = [mlp.accuracy(c, data) - base for c in copies.values()]

    def verdict(tensors: dict) -> dict:
        return tracing.weigh(tracing.Suspect(Path("suspect"), "0" * 64, tensors), parent, recorded, KEY, REFERENCE,
                             1, evidence.DEFAULT_EPS)

    innocent, rates = -np.inf, {}
    table = attacks()
    for attack in [*table, "fine-tune-10-epochs"]:
        hits = 0
        for i, (recipient, copy) in enumerate(copies.items()):
            leaked = (mlp.train(copy, data, 10, seed=100 + i) if attack.startswith("fine")
                      else {n: table[attack](v) for n, v in copy.items()})
            v = verdict(leaked)
            hits += v["verdict"] == tracing.ATTRIBUTED and v["recipient"] == recipient
            innocent = max(innocent, max(s["z"] for s in v["scores"] if s["recipient"] != recipient))
        rates[attack] = hits / len(copies)
    unrelated, accused = 0, 0
    for seed in range(1, 6 if quick else 21):
        other = mlp.trained(seed, data, epochs=10)
        forms = [other] + [{n: f(v) for n, v in other.items()} for f in table.values()]
        forms += [{n: v + np.random.default_rng(seed * 31 + k).normal(0, 0.01, v.shape).astype(np.float32)
                   for n, v in other.items()} for k in range(25 - len(forms))]
        for form in forms:
            v = verdict(form)
            accused += v["verdict"] == tracing.ATTRIBUTED
            innocent = max(innocent, max(s["z"] for s in v["scores"]))
            unrelated += 1
    return {"recipients": len(RECIPIENTS), "attribution_rate": rates, "max_innocent_z": round(float(innocent), 2),
            "tau": round(evidence.threshold(len(RECIPIENTS), tracing.MIN_SCANS), 2),
            "unrelated_models_and_variants": unrelated, "false_accusations": accused,
            "parent_accuracy": round(base, 2), "accuracy_change_mean": round(float(np.mean(changes)), 3),
            "accuracy_change_max_abs": round(float(max(abs(c) for c in changes)), 3)}


def bench_large(work: Path, quick: bool) -> dict:
    """Mark a 1 GiB bf16 model; trace a Q8_0 leak of it from its GGUF file."""
    import ml_dtypes

    from custody.control.services import tracing
    from custody.data.derive import evidence, layout, marks
    from custody.data.derive.transforms import SourceTensor, Transformer, plan
    from custody.domain import recipes

    count = 8 if quick else 64
    rng = np.random.default_rng(0)
    model = {f"model.layers.{i}.mlp.weight": (rng.standard_normal((4096, 2048), dtype=np.float32) * 0.02)
             .astype(ml_dtypes.bfloat16) for i in range(count)}
    spec = marks.MarkSpec(KEY, marks.key_id(KEY), REFERENCE, RECIPIENTS[5])
    recipe = recipes.parse("q8_0")
    plans = plan(recipe, [SourceTensor(n, "BF16", v.shape, "m") for n, v in model.items()], spec)
    transformer = Transformer(recipe, spec)
    lay = layout.gguf_layout(plans, {"recipe": recipe.text}, "bench")
    leak = work / "leak.gguf"
    started = time.perf_counter()
    marked_seconds = 0.0
    with open(leak, "wb") as out:
        out.write(lay.preamble)
        for p, pad in zip(plans, lay.padding):
            t = time.perf_counter()
            values = transformer.values(p, model[p.source.name])
            marked_seconds += time.perf_counter() - t
            from gguf import GGMLQuantizationType, quants

            out.write(quants.quantize(values, GGMLQuantizationType.Q8_0).tobytes())
            out.write(bytes(pad))
    derive_seconds = time.perf_counter() - started
    t = time.perf_counter()
    found = tracing.load_suspect(str(leak))
    verdict = tracing.weigh(found, model, _marks(list(model), RECIPIENTS), KEY, REFERENCE, 1, evidence.DEFAULT_EPS)
    trace_seconds = time.perf_counter() - t
    leak.unlink()
    gib = sum(v.nbytes for v in model.values()) / 2**30
    return {"model_gib": round(gib, 2), "tensors": count, "mark_seconds": round(marked_seconds, 2),
            "derive_q8_0_seconds": round(derive_seconds, 2), "trace_seconds": round(trace_seconds, 2),
            "recipients": len(RECIPIENTS), "attributed_to": verdict.get("recipient"), "z": verdict.get("z"),
            "tau": verdict["tau"], "goal_trace_seconds": 30}


def main_rows(work: Path, quick: bool) -> dict:
    return {"small_model": bench_small(quick), "one_gib": bench_large(work, quick)}


def print_rows(r: dict) -> None:
    s = r["small_model"]
    print(f"\ntrace: MLP on digits, {s['recipients']} recipients, tau {s['tau']}")
    for attack, rate in s["attribution_rate"].items():
        print(f"  {'attributed after ' + attack:<40} {rate * 100:>6.1f} %   goal >= 99 %")
    print(f"  {'highest innocent z (all attacks, unrelated)':<40} {s['max_innocent_z']:>8}   tau {s['tau']}")
    print(f"  {'false accusations / unrelated variants':<40} {s['false_accusations']:>4} / {s['unrelated_models_and_variants']}")
    print(f"  {'accuracy change, mean (max |one copy|)':<40} {s['accuracy_change_mean']:>+8.3f} ({s['accuracy_change_max_abs']:.3f}) points"
          f"   goal <= 0.1")
    g = r["one_gib"]
    print(f"  {'mark %.2f GiB bf16' % g['model_gib']:<40} {g['mark_seconds']:>8.2f} s")
    print(f"  {'derive it as Q8_0 GGUF (mark included)':<40} {g['derive_q8_0_seconds']:>8.2f} s")
    print(f"  {'trace the Q8_0 leak, %d recipients' % g['recipients']:<40} {g['trace_seconds']:>8.2f} s   goal < 30 s"
          f"  (-> {g['attributed_to']}, z {g['z']})")
