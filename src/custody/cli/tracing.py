"""Commands for leaked copies: `custody identify FILE` and `custody trace FILE_OR_FOLDER`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from custody.cli import output
from custody.cli.common import Ctx, emit
from custody.control.services import tracing
from custody.data.derive.evidence import DEFAULT_EPS


def identify_cmd(ctx: Ctx, path: Annotated[Path, typer.Argument(metavar="FILE_OR_FOLDER")],
                 eps: Annotated[float, typer.Option(help="False-match bound for a derivative verdict.")] = DEFAULT_EPS
                 ) -> None:
    """Which registered asset a file is a copy or a derivative of (exit 0), or none (exit 4)."""
    ctx.local_only()
    r = ctx.call(tracing.identify, str(path), eps=eps)

    def human() -> None:
        verdict = {"copy": "a byte-for-byte copy of", "derivative-or-reencoded": "a derivative or re-encoded copy of",
                   tracing.NOT_THIS: "not a copy of any registered asset"}[r["verdict"]]
        where = f" {r['asset']}@{r['version']}" if r["asset"] else ""
        output.out.print(f"{path}: {verdict}{where} (tau {r['tau']})")
        output.table(r["candidates"], ["asset", "version", "z", "tensors"], "closest registered versions (sketch z)")

    emit(ctx, r, human)
    if r["verdict"] == tracing.NOT_THIS:
        raise typer.Exit(4)


def trace_cmd(ctx: Ctx, path: Annotated[Path, typer.Argument(metavar="FILE_OR_FOLDER")],
              purpose: Annotated[str, typer.Option(help="Why: the incident this trace belongs to.")],
              asset: Annotated[Optional[str], typer.Option(help="The asset it is thought to copy (default: identified).")] = None,
              eps: Annotated[float, typer.Option(help="Bound on the chance of accusing anyone innocent.")] = DEFAULT_EPS
              ) -> None:
    """Name the recipient a leaked copy was made for: exit 0 attributed, 1 a copy but no recipient above
    tau, 4 not this asset. Reads the original weights in memory (a read the catalog decides)."""
    ctx.local_only()
    r = ctx.call(tracing.trace, str(path), asset=asset, purpose=purpose, eps=eps)

    def human() -> None:
        if r["verdict"] == tracing.ATTRIBUTED:
            output.out.print(f"attributed: {path} was made for {r['recipient']} (z {r['z']} >= tau {r['tau']}; "
                             f"replica {', '.join(r['replicas'])})")
        elif r["verdict"] == tracing.UNATTRIBUTED:
            output.out.print(f"a copy of {r['asset']} (copy z {r['copy_z']}), but no recipient above tau {r['tau']}")
        else:
            output.out.print(f"not a copy of {r['asset']} (copy z {r['copy_z']} < tau {r['tau']})")
        output.out.print(f"bound: {r['bound']}")
        output.table(r["scores"][:10], ["recipient", "z", "replicas"], "recipients (highest z first)")
        if r.get("evidence"):
            output.table(r["evidence"], ["tensor", "z", "weight"], "per-tensor evidence")
        output.out.print(f"evidence archived: {r['evidence_file']['path']}")

    emit(ctx, r, human)
    if tracing.EXIT[r["verdict"]]:
        raise typer.Exit(tracing.EXIT[r["verdict"]])
