"""Commands of backup and disaster recovery: policies, runs, snapshots, restores, drills."""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer

from custody.cli import output
from custody.cli.common import Ctx, command, emit, fail
from custody.control.services import backups, copies, deletions, drills, restores, snapshots
from custody.domain.errors import CustodyError

backup_app = typer.Typer(help="Scheduled, deduplicated, signed backups.", no_args_is_help=True)
backup_policy_app = typer.Typer(help="Backup schedules, retention, RPO and RTO.", no_args_is_help=True)
backup_app.add_typer(backup_policy_app, name="policy")
snapshot_app = typer.Typer(help="Backup snapshots: list, verify, forget.", no_args_is_help=True)
drill_app = typer.Typer(help="DR drills.", no_args_is_help=True)


@command(backup_policy_app, "set")
def policy_set(ctx: Ctx, asset: str, zone: Annotated[str, typer.Option()],
               every: Annotated[str, typer.Option(help="Cron schedule (UTC), e.g. '0 2 * * *' or @daily.")],
               keep_daily: Annotated[int, typer.Option()] = 7, keep_weekly: Annotated[int, typer.Option()] = 4,
               keep_monthly: Annotated[int, typer.Option()] = 6,
               rpo: Annotated[str, typer.Option(help="Longest tolerable age of the newest snapshot: 24h.")] = "24h",
               rto: Annotated[str, typer.Option(help="Longest tolerable restore time: 1h.")] = "1h") -> None:
    """Set an asset's backup schedule and retention."""
    p = ctx.call(backups.set_policy, asset, zone=zone, every=every, keep_daily=keep_daily,
                 keep_weekly=keep_weekly, keep_monthly=keep_monthly, rpo=rpo, rto=rto)
    emit(ctx, p, lambda: output.fields(p))


@command(backup_policy_app, "list")
def policy_list(ctx: Ctx) -> None:
    """List backup policies."""
    rows = ctx.call(backups.list_policies)
    emit(ctx, rows, lambda: output.table(rows, ["asset", "zone", "schedule", "keep_daily", "keep_weekly",
                                                "keep_monthly", "rpo_seconds", "rto_seconds"], "backup policies"))


@command(backup_app, "run")
def backup_run(ctx: Ctx, asset: Annotated[Optional[str], typer.Argument()] = None,
               due: Annotated[bool, typer.Option("--due", help="Every asset whose schedule has fired.")] = False,
               every: Annotated[Optional[str], typer.Option("--every", help="With --due: keep going at this interval.")] = None) -> None:
    """Back up an asset now, or every asset that is due."""
    from custody.control.policy.catalog import parse_duration

    interval = parse_duration(every) if every else None
    while True:
        rows = ctx.call(backups.run, asset, due=due)
        emit(ctx, rows, lambda: output.table(
            [{"asset": r["asset"], "state": r["state"], "snapshot": r.get("snapshot"), "bytes_added": r.get("bytes_added"),
              "mb_per_s": r.get("mb_per_s")} for r in rows], ["asset", "state", "snapshot", "bytes_added", "mb_per_s"],
            "backups"))
        if interval is None:
            return
        time.sleep(interval)


@command(backup_app, "status")
def backup_status(ctx: Ctx) -> None:
    """Per asset: newest snapshot against the RPO, repository size, deduplication."""
    rows = ctx.call(backups.status)
    emit(ctx, rows, lambda: output.table(rows, ["asset", "rpo", "last_at", "age_seconds", "rpo_seconds", "snapshots",
                                                "repository_bytes", "logical_bytes", "dedup_ratio"], "backup status"))


@command(backup_app, "shred")
def backup_shred(ctx: Ctx, asset: str, zone: Annotated[str, typer.Option()], reason: Annotated[str, typer.Option()]) -> None:
    """Destroy a backup repository's key: every backup of the asset in that zone, at once."""
    r = ctx.call(backups.shred_repository, asset, zone, reason)
    emit(ctx, r, lambda: output.out.print(
        f"repository {r['repository']} shredded: {r['snapshots_destroyed']} snapshots gone" if "deletion" not in r else
        f"repository {r['repository']} holds immutable snapshots: deletion {r['deletion']} needs two approvals "
        f"(custody snapshot approve-delete {r['deletion']}); then run this again"))


@command(snapshot_app, "bundle")
def snapshot_bundle(ctx: Ctx, snapshot_id: Annotated[str, typer.Argument(metavar="ID")],
                    out: Annotated[str, typer.Option("--out")]) -> None:
    """Write a snapshot's signature bundle (verify restored files with `model_signing verify key`)."""
    from pathlib import Path

    data = ctx.call(snapshots.signature_bundle, snapshot_id)
    try:
        Path(out).write_bytes(data)
    except OSError as exc:
        fail(ctx, f"cannot write {out}: {exc.strerror}", 1)
    emit(ctx, {"out": out, "bytes": len(data)}, lambda: output.out.print(f"bundle written to {out}"))


@command(snapshot_app, "list")
def snapshot_list(ctx: Ctx, asset: Annotated[Optional[str], typer.Option()] = None) -> None:
    """List snapshots."""
    rows = ctx.call(snapshots.list_snapshots, asset)
    emit(ctx, rows, lambda: output.table(rows, ["id", "asset", "created_at", "logical_bytes", "added_bytes",
                                                "immutable_until", "verified_at"], "snapshots"))


@command(snapshot_app, "show")
def snapshot_show(ctx: Ctx, snapshot_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Show a snapshot and its files."""
    r = ctx.call(snapshots.show, snapshot_id)

    def human() -> None:
        output.fields(r)
        output.table(r["files"], ["path", "size", "chunks", "sha256"], "files")

    emit(ctx, r, human)


@command(snapshot_app, "verify")
def snapshot_verify(ctx: Ctx, snapshot_id: Annotated[str, typer.Argument(metavar="ID")],
                    read_data: Annotated[bool, typer.Option("--read-data", help="Read and check every chunk and file.")] = False,
                    subset: Annotated[Optional[float], typer.Option("--read-data-subset", help="Read this percentage of chunks.")] = None) -> None:
    """Check a snapshot's signature and chunks (exit 5 naming chunk and file on damage)."""
    r = ctx.call(snapshots.verify, snapshot_id, read_data=read_data, subset=subset)
    emit(ctx, r, lambda: output.out.print(
        f"snapshot {snapshot_id}: signature ok, {r['chunks_present']} chunks present, {r['chunks_checked']} read and "
        f"checked, {r['files_checked']} files checked"))


@command(snapshot_app, "forget")
def snapshot_forget(ctx: Ctx, asset: Annotated[str, typer.Option("--asset")],
                    apply_retention: Annotated[bool, typer.Option("--apply-retention")] = False,
                    prune: Annotated[bool, typer.Option("--prune", help="Delete chunks no snapshot uses.")] = False) -> None:
    """Apply the keep rules (immutable snapshots stay) and optionally prune."""
    if not apply_retention:
        fail(ctx, "say --apply-retention: forgetting follows the asset's keep rules", 2)
    r = ctx.call(snapshots.forget, asset, prune=prune)
    emit(ctx, r, lambda: output.out.print(
        f"{asset}: kept {len(r['kept'])}, forgot {len(r['forgotten'])}, {len(r['immutable'])} still immutable; "
        f"pruned {r['pruned']['deleted']} chunks ({r['pruned']['bytes_freed']:,} bytes)"))


@command(snapshot_app, "delete")
def snapshot_delete(ctx: Ctx, snapshot_id: Annotated[str, typer.Argument(metavar="ID")],
                    reason: Annotated[str, typer.Option()]) -> None:
    """Forget one snapshot now (before its retention ends only with two approvals)."""
    r = ctx.call(snapshots.delete, snapshot_id, reason)
    emit(ctx, r, lambda: output.out.print(
        f"snapshot {snapshot_id} forgotten" if r["state"] == "forgotten" else
        f"snapshot {snapshot_id} is immutable: deletion {r['deletion']} needs {r['needed'] - r['approvals']} more "
        f"approvals (custody snapshot approve-delete {r['deletion']}); then run this again"))


@command(snapshot_app, "approve-delete")
def snapshot_approve_delete(ctx: Ctx, deletion_id: Annotated[str, typer.Argument(metavar="DELETION")],
                            reason: Annotated[str, typer.Option()],
                            otp: Annotated[Optional[str], typer.Option("--otp")] = None) -> None:
    """Approve destroying backups before their retention ends (two approvals, with MFA)."""
    r = ctx.call(deletions.approve, deletion_id, reason, otp)
    emit(ctx, r, lambda: output.out.print(f"deletion {deletion_id} of {r['target_kind']} {r['target']}: "
                                          f"{r['approvals']} of {r['needed']} approvals"))


def restore_cmd(ctx: Ctx, snapshot_id: Annotated[str, typer.Argument(metavar="SNAPSHOT")],
                to: Annotated[str, typer.Option("--to")], purpose: Annotated[str, typer.Option()],
                kind: Annotated[str, typer.Option(help="restore or dr (drills restore through `custody drill dr`)")] = "restore",
                run: Annotated[bool, typer.Option("--run", help="Run at once if approved.")] = False) -> None:
    """Restore a snapshot into a zone: a request decided and approved like any copy."""
    r = ctx.call(restores.restore, snapshot_id, to=to, purpose=purpose, kind=kind)
    if run and r["state"] == "approved":
        r = ctx.call(copies.run, r["id"])
    emit(ctx, r, lambda: output.out.print(
        f"restore request {r['id']}: {r['state']}" + (f", replica {r['result_replica']} in {r.get('rto_seconds')} s"
                                                      if r.get("result_replica") else "")))


@command(drill_app, "dr")
def drill_dr(ctx: Ctx, asset: Annotated[Optional[str], typer.Option("--asset")] = None,
             all_assets: Annotated[bool, typer.Option("--all")] = False,
             zone: Annotated[str, typer.Option("--zone", help="The DR zone to restore into.")] = "dr") -> None:
    """Restore each asset's newest snapshot into a DR zone, check RTO and RPO, shred, report."""
    try:
        r = ctx.call(drills.drill_dr, asset=asset, all_assets=all_assets, zone=zone)
    except CustodyError as exc:
        if not ctx.json and "table" in exc.details:
            output.say(exc.details["table"])
        raise
    emit(ctx, r, lambda: output.say(r["table"]))
