"""The CLI's remote mode: a service call made as an HTTP request to a custody server.

`Remote.call(service, *args, **kw)` takes the same arguments as the in-process call (less the
workspace and token) and finds the route in `operations.OPERATIONS`; a refusal comes back as
`RemoteError` with the server's message, exit code and details, so the CLI prints and exits
exactly as it would locally.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import httpx

from custody.api.operations import SERVER_SIDE, operation_for
from custody.domain.errors import CustodyError, RemoteError


class Remote:
    def __init__(self, url: str, token: str | None) -> None:
        if not url.startswith(("http://", "https://")):
            raise CustodyError(f"bad server URL {url!r}: use http://host:port or https://host:port")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # Copies and verifications run inside the request: no read timeout, only a connect timeout.
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers,
                                  timeout=httpx.Timeout(None, connect=10.0))
        self.url = url

    def close(self) -> None:
        self._http.close()

    def call(self, service: Callable, *args: Any, **kw: Any) -> Any:
        op = operation_for(service)
        bound = inspect.signature(service).bind(None, None, *args, **kw)
        values = {k: v for k, v in bound.arguments.items() if k not in SERVER_SIDE}
        path = op.path.format(**{p: quote(str(values.pop(p)), safe="") for p in op.path_params})
        if op.method == "GET":
            request = {"params": {k: _query(v) for k, v in values.items() if v is not None}}
        else:
            request = {"json": _jsonable(values)}
        try:
            resp = self._http.request(op.method, path, **request)
        except httpx.HTTPError as exc:
            raise CustodyError(f"cannot reach the custody server at {self.url}: {type(exc).__name__}") from None
        if resp.status_code >= 400:
            raise _error(resp)
        return resp.content if op.media_type else resp.json()


    def give_share(self, share: str) -> dict:
        """One Shamir share to the server's unseal endpoint (the share, not a token, is the credential)."""
        try:
            resp = self._http.post("/api/v1/unseal", json={"share": share}, headers={"Authorization": ""})
        except httpx.HTTPError as exc:
            raise CustodyError(f"cannot reach the custody server at {self.url}: {type(exc).__name__}") from None
        if resp.status_code >= 400:
            raise _error(resp)
        return resp.json()


def _error(resp: httpx.Response) -> RemoteError:
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "error" not in body or "exit_code" not in body:
        return RemoteError(f"the server answered HTTP {resp.status_code} without a custody error", 1)
    details = {k: v for k, v in body.items() if k not in ("error", "exit_code", "detail")}
    return RemoteError(str(body["error"]), int(body["exit_code"]), details)


def _query(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _jsonable(value: Any) -> Any:
    """Arguments as JSON: paths made absolute (the server resolves them on its machine)."""
    if isinstance(value, Path):
        return str(value.expanduser().resolve())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
