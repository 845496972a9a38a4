"""The REST API: a route per entry of `operations.OPERATIONS`, built from the service's signature.

Routes hold no logic: they take the bearer token (the service authenticates and ledgers it,
exactly as for the CLI), call the service and render its result. Errors carry the CLI's exit
code and details, so a client can print and exit the same way. Served by `custody serve`
(Uvicorn); the OpenAPI document is at /openapi.json, browsable at /docs.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import typing
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, AsyncIterator, Callable

import anyio.to_thread

from fastapi import Body, Depends, FastAPI, Header, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path
from pydantic import BaseModel, ConfigDict, create_model

from custody import __version__
from custody.api.operations import OPERATIONS, SERVER_SIDE, Operation
from custody.api.throttle import Admission, Backoff, Throttle
from custody.control.ledger import checkpoints
from custody.control.services import health, metrics, unseal
from custody.control.workspace import Workspace
from custody.data.zones import ZoneStorage
from custody.domain.errors import AuthenticationError, CustodyError, InvalidInput

STATUS = {1: 500, 2: 400, 3: 403, 4: 404, 5: 422, 6: 409}


class UnsealShare(BaseModel):
    share: str


class ErrorBody(BaseModel):
    """Every refusal: a one-line reason and the exit code the CLI would give (plus details)."""

    model_config = ConfigDict(extra="allow")
    error: str
    exit_code: int


ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 422, 429)}


def status_for(exc: CustodyError) -> int:
    return 401 if isinstance(exc, AuthenticationError) else STATUS.get(exc.exit_code, 500)


def error_response(exc: CustodyError) -> JSONResponse:
    return JSONResponse(jsonable_encoder({"error": exc.message, "exit_code": exc.exit_code, **exc.details}),
                        status_code=status_for(exc))


def bearer(authorization: Annotated[str | None, Header()] = None) -> str | None:
    """The token of `Authorization: Bearer <token>`; a missing one is refused (and ledgered) by the service."""
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


Token = Annotated[str | None, Depends(bearer)]


def create_app(home: Path | None = None) -> FastAPI:
    ws = Workspace.open(home)
    app = FastAPI(title="custody", version=__version__, lifespan=_lifespan, docs_url=None, redoc_url=None,
                  description="Governed, sealed, ledgered copies of model weights. Every error body is "
                              "`{error, exit_code}`, the exit code the `custody` CLI gives for it.")
    app.state.ws = ws

    @app.exception_handler(CustodyError)
    async def _custody_error(_: Request, exc: CustodyError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse(jsonable_encoder({"error": f"invalid request: {where}: {first.get('msg', 'malformed')}",
                                              "exit_code": 2, "detail": exc.errors()}), status_code=422)

    # /docs from a vendored Swagger UI: the page works on a machine that cannot reach a CDN.
    app.mount("/docs/static", StaticFiles(directory=swagger_ui_path), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="custody API",
                                   swagger_js_url="/docs/static/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/static/swagger-ui.css",
                                   swagger_favicon_url="/docs/static/favicon-32x32.png")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        problems = health.problems(ws)
        return JSONResponse({"ready": not problems, "problems": problems}, status_code=200 if not problems else 503)

    backoff = Backoff(ws)
    unsealer = unseal.unsealer_for(ws)
    wrong_shares = Throttle()  # wrong shares back off by address; right ones never wait

    @app.get("/api/v1/unseal", responses=ERRORS)
    def unseal_status() -> dict:
        """Whether this server's custodian is sealed, and how many shares it has been given."""
        return unseal.status(ws, unsealer)

    @app.post("/api/v1/unseal", responses=ERRORS)
    def give_share(request: Request, body: UnsealShare) -> Any:
        """Give one Shamir share (no token: the share is the credential; failures back off by address).
        Shares stay in this process's memory; the ledger records each step, never a share."""
        address = client_address(request)
        wait = wrong_shares.blocked(address)
        if wait:
            return too_many(Admission(wait=wait))
        try:
            return unseal.give(ws, unsealer, body.share, f"share-holder@{address}")
        except CustodyError:
            wrong_shares.failed(address)
            raise

    @app.get("/metrics", response_class=PlainTextResponse, responses=ERRORS)
    def metrics_(request: Request, token: Token) -> Any:
        """Prometheus text format; needs a bearer token allowed `metrics.read` (admin, security, auditor)."""
        return _backed_off(backoff, request, token, lambda: metrics.prometheus(ws, token))

    for op in OPERATIONS:
        app.add_api_route(op.path, _endpoint(ws, op, backoff), methods=[op.method], status_code=op.status,
                          name=op.name, summary=_summary(op), responses=ERRORS, tags=[op.name.split(".")[0]],
                          response_class=Response if op.media_type else JSONResponse)

    from custody.web.pages import portal_router

    app.include_router(portal_router(ws, backoff))  # one count for sign-ins and API calls

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/portal/", status_code=303)

    app.add_middleware(SecurityHeaders)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # A few threads per process are enough: each request is short, CPU-bound Python; more threads
    # only contend for the GIL (run more processes with --workers instead).
    anyio.to_thread.current_default_thread_limiter().total_tokens = int(os.environ.get("CUSTODY_SERVER_THREADS", "4"))
    timer = asyncio.get_running_loop().create_task(_checkpoint_timer(app.state.ws))
    yield
    timer.cancel()
    app.state.ws.close()


async def _checkpoint_timer(ws: Workspace) -> None:
    """Checkpoints on schedule even while no action comes here (events appended by processes that
    cannot open the keyring are signed by the server within about `checkpoint_every_seconds`)."""
    while True:
        await asyncio.sleep(max(0.5, ws.checkpoint_every_seconds / 4))
        await anyio.to_thread.run_sync(checkpoints.take_if_due, ws)


PORTAL_CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
              "frame-ancestors 'none'; base-uri 'none'")


class SecurityHeaders:
    """On every response: no framing, no referrer, no sniffing; on portal pages also a strict CSP
    (no script at all, styles from this origin only) and no caching of pages that show secrets.
    A plain ASGI middleware: it only adds headers, so it never buffers a body."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        extra = [(b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"),
                 (b"x-content-type-options", b"nosniff")]
        if path.startswith("/portal"):
            extra.append((b"content-security-policy", PORTAL_CSP.encode()))
            if not path.startswith("/portal/static/"):
                extra.append((b"cache-control", b"no-store"))
        if scope.get("scheme") == "https":
            extra.append((b"strict-transport-security", b"max-age=31536000"))

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def client_address(request: Request) -> str:
    """The caller's address: the socket's peer, or what a proxy listed in CUSTODY_TRUSTED_PROXIES
    forwarded (Uvicorn rewrites the peer only for those; see `custody.api.server`)."""
    return request.client.host if request.client else "?"


def _backed_off(backoff: Backoff, request: Request, token: str | None, call: Callable[[], Any]) -> Any:
    """`call()` unless this token's failures are backed off (429 + Retry-After); a refused
    authentication is counted against the token's id or the caller's address."""
    address = client_address(request)
    admission = backoff.admit(token, address)
    if admission.wait:
        return too_many(admission)
    try:
        return call()
    except AuthenticationError:
        backoff.failed(token, address, admission)
        raise


def too_many(admission: Admission) -> JSONResponse:
    return JSONResponse({"error": f"too many failed authentications {admission.about}: retry in {admission.wait} s",
                         "exit_code": 3}, status_code=429, headers={"Retry-After": str(admission.wait)})


def _endpoint(ws: Workspace, op: Operation, backoff: Backoff) -> Callable:
    """A function FastAPI can read (its signature names path, query and body parameters) that calls the service."""
    hints = typing.get_type_hints(op.service)
    params = [p for p in inspect.signature(op.service).parameters.values()
              if p.name not in SERVER_SIDE and p.name not in op.internal]
    in_path = [p for p in params if p.name in op.path_params]
    rest = [p for p in params if p.name not in op.path_params]
    kw = inspect.Parameter.KEYWORD_ONLY
    signature = [inspect.Parameter("request", kw, annotation=Request), inspect.Parameter("token", kw, annotation=Token)]
    signature += [inspect.Parameter(p.name, kw, annotation=Annotated[hints[p.name], PathParam()]) for p in in_path]
    body_fields: list[str] = []
    if op.method == "GET":
        signature += [inspect.Parameter(p.name, kw, annotation=Annotated[hints[p.name], Query()],
                                        default=p.default if p.default is not p.empty else inspect.Parameter.empty)
                      for p in rest]
    elif rest:
        model = create_model(
            "".join(part.title() for part in op.name.replace(".", "_").split("_")),
            __config__=ConfigDict(extra="forbid"),
            **{p.name: (hints[p.name], ... if p.default is p.empty else p.default) for p in rest})
        body_fields = [p.name for p in rest]
        optional = all(p.default is not p.empty for p in rest)  # then an empty POST is fine
        signature.append(inspect.Parameter("body", kw, annotation=Annotated[model | None if optional else model, Body()],
                                           default=None if optional else inspect.Parameter.empty))

    paths = [p.name for p in params if hints[p.name] in (Path, Path | None)]

    def endpoint(**values: Any) -> Any:
        body = values.pop("body", None)
        token = values.pop("token")
        request = values.pop("request")
        args = {**values, **({name: getattr(body, name) for name in body_fields} if body is not None else {})}

        def call() -> Any:
            for name in paths:
                if args.get(name) is not None:
                    args[name] = server_path(args[name])
            for name in op.server_urls:
                if args.get(name) is not None:
                    args[name] = server_url(args[name])
            return op.service(ws, token, **args)

        result = _backed_off(backoff, request, token, call)
        if isinstance(result, Response):  # backed off
            return result
        return Response(result, media_type=op.media_type) if op.media_type else JSONResponse(jsonable_encoder(result),
                                                                                             status_code=op.status)

    endpoint.__signature__ = inspect.Signature(signature)  # type: ignore[attr-defined]
    endpoint.__name__ = op.name.replace(".", "_")
    return endpoint


def server_path(path: Path) -> Path:
    """A file or folder a remote caller names on this server's machine (a model to register, a
    catalog, an export): only inside the folders CUSTODY_SERVER_PATHS lists, so a token used over
    the network cannot read or write anywhere the server process can."""
    roots = [Path(p).resolve() for p in os.environ.get("CUSTODY_SERVER_PATHS", "").split(os.pathsep) if p]
    resolved = Path(path).resolve()
    if not any(resolved == root or root in resolved.parents for root in roots):
        raise InvalidInput(f"{path} is outside the folders this server may read or write (CUSTODY_SERVER_PATHS)")
    return resolved


def server_url(url: str) -> str:
    """A storage URL a remote caller names: one on the local file system (file://) is a folder on
    this server's machine, so it must pass `server_path` like any other. Read as the storage layer
    reads it (fsspec takes file://host/x as a relative path), and handed on as the folder checked."""
    try:
        storage = ZoneStorage(url)
    except CustodyError:
        return url  # not usable storage at all: the service says so
    if not storage.local:
        return url
    folder = server_path(Path(storage.root))
    return "file://" + str(folder) if url.startswith("file:") else url


def _summary(op: Operation) -> str:
    doc = inspect.getdoc(op.service)
    return doc.splitlines()[0] if doc else op.name.replace(".", " ").replace("_", " ")


def app_from_env() -> FastAPI:
    """For `uvicorn --factory`: the workspace named by CUSTODY_HOME."""
    home = os.environ.get("CUSTODY_HOME")
    return create_app(Path(home) if home else None)
