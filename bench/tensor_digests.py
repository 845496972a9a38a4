"""Registration's data plane with and without per-tensor digests, on bf16 safetensors weights.

Writes a llama-like safetensors file (bf16 projections, constant norms and biases), then seals it
into a fresh local zone with `ingest.seal_into_zone` from two source trees: the baseline (a git
revision, exported) and the working tree. Rounds alternate the two, each in its own process on a
file evicted from the page cache, because write speed on these machines swings with the host's
memory state; the figures are medians and their ratio.

    .venv/bin/python bench/tensor_digests.py --baseline <rev> [--gib 1.5] [--files 1] [--rounds 5]
        [--cached --zone /dev/shm/x]   # page cache into tmpfs: no disk, so CPU cost shows in full

Results of 2026-12-01 (2 cores shared with other work, 1.62 GB file, 40 tensors, baseline 8b01a13):
disk source 979 -> 870 MB/s (0.89, 11 rounds), two files 1029 -> 807 MB/s (0.78, 9 rounds),
page cache into tmpfs 1349 -> 840 MB/s (0.62, 11 rounds); CPU +0.6-0.8 s, one SHA-256 pass;
peak RSS 77 MiB both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tarfile
import io
from pathlib import Path

import ml_dtypes
import numpy as np

HERE = Path(__file__).resolve().parent
MiB = 2**20
HIDDEN, FFN = 4096, 11008

RUNNER = r"""
import json, os, resource, sys, time, uuid
from pathlib import Path
from custody.data.ingest import collect_sources, seal_into_zone
from custody.data.zones import ZoneStorage
src, zone_dir, evict = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "evict"
for f in ([src] if src.is_file() else sorted(src.iterdir())):
    fd = os.open(f, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED if evict else os.POSIX_FADV_WILLNEED)
    if not evict:
        while os.read(fd, 1 << 24):
            pass
    os.close(fd)
ru0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
report = seal_into_zone(collect_sources(src), ZoneStorage(zone_dir.as_uri()), str(uuid.uuid4()),
                        str(uuid.uuid4()), os.urandom(32))
seconds = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_SELF)
cpu = ru.ru_utime - ru0.ru_utime + ru.ru_stime - ru0.ru_stime
print(json.dumps({"seconds": seconds, "cpu": cpu, "max_rss_mib": ru.ru_maxrss // 1024, "bytes": report.bytes_read,
                  "tensors": len(getattr(report, "tensors", ()))}))
"""


def layer_tensors(i: int) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, kind) of one decoder layer; kind is random, ones or zeros."""
    p = f"model.layers.{i}."
    return [(p + "input_layernorm.weight", (HIDDEN,), "ones"),
            *[(p + f"self_attn.{x}_proj.weight", (HIDDEN, HIDDEN), "random") for x in "qkvo"],
            (p + "self_attn.o_proj.bias", (HIDDEN,), "zeros"),
            (p + "post_attention_layernorm.weight", (HIDDEN,), "ones"),
            (p + "mlp.gate_proj.weight", (FFN, HIDDEN), "random"),
            (p + "mlp.up_proj.weight", (FFN, HIDDEN), "random"),
            (p + "mlp.down_proj.weight", (HIDDEN, FFN), "random")]


def write_model(path: Path, budget: int, seed: int) -> None:
    """bf16 layers until `budget` bytes, written tensor by tensor (never the whole file in memory)."""
    specs: list[tuple[str, tuple[int, ...], str]] = []
    total, i = 0, 0
    while total < budget:
        for spec in layer_tensors(i):
            specs.append(spec)
            total += 2 * int(np.prod(spec[1]))
        i += 1
    header, offset = {}, 0
    for name, shape, _ in specs:
        size = 2 * int(np.prod(shape))
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        for _, shape, kind in specs:
            n = int(np.prod(shape))
            for start in range(0, n, 16 * MiB):
                m = min(16 * MiB, n - start)
                if kind == "random":
                    part = (rng.standard_normal(m, dtype=np.float32) * 0.02).astype(ml_dtypes.bfloat16)
                else:
                    part = np.full(m, 1.0 if kind == "ones" else 0.0, dtype=ml_dtypes.bfloat16)
                fh.write(part.tobytes())


def export_tree(rev: str, dest: Path) -> Path:
    """The `src` folder of a git revision, extracted to `dest` (the baseline's code)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", rev, "src"], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest / "src"


def one_round(code: Path, model: Path, zone: Path, evict: bool) -> dict:
    shutil.rmtree(zone, ignore_errors=True)
    zone.mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=str(code))
    out = subprocess.run([sys.executable, "-c", RUNNER, str(model), str(zone), "evict" if evict else "cached"], check=True,
                         capture_output=True, text=True, env=env).stdout
    shutil.rmtree(zone)
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", required=True, help="git revision whose src is the baseline")
    ap.add_argument("--gib", type=float, default=1.5)
    ap.add_argument("--files", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--work", type=Path, default=Path("/tmp/custody-bench-tensors"))
    ap.add_argument("--zone", type=Path, help="where sealed files go (default: under --work)")
    ap.add_argument("--cached", action="store_true", help="read the model from the page cache, not the disk")
    args = ap.parse_args()
    work: Path = args.work
    model = work / f"model-{args.gib}g-{args.files}"
    model.mkdir(parents=True, exist_ok=True)
    for k in range(args.files):
        path = model / f"model-{k + 1:05d}-of-{args.files:05d}.safetensors"
        if not path.exists():
            write_model(path, int(args.gib * 1024 * MiB / args.files), seed=k)
    base = export_tree(args.baseline, work / "baseline")
    new = HERE.parent / "src"
    runs: dict[str, list[dict]] = {"baseline": [], "tensor_digests": []}
    for r in range(args.rounds):
        order = [("baseline", base), ("tensor_digests", new)]
        for label, code in order if r % 2 == 0 else order[::-1]:
            runs[label].append(one_round(code, model, args.zone or work / "zone", not args.cached))
            print(label, runs[label][-1], flush=True)
    total = runs["baseline"][0]["bytes"]
    med = {k: statistics.median(x["seconds"] for x in v) for k, v in runs.items()}
    cpu = {k: statistics.median(x["cpu"] for x in v) for k, v in runs.items()}
    print(json.dumps({
        "bytes": total, "files": args.files, "rounds": args.rounds,
        "tensors": runs["tensor_digests"][0]["tensors"],
        "baseline_mb_s": round(total / 1e6 / med["baseline"], 1),
        "tensor_digests_mb_s": round(total / 1e6 / med["tensor_digests"], 1),
        "ratio": round(med["baseline"] / med["tensor_digests"], 3),
        "cpu_seconds_median": {k: round(v, 3) for k, v in cpu.items()},
        "max_rss_mib": {k: max(x["max_rss_mib"] for x in v) for k, v in runs.items()},
        "source": "page cache" if args.cached else "disk (evicted before each run)",
        "seconds": {k: [round(x["seconds"], 3) for x in v] for k, v in runs.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
