"""Decision latency of the default catalog on random facts, for `make bench`.

Timings are measured here and reported, never asserted in tests (DESIGN.md §Quality bar).
Run alone with `python -m custody.control.policy.bench`.
"""

from __future__ import annotations

import json
import random
import statistics
import time

from custody.control.policy.catalog import Catalog
from custody.control.policy.context import ApproveFacts, AssetFacts, CopyFacts, PrincipalFacts, ZoneFacts

_ZONE_KINDS = ("production", "backup", "dr", "research", "quarantine", "archive")
_JURISDICTIONS = ("US", "EU", "DE", "GB", "JP", "CN")
_CLASSES = ("public", "internal", "confidential", "restricted", "critical")
_ROLES = ("admin", "researcher", "ml-lead", "security", "backup-operator", "on-call", "auditor")
_KINDS = ("backup", "dr", "research", "derivative", "migration")


def _world(rng: random.Random, assets: int, principals: int, zones: int) -> tuple[list, list, list]:
    zone_list = [ZoneFacts(f"zone-{i}", rng.choice(_ZONE_KINDS), rng.choice(_JURISDICTIONS), rng.randint(1, 5),
                           f"region-{i % 7}") for i in range(zones)]
    asset_list = [AssetFacts(f"model-{i}", rng.choice(_CLASSES), tuple(rng.sample(_JURISDICTIONS, rng.randint(1, 4))),
                             rng.randint(1, 5), f"team-{i % 9}", rng.randint(1 << 20, 1 << 36), rng.random() < 0.05,
                             rng.choice((None, rng.randint(10**6, 10**11)))) for i in range(assets)]
    people = [PrincipalFacts(f"user-{i}", tuple(rng.sample(_ROLES, rng.randint(1, 2))), f"team-{i % 9}",
                             {"clearance": rng.choice(("low", "high"))}) for i in range(principals)]
    return asset_list, people, zone_list


def _percentile(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000.0


def bench_decisions(n: int = 10_000, *, assets: int = 1_000, principals: int = 100, zones: int = 50,
                    seed: int = 7) -> dict:
    """p50/p99 latency in microseconds of `decide_copy` and `decide_approval` over random facts."""
    rng = random.Random(seed)
    catalog = Catalog.load(Catalog.default_folder())
    asset_list, people, zone_list = _world(rng, assets, principals, zones)
    copies = [CopyFacts(rng.choice(people), rng.choice(asset_list), rng.choice(zone_list), rng.choice(zone_list),
                        rng.choice(_KINDS), rng.choice((None, rng.randint(3600, 90 * 86400))), "bench",
                        rng.random() < 0.02, frozenset({"forbid-jurisdiction"}) if rng.random() < 0.05 else frozenset())
              for _ in range(n)]
    approvals = [ApproveFacts(rng.choice(people), rng.choice(people).name, f"team-{rng.randint(0, 8)}",
                              rng.choice(asset_list), rng.choice(zone_list), rng.choice(_KINDS)) for _ in range(n)]
    for f in copies[:200]:  # warm up
        catalog.decide_copy(f)

    def measure(decide, facts: list) -> tuple[list[int], int]:
        times, allowed = [], 0
        for f in facts:
            start = time.perf_counter_ns()
            decision = decide(f)
            times.append(time.perf_counter_ns() - start)
            allowed += decision.allowed
        return sorted(times), allowed

    copy_ns, copy_allowed = measure(catalog.decide_copy, copies)
    approve_ns, approve_allowed = measure(catalog.decide_approval, approvals)
    return {"decisions": n, "assets": assets, "principals": principals, "zones": zones,
            "policies": len(catalog.policies), "catalog_hash": catalog.hash,
            "copy_p50_us": _percentile(copy_ns, 0.50), "copy_p99_us": _percentile(copy_ns, 0.99),
            "copy_max_us": copy_ns[-1] / 1000.0, "copy_mean_us": statistics.fmean(copy_ns) / 1000.0,
            "copy_per_s": round(1e9 / statistics.fmean(copy_ns)), "copy_allowed": copy_allowed,
            "approve_p50_us": _percentile(approve_ns, 0.50), "approve_p99_us": _percentile(approve_ns, 0.99),
            "approve_allowed": approve_allowed}


if __name__ == "__main__":
    print(json.dumps(bench_decisions(), indent=2))
