"""Printing results: one JSON document with --json, readable Rich output otherwise."""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable

from rich.console import Console
from rich.markup import escape
from rich.table import Table

# Markup off by default: printed values include names people chose ("[/x]" must print as is).
out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


def say(text: str) -> None:
    """Print text that may hold names or values people chose: never read as markup."""
    out.print(text, markup=False)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def table(rows: Iterable[dict], columns: list[str], title: str | None = None) -> None:
    rows = list(rows)
    if not rows:
        out.print(f"(no {title or 'rows'})")
        return
    t = Table(title=title, show_edge=False, header_style="bold")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*("" if r.get(c) is None else escape(_cell(r.get(c))) for c in columns))
    out.print(t)


def fields(data: dict, keys: list[str] | None = None) -> None:
    for k in keys or list(data):
        if k in data and not isinstance(data[k], (list, dict)):
            out.print(f"[bold]{k:>20}[/bold]  {escape(str(data[k]))}", markup=True)


def _cell(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v)
    return str(v)
