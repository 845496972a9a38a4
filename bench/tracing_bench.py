"""`make bench` trace section: how well per-recipient marks survive what a leaker does, and how long
marking and tracing take.

On a real trained model (an MLP on scikit-learn's digits, tests/trained_mlp.py), 20 recipients:
the attribution rate under each attack, the highest z any innocent recipient reached (over every
attack and over 500 unrelated models and variants), tau, and the accuracy change a mark costs.
Then a 1 GiB bf16 model (64 matrices of 4096 x 2048): seconds to mark it, and seconds to trace a
Q8_0-quantized leak of it against 20 recipients, from the suspect's file to the verdict. Last, a
2 GiB bf16 model derived (int4, Q4_0 GGUF) from a sealed replica into a sealed one through the real
data plane, in a fresh process: seconds and peak RSS (goal: 1 GiB).
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
    table = mlp.attacks()
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
    return {"small_model": bench_small(quick), "one_gib": bench_large(work, quick), "derive": bench_derive(work, quick)}


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
    for d in r.get("derive", []):
        label = f"derive {d['model_bytes'] / 2**30:.2f} GiB sealed -> {d['recipe']}"
        print(f"  {label:<40} {d['seconds']:>8.2f} s   {d['mb_per_s']:>6.1f} MB/s   peak RSS {d['peak_rss_mib']} MiB"
              f" (goal <= {d['goal_peak_rss_mib']})")


def _derive_child(work: str, gib: float, recipe_text: str) -> None:
    """In a child process: seal a bf16 model of `gib` GiB into a zone, derive it with the recipe
    through the real data plane, print the peak RSS of the derive step alone."""
    import json
    import os
    import resource
    import uuid

    import ml_dtypes

    from custody.data.derive import derive, marks
    from custody.data.ingest import collect_sources, seal_into_zone
    from custody.data.zones import ZoneStorage
    from custody.domain import recipes

    root = Path(work)
    folder = root / "model"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    count = max(1, int(gib * 2**30 / (4096 * 4096 * 2)))
    header, offset = {}, 0
    for i in range(count):
        header[f"model.layers.{i}.mlp.weight"] = {"dtype": "BF16", "shape": [4096, 4096],
                                                   "data_offsets": [offset, offset + 4096 * 4096 * 2]}
        offset += 4096 * 4096 * 2
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(folder / "model.safetensors", "wb") as out:
        out.write(len(raw).to_bytes(8, "little") + raw)
        for _ in range(count):
            out.write((rng.standard_normal((4096, 4096), dtype=np.float32) * 0.02).astype(ml_dtypes.bfloat16).tobytes())
    prod, research = ZoneStorage((root / "prod").as_uri()), ZoneStorage((root / "research").as_uri())
    src, src_key, src_dek = str(uuid.uuid4()), str(uuid.uuid4()), os.urandom(32)
    report = seal_into_zone(collect_sources(folder), prod, src, src_key, src_dek)
    (folder / "model.safetensors").unlink()
    import gc

    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    keys = derive.Keys(src, src_key, src_dek, str(uuid.uuid4()), str(uuid.uuid4()), os.urandom(32))
    spec = marks.MarkSpec(KEY, marks.key_id(KEY), REFERENCE, "researcher-00")
    t = time.perf_counter()
    out = derive.derive_replica(prod, research, keys, report.manifest, recipes.parse(recipe_text), spec, KEY,
                                {"name": "bench"})
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"model_bytes": report.manifest.total_size, "out_bytes": out.bytes, "seconds": round(seconds, 2),
                      "peak_rss_mib": round(peak / 1024), "rss_before_mib": round(before / 1024)}))


def bench_derive(work: Path, quick: bool) -> list[dict]:
    """Derive a 2 GiB bf16 model (int4, and Q4_0 GGUF) through the sealed data plane, in a fresh
    process each: seconds and peak RSS (goal: within 1 GiB)."""
    import json
    import subprocess

    rows = []
    for recipe_text in ("int4:group=64", "q4_0"):
        target = work / f"derive-{recipe_text.split(':')[0]}"
        code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import tracing_bench; "
                f"tracing_bench._derive_child({str(target)!r}, {0.25 if quick else 2.0}, {recipe_text!r})")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row.update({"recipe": recipe_text, "mb_per_s": round(row["model_bytes"] / 1e6 / row["seconds"], 1),
                    "goal_peak_rss_mib": 1024})
        rows.append(row)
        import shutil

        shutil.rmtree(target, ignore_errors=True)
    return rows
