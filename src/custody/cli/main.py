"""The `custody` command line: parse, call one service function, print. Nothing else."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from custody.cli import output
from custody.cli.common import Ctx, command, emit, progress_bar
from custody.control import tokens
from custody.control.services import assets, audit, identity, keys, principals, replicas, setup, sweep as sweeper, zones
from custody.domain.errors import InvalidInput

app = typer.Typer(help="custody: governed, sealed, ledgered copies of model weights.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
zone_app = typer.Typer(help="Registered places where copies may live.", no_args_is_help=True)
principal_app = typer.Typer(help="People and service accounts.", no_args_is_help=True)
asset_app = typer.Typer(help="Registered models and their versions.", no_args_is_help=True)
replica_app = typer.Typer(help="Copies of asset versions in zones.", no_args_is_help=True)
keys_app = typer.Typer(help="Key-encryption keys, rotation, public keys.", no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident ledger.", no_args_is_help=True)
from custody.cli.backups import backup_app, drill_app, restore_cmd, snapshot_app  # noqa: E402
from custody.cli.governed import exception_app, mfa_app, policy_app, request_app, review_app  # noqa: E402

from custody.cli.tracing import identify_cmd, trace_cmd  # noqa: E402

command(app, "restore")(restore_cmd)
command(app, "identify")(identify_cmd)
command(app, "trace")(trace_cmd)

for sub, name in ((backup_app, "backup"), (snapshot_app, "snapshot"), (drill_app, "drill"), (policy_app, "policy"), (request_app, "request"), (mfa_app, "mfa"), (review_app, "review"),
                  (exception_app, "exception"), (zone_app, "zone"), (principal_app, "principal"), (asset_app, "asset"), (replica_app, "replica"),
                  (keys_app, "keys"), (audit_app, "audit")):
    app.add_typer(sub, name=name)


# -- workspace ------------------------------------------------------------------------------


@command(app, "init")
def init(ctx: Ctx,
         demo: Annotated[bool, typer.Option("--demo", help="Generate a throwaway passphrase (demos only).")] = False,
         jurisdiction: Annotated[str, typer.Option(help="Jurisdiction of the default zones.")] = "US",
         custodian: Annotated[str, typer.Option(help="Where keys live: local (sealed keyring), pkcs11 (an HSM token) "
                                                     "or aws-kms.")] = "local",
         shares: Annotated[Optional[int], typer.Option(help="local: split the keyring's master secret into this many "
                                                            "Shamir shares (SLIP-39) instead of a passphrase.")] = None,
         threshold: Annotated[Optional[int], typer.Option(help="local: shares needed to unseal (with --shares).")] = None,
         pkcs11_library: Annotated[Optional[str], typer.Option(help="pkcs11: the token's PKCS#11 module "
                                                                    "(default $CUSTODY_PKCS11_LIBRARY).")] = None,
         pkcs11_token: Annotated[Optional[str], typer.Option(help="pkcs11: the token's label (default "
                                                                  "$CUSTODY_PKCS11_TOKEN); the PIN comes from "
                                                                  "$CUSTODY_PKCS11_PIN.")] = None,
         kms_endpoint: Annotated[Optional[str], typer.Option(help="aws-kms: an endpoint URL other than AWS's.")] = None,
         kms_region: Annotated[Optional[str], typer.Option(help="aws-kms: the region (default $AWS_DEFAULT_REGION); "
                                                                "credentials come from the usual AWS environment.")] = None,
         ) -> None:
    """Create a workspace: database, custodian and keys, default zones, an admin token."""
    ctx.local_only()
    given = {"shares": shares, "threshold": threshold, "library": pkcs11_library, "token": pkcs11_token,
             "endpoint_url": kms_endpoint, "region": kms_region}
    result = setup.init_workspace(ctx.home, passphrase=os.environ.get("CUSTODY_PASSPHRASE"), demo=demo,
                                  jurisdiction=jurisdiction, custodian=custodian,
                                  custodian_options={k: v for k, v in given.items() if v is not None})

    def human() -> None:
        output.out.print(f"Workspace created at {result.home}")
        if result.demo:
            output.err.print("DEMO WORKSPACE: its passphrase is stored in clear inside it. "
                             "Never keep real weights here.", style="bold yellow")
        output.out.print(f"Keys are held by the {result.custodian} custodian.")
        if result.shares:
            output.out.print("Shamir shares of the keyring's master secret (shown once: give one to each holder; "
                             "`custody unseal` takes them):")
            for i, share in enumerate(result.shares, 1):
                output.out.print(f"  share {i}: {share}")
        output.out.print("Admin token (shown once, store it now):")
        output.out.print(result.admin_token)
        output.out.print(f"Next: {BOOTSTRAP_HINT}")

    emit(ctx, {"home": str(result.home), "admin_token": result.admin_token, "demo": result.demo,
               "custodian": result.custodian, **({"shares": result.shares} if result.shares else {}),
               "next": BOOTSTRAP_HINT}, human)


BOOTSTRAP_HINT = ("name the first two security officers: each makes a token (`custody principal new-token`) and "
                  "hands you its public part, then `custody principal add NAME --role security --team TEAM "
                  "--public-token ID:SHA256`, twice; each officer runs `custody mfa enroll` and `custody mfa verify "
                  "CODE`. Admins, approvers, on-call responders, services and further officers then join by proposal, "
                  "approved by two security officers.")


@command(app, "unseal")
def unseal(ctx: Ctx,
           share_file: Annotated[Optional[Path], typer.Option(help="Read the share from this file instead of the "
                                                                   "terminal or standard input.")] = None) -> None:
    """Give your Shamir share to a server whose keyring is sealed by shares (--server URL); each holder runs
    it once. Without a server: check that the shares read from standard input (one per line) unseal the
    local keyring, as a drill, and keep nothing."""
    from custody.control.services import unseal as unsealing

    def read_share() -> str:
        if share_file:
            return share_file.read_text().strip()
        if sys.stdin.isatty():
            import getpass

            return getpass.getpass("share (not echoed): ").strip()
        return sys.stdin.readline().strip()

    if ctx.server:
        from custody.api.client import Remote

        remote = Remote(ctx.server, None)
        try:
            state = remote.give_share(read_share())
        finally:
            remote.close()
    else:
        state = unsealing.drill(ctx.home.resolve(), read_share)

    def human() -> None:
        if state.get("drill"):
            output.out.print("the shares unseal the keyring (checked here; nothing kept)")
        elif state.get("sealed"):
            output.out.print(f"share accepted: {state['given']} of {state['threshold']} given; the custodian stays sealed")
        else:
            output.out.print("the custodian is unsealed")

    emit(ctx, state, human)


@command(app, "demo")
def demo(ctx: Ctx,
         keep: Annotated[Optional[Path], typer.Option(help="Keep the demo workspace in this folder.")] = None) -> None:
    """Tell the story of one model: register, seal, sign, read, rotate, shred, verify."""
    ctx.local_only()
    from custody.cli.demo import run_demo

    run_demo(ctx, keep)


@command(app, "serve")
def serve(ctx: Ctx, host: Annotated[str, typer.Option()] = "127.0.0.1",
          port: Annotated[int, typer.Option()] = 8700,
          workers: Annotated[int, typer.Option(help="Server processes (several share one PostgreSQL store).")] = 1,
          seed_demo: Annotated[bool, typer.Option("--seed-demo", help="No workspace at --home? Create the demo one "
                                                  "(people, model, requests in every state) and print its tokens.")] = False) -> None:
    """Serve the portal (/portal), the REST API (OpenAPI at /openapi.json, /docs), /metrics, /healthz and /readyz."""
    from custody.api import server
    from custody.cli import portal_demo
    from custody.control.workspace import CONFIG

    ctx.local_only()
    if seed_demo and not (ctx.home / CONFIG).exists():
        if not ctx.json:
            output.err.print(f"creating the demo workspace in {ctx.home} (a minute) ...")
        portal_demo.seed(ctx.home)
    server.check(ctx.ws)  # fail now, with a clear message: no workspace, one others can read, a bad proxy list
    people = portal_demo.load(ctx.home) if seed_demo else None
    os.environ["CUSTODY_HOME"] = str(ctx.home.resolve())
    url = f"http://{host}:{port}/portal/"
    if ctx.json:
        output.emit_json({"url": url, "home": str(ctx.home.resolve()), "demo": people})
    else:
        output.err.print(f"custody serving {ctx.home.resolve()}: portal {url}  (API docs /docs, metrics /metrics)")
        if people:
            output.err.print("demo sign-in tokens (DEMO WORKSPACE: never keep real weights here):")
            output.err.print(f"  {'admin':<6} {'admin':<26} {people['admin']}", markup=False)
            for name, p in people["people"].items():
                totp = f"  TOTP seed {p['totp_secret']}" if p.get("totp_secret") else ""
                output.err.print(f"  {name:<6} {p['role'] + ' (' + p['team'] + ')':<26} {p['token']}{totp}", markup=False)
            output.err.print("approvers: add the TOTP seed to an authenticator app to approve in the portal")
    server.serve(host, port, workers)


@command(app, "sweep")
def sweep(ctx: Ctx, every: Annotated[Optional[str], typer.Option("--every", help="Keep sweeping at this interval: 60s, 5m.")] = None) -> None:
    """Shred expired replicas, lapse stale requests, remove what interrupted writes left behind."""
    import time

    from custody.control.policy.catalog import parse_duration

    interval = parse_duration(every) if every else None
    while True:
        result = ctx.call(sweeper.sweep)
        emit(ctx, result, lambda: output.out.print(
            f"failed {len(result['failed'])} stale writes, shredded {len(result['expired'])} expired replicas, "
            f"lapsed {len(result['lapsed'])} requests, removed {len(result['removed'])} leftover folders"))
        if interval is None:
            return
        time.sleep(interval)


# -- zones ----------------------------------------------------------------------------------


@command(zone_app, "add")
def zone_add(ctx: Ctx, name: str,
             url: Annotated[str, typer.Option(help="fsspec URL, e.g. file:///data/zone or s3://bucket/prefix")],
             kind: Annotated[str, typer.Option(help="production|backup|dr|research|quarantine|archive")],
             region: Annotated[str, typer.Option()],
             jurisdiction: Annotated[str, typer.Option(help="Two-letter code: US, EU, DE, ...")],
             security_level: Annotated[int, typer.Option(help="1-5 (RAND SL)")]) -> None:
    """Register a zone."""
    z = ctx.call(zones.add_zone, name=name, url=url, kind=kind, region=region, jurisdiction=jurisdiction,
                 security_level=security_level)
    emit(ctx, z, lambda: output.out.print(f"zone {z['name']} added ({z['kind']}, {z['jurisdiction']}, SL{z['security_level']})"))


@command(zone_app, "list")
def zone_list(ctx: Ctx) -> None:
    """List zones."""
    rows = ctx.call(zones.list_zones)
    emit(ctx, rows, lambda: output.table(rows, ["name", "kind", "region", "jurisdiction", "security_level", "url"], "zones"))


@command(zone_app, "budget")
def zone_budget(ctx: Ctx, name: str,
                bytes_per_hour: Annotated[Optional[int], typer.Option(help="Egress budget; omit to remove it.")] = None) -> None:
    """Set how many bytes per hour copies may take out of a zone."""
    z = ctx.call(zones.set_budget, name, bytes_per_hour)
    emit(ctx, z, lambda: output.out.print(f"zone {name}: egress budget {z['egress_bytes_per_hour'] or 'none'} bytes/hour"))


@command(zone_app, "show")
def zone_show(ctx: Ctx, name: str) -> None:
    """Show one zone and what it holds."""
    z = ctx.call(zones.show_zone, name)
    emit(ctx, z, lambda: output.fields(z))


# -- principals -----------------------------------------------------------------------------


@command(principal_app, "add")
def principal_add(ctx: Ctx, name: str,
                  role: Annotated[list[str], typer.Option("--role", help="Repeatable. Adding an admin, security or "
                                                          "ml-lead is a proposal two security officers approve.")],
                  team: Annotated[Optional[str], typer.Option()] = None,
                  attr: Annotated[Optional[list[str]], typer.Option("--attr", help="k=v, repeatable.")] = None,
                  reason: Annotated[Optional[str], typer.Option(help="Why (shown to the approvers).")] = None,
                  public_token: Annotated[Optional[str], typer.Option(
                      "--public-token", help="ID:SHA256 of a token its holder made (`principal new-token`): "
                      "needed for a principal with power, whose token nobody else may see.")] = None) -> None:
    """Add a principal (its token is printed once), or propose one with power (admin, security,
    ml-lead, on-call, service): two security officers approve it."""
    attributes = {}
    for item in attr or []:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise InvalidInput(f"bad --attr {item!r}: use key=value")
        attributes[k] = v
    p = ctx.call(principals.add_principal, name=name, roles=role, team=team, attributes=attributes, reason=reason,
                 public_token=public_token)

    def human() -> None:
        if "proposal" in p:
            print_identity_proposal(p)
            return
        output.out.print(f"principal {p['name']} added ({', '.join(p['roles'])})."
                         + (" Token (shown once):" if p["token"] else " Its holder has its token."))
        if p["token"]:
            output.out.print(p["token"])

    emit(ctx, p, human)


def print_identity_proposal(p: dict) -> None:
    output.out.print(f"identity proposal {p['proposal']}: {p['change']} {p['principal']} ({', '.join(p['roles'])}), "
                     f"{p['state']}; approved by {len(p['approved_by'])} of {p['needed']}"
                     + (f" ({', '.join(p['approved_by'])})" if p["approved_by"] else ""))
    if p.get("next"):
        output.out.print(f"next: {p['next']}")


@command(principal_app, "list")
def principal_list(ctx: Ctx) -> None:
    """List principals."""
    rows = ctx.call(principals.list_principals)
    emit(ctx, rows, lambda: output.table(rows, ["name", "roles", "team", "suspended"], "principals"))


@command(principal_app, "suspend")
def principal_suspend(ctx: Ctx, name: str,
                      reason: Annotated[Optional[str], typer.Option(help="Why (shown to the approvers).")] = None) -> None:
    """Suspend a principal: its token stops working at once (an admin or security officer: once two
    security officers approve)."""
    p = ctx.call(principals.suspend_principal, name, reason=reason)
    emit(ctx, p, lambda: print_identity_proposal(p) if "proposal" in p else output.out.print(f"principal {name} suspended"))


@command(principal_app, "proposals")
def principal_proposals(ctx: Ctx,
                        open_only: Annotated[bool, typer.Option("--open", help="Only those awaiting approval.")] = False
                        ) -> None:
    """Identity proposals: additions of approvers and admins, suspensions of admins and security officers."""
    rows = ctx.call(identity.list_proposals, open_only=open_only)
    emit(ctx, rows, lambda: output.table(rows, ["proposal", "change", "principal", "roles", "proposer", "state",
                                                "approved_by"], "identity proposals"))


@command(principal_app, "approve")
def principal_approve(ctx: Ctx, proposal: Annotated[list[str], typer.Argument(help="One or more proposal ids.")],
                      otp: Annotated[Optional[str], typer.Option(help="A one-time code from your second factor.")] = None,
                      comment: Annotated[Optional[str], typer.Option()] = None) -> None:
    """Approve identity proposals (security officers, with one one-time code for all of them)."""
    rows = ctx.call(identity.approve, proposal, otp=otp, comment=comment)

    def human() -> None:
        for p in rows:
            print_identity_proposal(p)

    emit(ctx, rows, human)


@command(principal_app, "new-token")
def principal_new_token(ctx: Ctx) -> None:
    """Make your own token, here, with no server: keep the token; hand over only its public part
    (ID:SHA256) so a principal can be added for it (`principal add ... --public-token`)."""
    token, _, token_hash = tokens.mint()
    out = {"token": token, "public": tokens.public_part(token), "fingerprint": tokens.fingerprint(token_hash)}

    def human() -> None:
        output.out.print("token (keep it secret; nobody else needs it):")
        output.out.print(token)
        output.out.print("public part (hand this over):")
        output.out.print(out["public"])
        output.out.print(f"fingerprint (read it out to the approving officers): {out['fingerprint']}")

    emit(ctx, out, human)


@command(principal_app, "withdraw")
def principal_withdraw(ctx: Ctx, proposal: str,
                       reason: Annotated[Optional[str], typer.Option(help="Why.")] = None) -> None:
    """End an open identity proposal without effect (its proposer or a security officer)."""
    p = ctx.call(identity.withdraw, proposal, reason=reason)
    emit(ctx, p, lambda: print_identity_proposal(p))


@command(principal_app, "rotate-token")
def principal_rotate_token(ctx: Ctx) -> None:
    """Replace your own token: the old one stops working at once; the new one is printed once."""
    p = ctx.call(principals.rotate_token)

    def human() -> None:
        output.out.print(f"new token for {p['name']} (shown once; the old one no longer works):")
        output.out.print(p["token"])

    emit(ctx, p, human)


# -- assets ---------------------------------------------------------------------------------


@command(asset_app, "register")
def asset_register(ctx: Ctx, name: str, path: Path,
                   sensitivity: Annotated[Optional[str], typer.Option(help="public|internal|confidential|restricted|critical")] = None,
                   jurisdiction: Annotated[Optional[list[str]], typer.Option("--jurisdiction", help="Where copies may live; repeatable.")] = None,
                   min_security_level: Annotated[Optional[int], typer.Option()] = None,
                   owner: Annotated[Optional[str], typer.Option()] = None,
                   zone: Annotated[str, typer.Option()] = "prod") -> None:
    """Register a model file or folder: seal it into a zone and sign its manifest."""
    opts = assets.RegisterOptions(classification=sensitivity, jurisdictions=tuple(jurisdiction or ()),
                                  min_security_level=min_security_level, owner=owner, zone=zone)
    total = _size_of(path)
    bar = progress_bar(ctx, total, "sealing")
    if bar is None:
        result = ctx.call(assets.register, name, path, opts)
    else:
        with bar:
            task = bar.add_task(f"sealing {name}", total=total)
            result = ctx.call(assets.register, name, path, opts, progress=lambda n: bar.advance(task, n))
    emit(ctx, result, lambda: output.out.print(
        f"registered {result['asset']}@{result['version']}: {result['files']} files, {result['bytes']:,} bytes, "
        f"{result['format']}, {result['parameters'] or '?'} parameters{' [UNSAFE: pickle]' if result['unsafe'] else ''}\n"
        f"  digest  {result['digest']}\n  replica {result['replica']} (zone {zone})\n"
        f"  sealed at {result['mb_per_s']} MB/s"))


def _size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


@command(asset_app, "list")
def asset_list(ctx: Ctx) -> None:
    """List assets with their newest version."""
    rows = ctx.call(assets.list_assets)
    emit(ctx, rows, lambda: output.table(rows, ["asset", "version", "classification", "format", "parameters", "bytes", "owner"], "assets"))


@command(asset_app, "show")
def asset_show(ctx: Ctx, ref: Annotated[str, typer.Argument(metavar="NAME[@VERSION]")]) -> None:
    """Show a version: manifest, formats, replicas."""
    v = ctx.call(assets.show_asset, ref)

    def human() -> None:
        output.fields({k: x for k, x in v.items() if k != "derived_from"})
        if v.get("derived_from"):
            d = v["derived_from"]
            output.out.print(f"{'derived from':>20}  {d['asset']}@{d['version']} by {d['recipe']}", markup=False)
        output.table(v["manifest"], ["path", "size", "sha256"], "files")
        output.table(v["replicas"], ["id", "zone", "kind", "state"], "replicas")
        if v.get("derivatives"):
            output.table(v["derivatives"], ["asset", "version", "recipe"], "derivatives")

    emit(ctx, v, human)


@command(asset_app, "lineage")
def asset_lineage(ctx: Ctx, name: str) -> None:
    """The asset's family of derivatives: versions, recipes, requests (text, or --json)."""
    from custody.control.services import lineage

    graph = ctx.call(lineage.lineage, name)
    emit(ctx, graph, lambda: [output.out.print(line, markup=False) for line in lineage.render(graph)])


@command(asset_app, "bundle")
def asset_bundle(ctx: Ctx, ref: Annotated[str, typer.Argument(metavar="NAME[@VERSION]")],
                 out: Annotated[Path, typer.Option("--out", help="Where to write the Sigstore bundle.")]) -> None:
    """Write a version's signature bundle (verifiable with `model_signing verify key`)."""
    data = ctx.call(assets.signature_bundle, ref)
    out.write_bytes(data)
    emit(ctx, {"out": str(out), "bytes": len(data)}, lambda: output.out.print(f"bundle written to {out}"))


# -- replicas -------------------------------------------------------------------------------


@command(replica_app, "list")
def replica_list(ctx: Ctx, asset: Annotated[Optional[str], typer.Option()] = None,
                 zone: Annotated[Optional[str], typer.Option()] = None,
                 state: Annotated[Optional[str], typer.Option()] = None) -> None:
    """List replicas."""
    rows = ctx.call(replicas.list_replicas, asset=asset, zone=zone, state=state)
    emit(ctx, rows, lambda: output.table(rows, ["id", "asset", "zone", "kind", "state", "expires_at"], "replicas"))


@command(replica_app, "show")
def replica_show(ctx: Ctx, replica_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Show one replica."""
    r = ctx.call(replicas.show_replica, replica_id)
    emit(ctx, r, lambda: output.fields(r))


@command(replica_app, "verify")
def replica_verify(ctx: Ctx, replica_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Decrypt every chunk and check every file against the signed manifest."""
    r = ctx.call(replicas.verify_replica, replica_id)
    emit(ctx, r, lambda: output.out.print(f"replica {replica_id} verified: {r['files']} files, {r['chunks']} chunks, {r['bytes']:,} bytes"))


@command(replica_app, "revoke")
def replica_revoke(ctx: Ctx, replica_id: Annotated[str, typer.Argument(metavar="ID")],
                   reason: Annotated[str, typer.Option(help="Why; recorded in the ledger.")]) -> None:
    """Shred a replica: destroy its data key, then delete its sealed files."""
    r = ctx.call(replicas.revoke_replica, replica_id, reason)
    emit(ctx, r, lambda: output.out.print(f"replica {replica_id} shredded: its data key is destroyed"))


# -- keys -----------------------------------------------------------------------------------


@command(keys_app, "status")
def keys_status(ctx: Ctx) -> None:
    """Every key the custodian holds: version, age against its cryptoperiod, overdue, data keys wrapped."""
    rows = ctx.call(keys.status)

    def human() -> None:
        shown = [{**r, "zone": r["zone"] or "-", "data_keys": "-" if r["data_keys"] is None else r["data_keys"],
                  "overdue": "OVERDUE" if r["overdue"] else ""} for r in rows]
        output.table(shown, ["purpose", "zone", "version", "state", "age_days", "cryptoperiod_days", "overdue",
                             "data_keys", "where"], f"keys held by the {rows[0]['custodian'] if rows else ''} custodian")

    emit(ctx, rows, human)


@command(keys_app, "rotate")
def keys_rotate(ctx: Ctx, zone: Annotated[Optional[str], typer.Argument(help="The zone whose KEK moves to a new epoch.")] = None,
                due: Annotated[bool, typer.Option("--due", help="Rotate every zone whose KEK is past its cryptoperiod.")] = False) -> None:
    """New KEK epoch for a zone (or every overdue one): data keys rewrapped, old KEK destroyed, no data re-encrypted."""
    if (zone is None) == (not due):
        raise InvalidInput("name a ZONE or pass --due (not both)")
    done = ctx.call(keys.rotate_due) if due else [ctx.call(keys.rotate, zone)]

    def human() -> None:
        if not done:
            output.out.print("no key is past its cryptoperiod")
        for r in done:
            output.out.print(f"zone {r['zone']}: KEK v{r['kek_version']} active, {r['rewrapped']} data keys rewrapped, "
                             f"old versions {', '.join(f'v{v}' for v in r['retired']) or 'none'} {r['destroyed']}")

    emit(ctx, done if due else done[0], human)


@command(keys_app, "public")
def keys_public(ctx: Ctx, purpose: Annotated[str, typer.Option(help="signing|ledger|witness")] = "signing",
                out: Annotated[Optional[Path], typer.Option("--out")] = None) -> None:
    """Write or print a public key (PEM)."""
    pem = ctx.call(keys.public_key, purpose)
    if out:
        out.write_bytes(pem)
    emit(ctx, {"purpose": purpose, "pem": pem.decode(), "out": str(out) if out else None},
         lambda: output.out.print(f"{purpose} public key written to {out}" if out else pem.decode().rstrip()))


# -- audit ----------------------------------------------------------------------------------


@command(audit_app, "export")
def audit_export(ctx: Ctx, out: Annotated[Path, typer.Option("--out")]) -> None:
    """Write every event as JSON Lines (leaf i = SHA-256(0x00 || line i))."""
    r = ctx.call(audit.export, out)
    emit(ctx, r, lambda: output.out.print(f"{r['events']} events written to {out}; root {r['root']}"))


@command(audit_app, "checkpoint")
def audit_checkpoint(ctx: Ctx) -> None:
    """Sign and print a checkpoint (C2SP signed note) of the ledger as it is now, and have the witness cosign it."""
    r = ctx.call(audit.make_checkpoint)

    def human() -> None:
        output.out.print(r["note"], end="")
        w = r.get("witness") or {}
        if not w.get("witnessed", True):  # stored all the same; the next checkpoint retries
            output.err.print(f"the witness did not cosign it: {w.get('error')}", style="bold yellow")

    emit(ctx, r, human)


@command(audit_app, "prove")
def audit_prove(ctx: Ctx, seq: int, size: Annotated[Optional[int], typer.Option("--size")] = None) -> None:
    """Inclusion proof of one event."""
    r = ctx.call(audit.prove, seq, size)
    emit(ctx, r, lambda: output.emit_json(r))


@command(audit_app, "consistency")
def audit_consistency(ctx: Ctx, old: int, new: int) -> None:
    """Consistency proof between two tree sizes."""
    r = ctx.call(audit.consistency, old, new)
    emit(ctx, r, lambda: output.emit_json(r))


@command(audit_app, "verify")
def audit_verify(ctx: Ctx,
                 checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="A checkpoint saved earlier.")] = None,
                 public_key: Annotated[Optional[Path], typer.Option("--public-key", help="Pin the ledger key (PEM).")] = None,
                 witness_key: Annotated[Optional[Path], typer.Option("--witness-key", help="Pin the witness key (PEM).")] = None) -> None:
    """Recompute the tree from the events and check it against every checkpoint, the witnessed one included."""
    r = ctx.call(audit.verify, checkpoint, public_key, witness_key=witness_key)
    emit(ctx, r, lambda: output.out.print(
        f"ledger verified: {r['tree_size']} events, root {r['root']}, {r['checkpoints_checked']} checkpoints agree; "
        f"{r['events_after_checkpoint']} events newer than the newest checkpoint; "
        + (f"witnessed up to {r['witnessed_size']}" if r.get("witnessed_size") is not None else "not witnessed yet")))


@command(audit_app, "witness")
def audit_witness(ctx: Ctx) -> None:
    """What the witness holds: the newest checkpoint it cosigned, when, and where it keeps it."""
    r = ctx.call(audit.witness_state)
    emit(ctx, r, lambda: output.out.print(
        f"witness {r['witness']} for {r['origin']}: "
        + (f"cosigned size {r['witnessed_size']} at {r['time']}" if r["time"] else "nothing cosigned yet")
        + f"; kept at {r['location']}; the ledger holds {r['ledger_size']} events"))


def main() -> None:
    os.umask(0o077)  # what this process adds to a workspace (WAL, lock, keys, reports) stays private
    app()


if __name__ == "__main__":
    main()
