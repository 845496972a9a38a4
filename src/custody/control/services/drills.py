"""DR drills: prove each backed-up asset can come back, within its RTO, from a snapshot within its RPO.

A drill restores the newest snapshot into a DR zone as a drill replica (a request of kind `drill`,
decided by the same policy), checks the restored files against the version digest, measures the
time taken, shreds the drill replica, and keeps a report (JSON and a table) in the workspace.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

from custody.control import views
from custody.control.door import act, record_after
from custody.control.services import copies, replicas, restores
from custody.control.store import backups_repo as br
from custody.control.workspace import Workspace
from custody.domain.errors import CustodyError
from custody.domain.model import new_id

REPORTS = "reports"


class DrillFailed(CustodyError):
    """Some target was missed or some restore failed; carries the report."""

    def __init__(self, report: dict) -> None:
        missed = [r["asset"] for r in report["results"] if not r["passed"]]
        super().__init__(f"DR drill {report['id'][:8]}: {len(missed)} of {len(report['results'])} assets missed "
                         f"a target or failed ({', '.join(missed[:5])}); report {report['files']['json']}")
        self.report = report

    @property
    def details(self) -> dict:
        return self.report


def drill_dr(ws: Workspace, token: str | None, *, asset: str | None = None, all_assets: bool = False,
             zone: str = "dr") -> dict:
    with act(ws, token, "drill.run", subject=asset or "all", destination=zone, deferred=True) as a:
        if (asset is None) == (not all_assets):
            from custody.domain.errors import InvalidInput

            raise InvalidInput("name --asset A or pass --all")
        targets = [br.policy_of(a.uow, asset)] if asset else br.policies(a.uow)
        newest = {p.asset: (br.snapshots(a.uow, asset=p.asset) or [None])[-1] for p in targets}
    drill_id = new_id()
    results = [_drill_one(ws, token, p, newest[p.asset], zone, drill_id) for p in targets]
    report = {"id": drill_id, "at": views.ts(datetime.now(timezone.utc)), "zone": zone, "results": results,
              "passed": bool(results) and all(r["passed"] for r in results)}
    report["table"] = _table(report)
    report["files"] = _write(ws, report)
    record_after(ws, a, "ok" if report["passed"] else "failed",
                 details={"drill": drill_id, "passed": report["passed"], "report": report["files"]["json"],
                          "results": [{k: r[k] for k in ("asset", "passed", "rto_seconds", "rpo_age_seconds")}
                                      for r in results]})
    if not report["passed"]:
        raise DrillFailed(report)
    return report


def _drill_one(ws: Workspace, token: str | None, policy: br.BackupPolicy, snap: br.Snapshot | None, zone: str,
               drill_id: str) -> dict:
    row = {"asset": policy.asset, "snapshot": snap.id if snap else None, "rto_target_seconds": policy.rto_seconds,
           "rpo_target_seconds": policy.rpo_seconds, "rto_seconds": None, "rpo_age_seconds": None,
           "restored_digest_ok": False, "error": None}
    if snap is None:
        row["error"] = "no snapshot to restore"
        row["passed"] = False
        return row
    request_id = None
    try:
        req = restores.restore(ws, token, snap.id, to=zone, purpose=f"DR drill {drill_id[:8]}", kind="drill",
                               ttl="1h", drill=True)
        request_id = req["id"]
        if req["state"] != "approved":
            raise CustodyError(f"the drill's restore needs approval under rule "
                               f"{req['decision']['requirement']['rule']}")
        started = time.perf_counter()  # the RTO: from starting the restore to an active, checked replica
        done = copies.run(ws, token, request_id)
        row["rto_seconds"] = round(time.perf_counter() - started, 3)
        checked = replicas.verify_replica(ws, token, done["result_replica"])  # outside the timer
        row["restored_digest_ok"] = checked["verified"]
        row["replica"] = done["result_replica"]
        with ws.uow() as uow:
            br.mark_verified(uow, snap.id)  # every chunk and every file digest was just checked
    except CustodyError as exc:
        row["error"] = exc.message
    except Exception as exc:  # noqa: BLE001 - one asset's surprise must not lose the whole drill's report
        row["error"] = f"internal error: {type(exc).__name__}"
    finally:
        if request_id is not None:
            try:
                copies.revoke(ws, token, request_id, reason=f"DR drill {drill_id[:8]} done: shred the drill replica")
            except CustodyError as exc:
                row["error"] = row["error"] or f"could not shred the drill replica: {exc.message}"
    row["rto_met"] = row["rto_seconds"] is not None and row["rto_seconds"] <= policy.rto_seconds
    age = _newest_verified_age(ws, policy.asset)  # the RPO: how old the newest proven-restorable snapshot is
    row["rpo_age_seconds"] = round(age, 3) if age is not None else None
    row["rpo_met"] = age is not None and age <= policy.rpo_seconds
    row["passed"] = row["error"] is None and row["restored_digest_ok"] and row["rto_met"] and row["rpo_met"]
    return row


def _newest_verified_age(ws: Workspace, asset: str) -> float | None:
    with ws.uow(readonly=True) as uow:
        verified = [s for s in br.snapshots(uow, asset=asset) if s.verified_at is not None]
    if not verified:
        return None
    return (datetime.now(timezone.utc) - verified[-1].created_at).total_seconds()


def _write(ws: Workspace, report: dict) -> dict:
    folder = ws.home / REPORTS
    folder.mkdir(exist_ok=True)
    stem = folder / f"drill-{report['at'].replace(':', '').replace('-', '')[:15]}-{report['id'][:8]}"
    files = {"json": str(stem.with_suffix(".json")), "table": str(stem.with_suffix(".txt"))}
    stem.with_suffix(".json").write_text(json.dumps({**report, "files": files}, indent=2))
    stem.with_suffix(".txt").write_text(report["table"] + "\n")
    return files


def _table(report: dict) -> str:
    lines = [f"DR drill {report['id']} at {report['at']} into zone {report['zone']}: "
             f"{'PASSED' if report['passed'] else 'FAILED'}", "",
             f"{'asset':<24} {'snapshot':<10} {'RTO s':>9} {'target':>8} {'RPO age s':>10} {'target':>8}  result"]
    for r in report["results"]:
        lines.append(f"{r['asset']:<24} {str(r['snapshot'])[:8]:<10} {str(r['rto_seconds']):>9} "
                     f"{r['rto_target_seconds']:>8} {str(r['rpo_age_seconds']):>10} {r['rpo_target_seconds']:>8}  "
                     f"{'ok' if r['passed'] else 'FAILED: ' + (r['error'] or 'target missed')}")
    return "\n".join(lines)
