"""What every command shares: --json, --home, --token, and turning errors into exit codes."""

from __future__ import annotations

import functools
import inspect
import os
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable

import typer

from custody.cli import output
from custody.control.workspace import Workspace, default_home
from custody.domain.errors import CustodyError


@dataclass
class Ctx:
    json: bool
    home: Path
    token: str | None
    _ws: Workspace | None = None

    @property
    def ws(self) -> Workspace:
        if self._ws is None:
            self._ws = Workspace.open(self.home)
        return self._ws


_COMMON = [
    inspect.Parameter("json_", inspect.Parameter.KEYWORD_ONLY, default=False,
                      annotation=Annotated[bool, typer.Option("--json", help="Print one JSON document.")]),
    inspect.Parameter("home", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[Path | None, typer.Option("--home", help="Workspace folder [env: CUSTODY_HOME, default ./.custody].")]),
    inspect.Parameter("token", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[str | None, typer.Option("--token", help="Acting principal's token [env: CUSTODY_TOKEN].", show_default=False)]),
]


def command(group: typer.Typer, name: str, **kwargs: Any) -> Callable:
    """Register `fn(ctx, ...)` as a command that also takes --json/--home/--token and maps errors."""

    def wrap(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)  # resolve postponed annotations for Typer
        params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()
                  if p.name != "ctx"]

        @functools.wraps(fn)
        def run(*args: Any, json_: bool = False, home: Path | None = None, token: str | None = None, **kw: Any) -> None:
            ctx = Ctx(json=json_, home=home or default_home(), token=token or os.environ.get("CUSTODY_TOKEN"))
            try:
                fn(ctx, *args, **kw)
            except typer.Exit:
                raise
            except CustodyError as exc:
                fail(ctx, exc.message, exc.exit_code)
            except KeyboardInterrupt:
                fail(ctx, "interrupted", 1)
            except Exception as exc:  # noqa: BLE001
                if os.environ.get("CUSTODY_DEBUG"):
                    raise
                fail(ctx, f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", 1)
            finally:
                if ctx._ws is not None:
                    ctx._ws.close()

        run.__signature__ = sig.replace(parameters=params + _COMMON, return_annotation=None)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params + _COMMON}
        return group.command(name, **kwargs)(run)

    return wrap


def fail(ctx: Ctx, message: str, code: int) -> None:
    if ctx.json:
        output.emit_json({"error": message, "exit_code": code})
    else:
        output.err.print("error: " + message, markup=False, style="bold red")
    raise typer.Exit(code)


def emit(ctx: Ctx, data: Any, human: Callable[[], None]) -> None:
    if ctx.json:
        output.emit_json(data)
    else:
        human()


def progress_bar(ctx: Ctx, total: int, label: str):  # noqa: ANN201
    """A Rich progress bar on stderr for long transfers; nothing in --json mode or when piped."""
    if ctx.json or not sys.stderr.isatty() or total < 64 * 1024 * 1024:
        return None
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn, TimeRemainingColumn

    return Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(), console=output.err, transient=True)
