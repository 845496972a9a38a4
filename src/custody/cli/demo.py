"""`custody demo`: one model's life under custody, told as a short story on a throwaway workspace."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from rich.text import Text

from custody.api import open_safetensors
from custody.cli import output
from custody.cli.common import Ctx, emit
from custody.control.services import assets, audit, keys, principals, replicas, setup
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
        _, lead = principals.add_principal(ws, admin, name="lena", roles=["ml-lead"], team="platform", attributes={})
        say("   lena (ml-lead, platform) joins; her token is shown once and stored only as a hash.")

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

        got = open_safetensors(reg["replica"], purpose="demo: check one layer", tensors=["layers.1.mlp.weight"],
                               home=home, token=lead)
        same = bool(np.array_equal(got["layers.1.mlp.weight"], tensors["layers.1.mlp.weight"]))
        say(f"\n[bold]5. Reading without plaintext on disk.[/bold] custody.open_safetensors decrypts only the chunks "
            f"of layers.1.mlp.weight {tuple(got['layers.1.mlp.weight'].shape)} in memory; equal to the original: "
            f"{same}. The read is ledgered with its purpose.")
        facts["tensor_equal"] = same

        rot = keys.rotate(ws, admin, "prod")
        ver = replicas.verify_replica(ws, admin, reg["replica"])
        say(f"\n[bold]6. Key rotation.[/bold] prod's key-encryption key is now v{rot['kek_version']}; "
            f"{rot['rewrapped']} data key rewrapped, no byte of data re-encrypted; the replica still verifies "
            f"({ver['chunks']} chunks authenticated).")

        saved = scratch / "before-shred.checkpoint"
        saved.write_text(audit.make_checkpoint(ws, admin)["note"])
        replicas.revoke_replica(ws, admin, reg["replica"], reason="demo: revoke the only copy")
        try:
            open_safetensors(reg["replica"], purpose="after shred", home=home, token=lead)
            refused = "NOT refused (this is a bug)"
        except CustodyError as exc:
            refused = f"refused: {exc.message}"
        say(f"\n[bold]7. Shredding.[/bold] Revoking destroys the replica's data key first: reading it now is {refused}")
        facts["read_after_shred"] = refused

        result = audit.verify(ws, admin, saved=saved)
        say(f"\n[bold]8. The ledger.[/bold] {result['tree_size']} events, every one a leaf of an RFC 6962 Merkle "
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
