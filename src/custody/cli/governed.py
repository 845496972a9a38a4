"""Commands of governed copies: policy, requests, MFA, reviews, exceptions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from custody.cli import output
from custody.cli.common import Ctx, command, emit, progress_bar
from custody.control.services import copies, exceptions, mfa, policy, requests, reviews
from custody.domain.errors import CustodyError

policy_app = typer.Typer(help="The policy catalog: show, test, explain, change.", no_args_is_help=True)
request_app = typer.Typer(help="Ask for copies, approve them, run them.", no_args_is_help=True)
mfa_app = typer.Typer(help="TOTP second factor.", no_args_is_help=True)
review_app = typer.Typer(help="Mandatory reviews (break-glass).", no_args_is_help=True)
exception_app = typer.Typer(help="Time-boxed policy exceptions.", no_args_is_help=True)

REQUEST_COLUMNS = ["id", "state", "kind", "asset", "destination", "requester", "purpose"]


def _request_human(r: dict) -> None:
    output.fields(r, ["id", "state", "kind", "asset", "destination", "requester", "purpose", "ttl_seconds",
                      "transform", "result_replica"])
    d = r.get("decision") or {}
    for reason in d.get("reasons", []):
        output.out.print(f"{'':>20}  · {reason}")
    need = r.get("still_needed")
    if need and need.get("approvals"):
        output.out.print(f"{'still needed':>20}  {need['approvals']} of {need['of']} approvals from "
                         f"{' or '.join(need['roles'])}{', distinct teams' if need['distinct_teams'] else ''}"
                         f"{', with MFA' if need['mfa'] else ''}")
    for ap in r.get("approvals", []):
        output.out.print(f"{'approved by':>20}  {ap['approver']} ({ap['team']}){' with MFA' if ap['mfa'] else ''}")


# -- policy ---------------------------------------------------------------------------------


@command(policy_app, "show")
def policy_show(ctx: Ctx) -> None:
    """The active catalog: policies, approval rules, hash."""
    d = ctx.call(policy.show)

    def human() -> None:
        output.out.print(f"catalog {d['hash']}")
        output.table(d["policies"], ["id", "effect", "reason"], "policies")
        output.table(d["rules"], ["name", "approvals", "roles", "distinct_teams", "mfa", "max_ttl", "window"], "approval rules")
        budgets = d["budgets"]
        output.table([{"budget": "principal", "bytes_per_hour": budgets["principal_bytes_per_hour"]},
                      {"budget": "asset", "bytes_per_hour": budgets["asset_bytes_per_hour"]},
                      *({"budget": f"role {r}", "bytes_per_hour": n} for r, n in budgets["roles"].items())],
                     ["budget", "bytes_per_hour"], "egress budgets per hour (empty: no budget)")

    emit(ctx, d, human)


@command(policy_app, "test")
def policy_test(ctx: Ctx, folder: Annotated[Optional[Path], typer.Argument(help="A candidate catalog folder (default: the active one).")] = None) -> None:
    """Run the catalog's own cases; exit 1 on any mismatch."""
    try:
        r = ctx.call(policy.test, folder)
    except CustodyError as exc:
        if not ctx.json and exc.details.get("results"):
            output.table(exc.details["results"], ["name", "passed", "detail"], "cases")
        raise
    emit(ctx, r, lambda: output.out.print(f"{r['cases']} catalog cases pass ({r['hash'][:16]}…)"))


@command(policy_app, "explain")
def policy_explain(ctx: Ctx, request_id: Annotated[str, typer.Argument(metavar="REQUEST")]) -> None:
    """The decision for a request, the policies behind it, and the approvals still missing."""
    r = ctx.call(requests.explain, request_id)

    def human() -> None:
        for label, d in (("recorded", r["recorded"]), ("now", r["now"])):
            if d:
                output.out.print(f"{label}: {'allow' if d['allowed'] else 'deny'} by "
                                 f"{', '.join(d['policy_ids']) or '(no policy)'} (catalog {d['catalog_hash'][:12]}…)")
                for reason in d["reasons"]:
                    output.out.print(f"  · {reason}")
        if r["still_needed"]:
            output.out.print(f"still needed: {r['still_needed']}")

    emit(ctx, r, human)


@command(policy_app, "propose")
def policy_propose(ctx: Ctx, folder: Path, purpose: Annotated[str, typer.Option(help="Why the catalog changes.")]) -> None:
    """Propose a new catalog (validated now; needs two security approvals)."""
    r = ctx.call(policy.propose, folder, purpose)
    emit(ctx, r, lambda: output.out.print(f"proposal {r['proposal']}: catalog {r['hash'][:16]}… needs "
                                          f"{r['approvals_needed']} security approvals"))


@command(policy_app, "approve")
def policy_approve(ctx: Ctx, proposal: str, otp: Annotated[Optional[str], typer.Option("--otp")] = None,
                   comment: Annotated[Optional[str], typer.Option()] = None) -> None:
    """Approve a catalog proposal (security role)."""
    r = ctx.call(policy.approve, proposal, otp, comment)
    emit(ctx, r, lambda: output.out.print(f"proposal {proposal}: {r['approvals']} of {r['needed']} approvals"))


@command(policy_app, "apply")
def policy_apply(ctx: Ctx, proposal: str) -> None:
    """Activate an approved proposal."""
    r = ctx.call(policy.apply, proposal)
    emit(ctx, r, lambda: output.out.print(f"catalog {r['new_hash'][:16]}… is active (was {str(r['old_hash'])[:16]}…)"))


# -- requests -------------------------------------------------------------------------------


@command(request_app, "create")
def request_create(ctx: Ctx, ref: Annotated[str, typer.Argument(metavar="ASSET[@VERSION]")],
                   kind: Annotated[str, typer.Option(help="backup|dr|research|derivative|migration|read")],
                   purpose: Annotated[str, typer.Option(help="Why this copy must exist.")],
                   to: Annotated[Optional[str], typer.Option("--to", help="Destination zone (none for a read).")] = None,
                   ttl: Annotated[Optional[str], typer.Option(help="How long the copy may live: 7d, 12h, ...")] = None,
                   source: Annotated[Optional[str], typer.Option("--from", help="Source replica (default: primary).")] = None,
                   break_glass: Annotated[bool, typer.Option("--break-glass", help="On-call DR without approvals; opens a review.")] = False,
                   transform: Annotated[Optional[str], typer.Option(
                       help="A derivative's recipe, e.g. truncate:last=4,int4:group=64 (steps: cast:dtype=fp16|bf16|fp32, "
                            "int8, int4:group=N, gguf:type=q8_0|q4_0, subset:include=GLOB, truncate:first|last=N, "
                            "prune:fraction=F, noise:sigma=S).")] = None,
                   run: Annotated[bool, typer.Option("--run", help="Run at once if approved.")] = False) -> None:
    """Ask for a copy, a derivative (--kind derivative --transform RECIPE), or (--kind read) to read a
    replica's weights once in memory; the policy decides at once."""
    r = ctx.call(requests.create, ref, to=to, kind=kind, purpose=purpose, ttl=ttl, source=source,
                 break_glass=break_glass, transform=transform)
    if run and r["state"] == "approved":
        r = _run(ctx, r["id"])
    emit(ctx, r, lambda: _request_human(r))


def _run(ctx: Ctx, request_id: str) -> dict:
    bar = progress_bar(ctx, 1 << 40, "copying")
    if bar is None:
        return ctx.call(copies.run, request_id)
    with bar:
        task = bar.add_task("copying", total=None)
        return ctx.call(copies.run, request_id, progress=lambda n: bar.advance(task, n))


@command(request_app, "list")
def request_list(ctx: Ctx, mine: Annotated[bool, typer.Option("--mine")] = False,
                 awaiting_me: Annotated[bool, typer.Option("--awaiting-me")] = False,
                 state: Annotated[Optional[str], typer.Option()] = None) -> None:
    """List requests."""
    rows = ctx.call(requests.list_requests, mine=mine, awaiting_me=awaiting_me, state=state)
    emit(ctx, rows, lambda: output.table(rows, REQUEST_COLUMNS, "requests"))


@command(request_app, "show")
def request_show(ctx: Ctx, request_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Show a request with its decision and approvals."""
    r = ctx.call(requests.show_request, request_id)
    emit(ctx, r, lambda: _request_human(r))


@command(request_app, "approve")
def request_approve(ctx: Ctx, request_id: Annotated[str, typer.Argument(metavar="ID")],
                    otp: Annotated[Optional[str], typer.Option("--otp", help="TOTP code.")] = None,
                    comment: Annotated[Optional[str], typer.Option()] = None) -> None:
    """Approve someone else's request."""
    r = ctx.call(requests.approve, request_id, otp=otp, comment=comment)
    emit(ctx, r, lambda: _request_human(r))


@command(request_app, "deny")
def request_deny(ctx: Ctx, request_id: Annotated[str, typer.Argument(metavar="ID")],
                 reason: Annotated[str, typer.Option()]) -> None:
    """Deny a request."""
    r = ctx.call(requests.deny, request_id, reason)
    emit(ctx, r, lambda: _request_human(r))


@command(request_app, "cancel")
def request_cancel(ctx: Ctx, request_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Withdraw a request."""
    r = ctx.call(requests.cancel, request_id)
    emit(ctx, r, lambda: _request_human(r))


@command(request_app, "run")
def request_run(ctx: Ctx, request_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Make the copy of an approved request (resumes a copy that was cut short)."""
    r = _run(ctx, request_id)
    emit(ctx, r, lambda: (_request_human(r), output.out.print(f"{r['bytes']:,} bytes at {r['mb_per_s']} MB/s")))


@command(request_app, "revoke")
def request_revoke(ctx: Ctx, request_id: Annotated[str, typer.Argument(metavar="ID")],
                   reason: Annotated[str, typer.Option()]) -> None:
    """Shred every replica the request produced."""
    r = ctx.call(copies.revoke, request_id, reason)
    emit(ctx, r, lambda: output.out.print(f"request {request_id}: shredded {len(r['shredded'])} replicas"))


# -- MFA ------------------------------------------------------------------------------------


@command(mfa_app, "enroll")
def mfa_enroll(ctx: Ctx, otp: Annotated[Optional[str], typer.Option("--otp", help="A code from the factor in force, to replace it.")] = None) -> None:
    """Enrol a TOTP second factor (shown once); it counts once `custody mfa verify CODE` accepts a code."""
    r = ctx.call(mfa.enroll, otp)
    emit(ctx, r, lambda: output.out.print(f"secret (shown once): {r['secret']}\n{r['otpauth_uri']}\n{r['next']}"))


@command(mfa_app, "verify")
def mfa_verify(ctx: Ctx, code: str) -> None:
    """Check a TOTP code."""
    r = ctx.call(mfa.verify, code)
    emit(ctx, r, lambda: output.out.print("code accepted"))


# -- reviews and exceptions -----------------------------------------------------------------


@command(review_app, "list")
def review_list(ctx: Ctx, open_only: Annotated[bool, typer.Option("--open")] = False) -> None:
    """List reviews; open ones older than 24 h are overdue."""
    rows = ctx.call(reviews.list_reviews, open_only)
    emit(ctx, rows, lambda: output.table(rows, ["id", "state", "overdue", "kind", "opened_by", "signed_by", "summary"], "reviews"))


@command(review_app, "close")
def review_close(ctx: Ctx, review_id: Annotated[str, typer.Argument(metavar="ID")],
                 comment: Annotated[str, typer.Option()], otp: Annotated[Optional[str], typer.Option("--otp")] = None) -> None:
    """Sign a review closed (two approvers close it)."""
    r = ctx.call(reviews.close, review_id, comment, otp)
    emit(ctx, r, lambda: output.out.print(f"review {review_id}: {r['state']} (signed by {', '.join(r['signed_by'])})"))


@command(exception_app, "propose")
def exception_propose(ctx: Ctx, policy_id: Annotated[str, typer.Option("--policy")],
                      asset: Annotated[str, typer.Option("--asset")], zone: Annotated[str, typer.Option("--zone")],
                      justification: Annotated[str, typer.Option()],
                      expires: Annotated[str, typer.Option(help="How long it lasts once active: 7d, 12h, ...")]) -> None:
    """Propose switching one policy off for one asset and zone (needs two approvals)."""
    r = ctx.call(exceptions.propose, policy=policy_id, asset=asset, zone=zone, justification=justification,
                 expires=expires)
    emit(ctx, r, lambda: output.out.print(f"exception {r['id']} proposed: {r['policy']} off for {r['asset']} in {r['zone']}"))


@command(exception_app, "approve")
def exception_approve(ctx: Ctx, exception_id: Annotated[str, typer.Argument(metavar="ID")],
                      otp: Annotated[Optional[str], typer.Option("--otp")] = None,
                      comment: Annotated[Optional[str], typer.Option()] = None) -> None:
    """Approve an exception."""
    r = ctx.call(exceptions.approve, exception_id, otp, comment)
    emit(ctx, r, lambda: output.out.print(f"exception {exception_id}: {r['state']}"))


@command(exception_app, "revoke")
def exception_revoke(ctx: Ctx, exception_id: Annotated[str, typer.Argument(metavar="ID")],
                     reason: Annotated[str, typer.Option()]) -> None:
    """End an exception now: its policy applies again."""
    r = ctx.call(exceptions.revoke, exception_id, reason)
    emit(ctx, r, lambda: output.out.print(f"exception {exception_id}: {r['state']}"))


@command(exception_app, "list")
def exception_list(ctx: Ctx) -> None:
    """List exceptions."""
    rows = ctx.call(exceptions.list_exceptions)
    emit(ctx, rows, lambda: output.table(rows, ["id", "state", "policy", "asset", "zone", "expires_at", "approved_by"], "exceptions"))
