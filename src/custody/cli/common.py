"""What every command shares: --json, --home, --token, --server, and turning errors into exit codes."""

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

from custody.api.client import Remote
from custody.cli import output
from custody.control.workspace import Workspace, default_home
from custody.domain.errors import CustodyError, UsageError


@dataclass
class Ctx:
    json: bool
    home: Path
    token: str | None
    server: str | None = None
    _ws: Workspace | None = None
    _remote: Remote | None = None

    def local_only(self) -> None:
        if self.server:
            raise UsageError("this command works on a local workspace only; drop --server / CUSTODY_SERVER")

    @property
    def ws(self) -> Workspace:
        self.local_only()
        if self._ws is None:
            self._ws = Workspace.open(self.home)
        return self._ws

    def call(self, service: Callable, *args: Any, **kw: Any) -> Any:
        """Call a service here, on the local workspace, or on the server named by --server."""
        if not self.server:
            return service(self.ws, self.token, *args, **kw)
        if self._remote is None:
            self._remote = Remote(self.server, self.token)
        return self._remote.call(service, *args, **kw)

    def close(self) -> None:
        for held in (self._ws, self._remote):
            if held is not None:
                held.close()


_COMMON = [
    inspect.Parameter("json_", inspect.Parameter.KEYWORD_ONLY, default=False,
                      annotation=Annotated[bool, typer.Option("--json", help="Print one JSON document.")]),
    inspect.Parameter("home", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[Path | None, typer.Option("--home", help="Workspace folder (env CUSTODY_HOME; default ./.custody).")]),
    inspect.Parameter("token", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[str | None, typer.Option("--token", help="Acting principal's token (env CUSTODY_TOKEN).", show_default=False)]),
    inspect.Parameter("server", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[str | None, typer.Option("--server", help="Act through a custody server at this URL (env CUSTODY_SERVER).", show_default=False)]),
]


def command(group: typer.Typer, name: str, **kwargs: Any) -> Callable:
    """Register `fn(ctx, ...)` as a command that also takes --json/--home/--token and maps errors."""

    def wrap(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)  # resolve postponed annotations for Typer
        params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()
                  if p.name != "ctx"]

        @functools.wraps(fn)
        def run(*args: Any, json_: bool = False, home: Path | None = None, token: str | None = None,
                server: str | None = None, **kw: Any) -> None:
            ctx = Ctx(json=json_, home=home or default_home(), token=token or os.environ.get("CUSTODY_TOKEN"),
                      server=server or os.environ.get("CUSTODY_SERVER") or None)
            try:
                fn(ctx, *args, **kw)
            except typer.Exit:
                raise
            except CustodyError as exc:
                fail(ctx, exc.message, exc.exit_code, exc.details)
            except KeyboardInterrupt:
                fail(ctx, "interrupted", 1)
            except Exception as exc:  # noqa: BLE001
                if os.environ.get("CUSTODY_DEBUG"):
                    raise
                fail(ctx, f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", 1)
            finally:
                ctx.close()

        run.__signature__ = sig.replace(parameters=params + _COMMON, return_annotation=None)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params + _COMMON}
        return group.command(name, **kwargs)(run)

    return wrap


def fail(ctx: Ctx, message: str, code: int, details: dict | None = None) -> None:
    if ctx.json:
        output.emit_json({"error": message, "exit_code": code, **(details or {})})
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
