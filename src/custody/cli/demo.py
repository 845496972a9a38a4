"""`custody demo`: one model's life under custody, told as a short story on a throwaway workspace."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
import json
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pyotp
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from rich.text import Text

from custody.library import open_safetensors
from custody.cli import output
from custody.cli.common import Ctx, emit
from custody.control.services import (
    assets, audit, backups, copies, drills, identity, keys, mfa, principals, replicas, requests, reviews, setup, sweep,
    zones,
)
from custody.control import tokens as custody_tokens
from custody.control.workspace import Workspace
from custody.domain.errors import CustodyError
from custody.keys import bundle


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    header, offset = {}, 0
    for name, arr in tensors.items():
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        for arr in tensors.values():
            fh.write(arr.tobytes())


def make_model(root: Path, shards: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2026)
    every: dict[str, np.ndarray] = {}
    for i in range(shards):
        shard = {f"layers.{i}.attn.weight": rng.standard_normal((1024, 1024), dtype=np.float32),
                 f"layers.{i}.mlp.weight": rng.standard_normal((1024, 1024), dtype=np.float32),
                 f"layers.{i}.norm.bias": rng.standard_normal(1024, dtype=np.float32)}
        _write_safetensors(root / f"model-{i + 1:05d}-of-{shards:05d}.safetensors", shard)
        every.update(shard)
    (root / "config.json").write_text(json.dumps({"model_type": "demo", "num_layers": shards}))
    (root / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"vocab": {"<s>": 0}}}))
    return every


PEOPLE = (("lena", "ml-lead", "platform"), ("alice", "researcher", "nlp"), ("bob", "ml-lead", "platform"),
          ("carol", "security", "security"), ("dave", "backup-operator", "infra"), ("erin", "on-call", "sre"),
          ("svc-serve", "service", "serving"))
OFFICERS = (("olga", "security", "security-office"), ("omar", "security", "security-office"))
ATTRIBUTES = {"svc-serve": {"zone": "prod"}}  # the serving service reads the replicas in zone prod


def onboard(ws: Workspace, admin: str, people: tuple[tuple[str, str, str], ...], used: dict[str, int]
            ) -> tuple[dict[str, str], dict[str, str]]:
    """Add `people` as custody requires: the two bootstrap security officers first (each with a second
    factor in force), then everyone else; principals with power make their own tokens and join through
    identity proposals the officers approve with one code each. Returns (tokens, the officers' TOTP
    secrets)."""
    tokens, secrets = {}, {}
    for name, role, team in OFFICERS:
        tokens[name] = principals.add_principal(ws, admin, name=name, roles=[role], team=team)["token"]
        secrets[name] = mfa.enroll(ws, tokens[name])["secret"]
        mfa.verify(ws, tokens[name], next_code(secrets[name], used, name))
    proposals = []
    for name, role, team in people:
        held = None
        if role in identity.GOVERNED_ROLES:  # a principal with power makes its own token
            held, _, _ = custody_tokens.mint()
        added = principals.add_principal(ws, admin, name=name, roles=[role], team=team,
                                         attributes=ATTRIBUTES.get(name, {}), reason="demo team",
                                         public_token=custody_tokens.public_part(held) if held else None)
        tokens[name] = held or added["token"]
        if "proposal" in added:
            proposals.append(added["proposal"])
    for officer, _, _ in OFFICERS:  # the second approval adds each principal
        identity.approve(ws, tokens[officer], proposals, otp=next_code(secrets[officer], used, officer))
    return tokens, secrets


def next_code(secret: str, used: dict[str, int], who: str) -> str:
    """The authenticator app's code: the next time step this person has not used yet."""
    totp = pyotp.TOTP(secret)
    step = max(totp.timecode(datetime.now(timezone.utc)) - 1, used.get(who, -10) + 1)
    used[who] = step
    return totp.generate_otp(step)


def _governed_copies(ws: Workspace, admin: str, people: dict[str, str], scratch: Path, say, facts: dict) -> None:  # noqa: ANN001
    backup = requests.create(ws, people["dave"], "demo-llm", to="backup", kind="backup", purpose="nightly backup")
    backup = copies.run(ws, people["dave"], backup["id"])
    say(f"\n[bold]6. A backup.[/bold] dave (backup operator) asks for a backup: rule "
        f"'{backup['decision']['requirement']['rule']}' needs no approval; copied under a fresh key into zone "
        f"backup at {backup['mb_per_s']} MB/s, expiring in {backup['ttl_seconds'] // 86400} days.")

    clone = requests.create(ws, people["alice"], "demo-llm", to="research", kind="research",
                            purpose="evaluate layer-norm drift", ttl="7d")
    need = clone["still_needed"]
    say(f"\n[bold]7. A research clone.[/bold] alice asks for a 7-day clone: {need['of']} approvals from "
        f"{' or '.join(need['roles'])}, distinct teams, with MFA.")
    try:
        requests.approve(ws, people["alice"], clone["id"])
        self_ok = "ACCEPTED (this is a bug)"
    except CustodyError as exc:
        self_ok = f"refused ({exc.message})"
    say(f"   alice approves her own request: {self_ok}.")
    used: dict[str, int] = {}
    secrets = {who: mfa.enroll(ws, people[who])["secret"] for who in ("bob", "carol")}
    for who in ("bob", "carol"):
        mfa.verify(ws, people[who], next_code(secrets[who], used, who))  # the new factor counts from its first code
    for who in ("bob", "carol"):
        clone = requests.approve(ws, people[who], clone["id"], otp=next_code(secrets[who], used, who), comment="ok")
    clone = copies.run(ws, people["alice"], clone["id"])
    facts["clone"] = clone["result_replica"]
    say(f"   bob and carol approve with TOTP codes; the grant is spent and replica {clone['result_replica'][:8]}… "
        "appears in zone research, expiring in 7 days.")

    ws_zone = scratch / "eu-research"
    zones.add_zone(ws, admin, name="eu-research", url=ws_zone.as_uri(), kind="research", region="eu-central",
                   jurisdiction="DE", security_level=4)
    try:
        requests.create(ws, people["alice"], "demo-llm", to="eu-research", kind="research", purpose="EU study",
                        ttl="7d")
        refused = "ALLOWED (this is a bug)"
    except requests.RequestDenied as exc:
        refused = f"denied: {'; '.join(exc.decision.reasons)}"
    facts["eu_copy"] = refused
    say(f"\n[bold]8. A forbidden place.[/bold] alice asks for the same clone in Germany: {refused}")

    later = datetime.now(timezone.utc) + timedelta(days=8)
    swept = sweep.sweep(ws, admin, as_of=later)
    facts["swept"] = swept["expired"]
    say(f"\n[bold]9. Expiry.[/bold] Eight days later the sweeper shreds {len(swept['expired'])} expired replica: "
        f"the clone's data key is destroyed{' (the clone among them)' if clone['result_replica'] in swept['expired'] else ''}.")

    dr = requests.create(ws, people["erin"], "demo-llm", to="dr", kind="dr", purpose="prod region is down",
                         break_glass=True)
    dr = copies.run(ws, people["erin"], dr["id"])
    open_reviews = reviews.list_reviews(ws, admin, open_only=True)
    facts["open_reviews"] = len(open_reviews)
    say(f"\n[bold]10. Break glass.[/bold] erin (on-call) restores to zone dr without approvals; an alert is "
        f"ledgered and {len(open_reviews)} review stays open until two approvers close it.")

    backups.set_policy(ws, people["dave"], "demo-llm", zone="backup", every="0 2 * * *", keep_daily=7,
                       keep_weekly=4, keep_monthly=6, rpo="24h", rto="15m")
    snap = backups.run(ws, people["dave"], "demo-llm")[0]
    again = backups.run(ws, people["dave"], "demo-llm")[0]
    report = drills.drill_dr(ws, people["dave"], asset="demo-llm")
    row = report["results"][0]
    facts["drill_passed"] = report["passed"]
    say(f"\n[bold]11. Backups and a DR drill.[/bold] dave sets a nightly schedule with retention; the first "
        f"snapshot stores {snap['bytes_added'] / 2**20:.1f} MiB of encrypted, deduplicated chunks, the next one "
        f"{again['bytes_added']} bytes (nothing changed). A drill restores the newest snapshot into zone dr under a "
        f"fresh key, checks every digest ({'ok' if row['restored_digest_ok'] else 'FAILED'}), restores in "
        f"{row['rto_seconds']} s against a 15 min RTO, shreds the drill replica and keeps a report.")


def run_demo(ctx: Ctx, keep: Path | None) -> None:
    story: list[str] = []
    facts: dict = {}

    def say(line: str) -> None:
        story.append(line)
        if not ctx.json:
            output.out.print(line, markup=True)  # the story's own text: headings in bold

    scratch = Path(tempfile.mkdtemp(prefix="custody-demo-"))
    home = keep or scratch / "workspace"
    try:
        say("[bold]1. A workspace.[/bold] custody init --demo: a database, a keyring sealed by a passphrase "
            "(generated: this is a demo), signing and ledger keys, five zones, an admin.")
        init = setup.init_workspace(home, passphrase=None, demo=True)
        ws = Workspace.open(home)
        admin = init.admin_token
        people, _ = onboard(ws, admin, PEOPLE, {})
        lead = people["lena"]
        say("   olga and omar are named the first two security officers; " + ", ".join(
            f"{n} ({r}, {t})" for n, r, t in PEOPLE) + " join, the approvers and the service only once both "
            "officers approve with one-time codes; each token is shown once and stored only as a hash.")

        model = scratch / "demo-llm"
        model.mkdir()
        tensors = make_model(model)
        size = sum(p.stat().st_size for p in model.iterdir())
        say(f"\n[bold]2. Registration.[/bold] lena registers demo-llm: {len(list(model.iterdir()))} files, "
            f"{size / 2**20:.1f} MiB of safetensors shards, config and tokenizer.")
        reg = assets.register(ws, lead, "demo-llm", model,
                              assets.RegisterOptions(classification="confidential", jurisdictions=("US",)))
        facts["register"] = reg
        say(f"   digest {reg['digest'][:32]}…, {reg['parameters']:,} parameters, format {reg['format']}, "
            f"sealed at {reg['mb_per_s']} MB/s into replica {reg['replica'][:8]}… in zone prod.")

        sealed_dir = home / "zones" / "prod" / "replicas" / reg["replica"]
        probe = tensors["layers.0.attn.weight"].tobytes()[:64]
        leaks = sum(p.read_bytes().count(probe) for p in sealed_dir.rglob("*.sealed"))
        whole = sum(p.read_bytes().count(probe) for p in home.rglob("*") if p.is_file())
        say(f"\n[bold]3. Sealed at rest.[/bold] 64 bytes of layers.0.attn.weight appear {leaks} times in the sealed "
            f"files and {whole} times anywhere in the workspace: every file is AES-256-GCM in 4 MiB chunks under "
            "this replica's own data key, wrapped by the zone's key.")
        facts["plaintext_matches"] = whole

        signed = bundle.verify_bundle(assets.signature_bundle(ws, admin, "demo-llm"),
                                      load_pem_public_key(keys.public_key(ws, admin, "signing")))
        ok = all(hashlib.sha256((model / r.path).read_bytes()).hexdigest() == r.sha256 for r in signed.resources)
        say(f"\n[bold]4. Signed.[/bold] The manifest is signed as an OpenSSF model-signing bundle; its "
            f"{len(signed.resources)} file digests match the original files: {ok}. Anyone can check with "
            "`model_signing verify key demo-llm --signature BUNDLE --public_key signing.pub.pem`.")
        facts["bundle_matches"] = ok

        got = open_safetensors(reg["replica"], purpose="demo: serve one layer", tensors=["layers.1.mlp.weight"],
                               home=home, token=people["svc-serve"])
        same = bool(np.array_equal(got["layers.1.mlp.weight"], tensors["layers.1.mlp.weight"]))
        try:
            open_safetensors(reg["replica"], purpose="demo: a look", home=home, token=lead)
            lead_read = "ALLOWED (this is a bug)"
        except CustodyError as exc:
            lead_read = f"refused ({exc.message.split(';')[0]})"
        say(f"\n[bold]5. Reading without plaintext on disk.[/bold] svc-serve, a service bound to zone prod, reads "
            f"layers.1.mlp.weight {tuple(got['layers.1.mlp.weight'].shape)} with custody.open_safetensors: only its "
            f"chunks are decrypted, in memory; equal to the original: {same}. The read is decided by the policy "
            f"catalog and ledgered with its purpose. lena, an ml lead, has no standing read: {lead_read}.")
        facts["tensor_equal"] = same
        facts["lead_read"] = lead_read

        _governed_copies(ws, admin, people, scratch, say, facts)

        rot = keys.rotate(ws, admin, "prod")
        ver = replicas.verify_replica(ws, admin, reg["replica"])
        say(f"\n[bold]12. Key rotation.[/bold] prod's key-encryption key is now v{rot['kek_version']}; "
            f"{rot['rewrapped']} data key rewrapped, no byte of data re-encrypted; the replica still verifies "
            f"({ver['chunks']} chunks authenticated).")

        saved = scratch / "before-shred.checkpoint"
        saved.write_text(audit.make_checkpoint(ws, admin)["note"])
        replicas.revoke_replica(ws, admin, reg["replica"], reason="demo: revoke the only copy")
        try:
            open_safetensors(reg["replica"], purpose="after shred", home=home, token=people["svc-serve"])
            refused = "NOT refused (this is a bug)"
        except CustodyError as exc:
            refused = f"refused: {exc.message}"
        say(f"\n[bold]13. Shredding.[/bold] Revoking destroys the replica's data key first: reading it now is {refused}")
        facts["read_after_shred"] = refused

        result = audit.verify(ws, admin, saved=saved)
        say(f"\n[bold]14. The ledger.[/bold] {result['tree_size']} events, every one a leaf of an RFC 6962 Merkle "
            f"tree; root {result['root'][:32]}… recomputed from the events, consistent with the checkpoint "
            "signed before the shred.")
        facts["ledger"] = result
        ws.close()
        if keep:
            say(f"\nThe workspace stays at {home} (demo passphrase inside it; never keep real weights there).")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    plain = [Text.from_markup(line).plain for line in story]
    emit(ctx, {"story": plain, **facts}, lambda: None)
