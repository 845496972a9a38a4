"""The self-service portal: server-rendered pages over the same service functions as the CLI and API.

Each handler reads the session, calls services with the principal's own token (which
authenticate, decide and ledger as always), and renders a template. Forms are POSTs that carry
the session's CSRF value and must come from this origin; a refusal is shown as the service's
one-line message. Nothing here decides anything.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timedelta, timezone
from importlib import resources
from typing import Any, Callable
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from custody.api.app import client_address, status_for
from custody.api.throttle import Admission, Backoff
from custody.control.policy.durations import format_duration
from custody.control.services import (
    assets,
    audit,
    copies,
    dashboard,
    replicas,
    requests,
    sessions,
)
from custody.control.workspace import Workspace
from custody.domain.errors import CustodyError, Denied, InvalidState, NotFound
from custody.web import charts
from custody.web.sessions import COOKIE, PRE_COOKIE, Session, SessionBox, same


def _env() -> Environment:
    env = Environment(loader=PackageLoader("custody.web", "templates"), autoescape=select_autoescape(["html"]))
    env.filters["size"] = _size
    env.filters["duration"] = _duration
    return env


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _duration(seconds: float | None) -> str:
    return "none" if seconds is None else format_duration(int(seconds))


def portal_router(ws: Workspace, backoff: Backoff) -> APIRouter:
    box = SessionBox(ws.home)
    templates = _env()
    router = APIRouter(prefix="/portal", include_in_schema=False)

    def render(request: Request, name: str, session: Session | None, status: int = 200, **ctx: Any) -> HTMLResponse:
        html = templates.get_template(name).render(session=session, path=request.url.path, **ctx)
        return HTMLResponse(html, status_code=status)

    def signed_in(request: Request) -> Session | None:
        """The request's session: a cookie that opens, for a session still live in the store."""
        session = box.open(request.cookies.get(COOKIE))
        if session is None or not sessions.live(ws, session.session_id, session.name):
            return None
        return session

    def to_signin() -> RedirectResponse:
        return RedirectResponse("/portal/signin", status_code=303)

    def same_origin(request: Request) -> bool:
        """A form post must come from a page of this server. Browsers say so in Sec-Fetch-Site;
        older ones in Origin (sent as "null" under our no-referrer policy, so not proof either
        way). The session's CSRF value and SameSite=Strict stand whatever these say."""
        site = request.headers.get("sec-fetch-site")
        if site is not None:
            return site in ("same-origin", "none")
        origin = request.headers.get("origin")
        if not origin or origin == "null":
            return True
        return origin.rstrip("/") == f"{request.url.scheme}://{request.headers.get('host', '')}"

    async def checked_form(request: Request, session: Session) -> dict[str, str] | None:
        form = {k: str(v) for k, v in (await request.form()).items()}
        if not same_origin(request) or not same(form.get("csrf"), session.csrf):
            return None
        return form

    def refused(request: Request, session: Session | None) -> HTMLResponse:
        return render(request, "error.html", session, status=403,
                      message="This form was not sent from this portal (CSRF check failed). Reload the page and try again.")

    def page(name: str, template: str, load: Callable[[Session, Request], dict]) -> None:
        """A GET page: the session, one call to `load` for its data, a template; refusals shown in place."""

        def handler(request: Request) -> Response:  # sync: FastAPI runs it on a worker thread
            session = signed_in(request)
            if session is None:
                return to_signin()
            try:
                data = load(session, request)
            except CustodyError as exc:
                return render(request, "error.html", session, status=status_for(exc), message=exc.message)
            return render(request, template, session, **data)

        router.add_api_route(name, handler, methods=["GET"])

    # -- sign in / out --------------------------------------------------------------------

    @router.get("/signin")
    def signin_form(request: Request) -> Response:
        pre = request.cookies.get(PRE_COOKIE) or _fresh()
        response = render(request, "signin.html", None, csrf=pre, error=None)
        _cookie(request, response, PRE_COOKIE, pre, 600)
        return response

    @router.post("/signin")
    async def signin(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        pre = request.cookies.get(PRE_COOKIE)
        if not same_origin(request) or not same(form.get("csrf"), pre):
            return refused(request, None)
        token = form.get("token", "").strip()
        address = client_address(request)

        def start() -> Admission | dict:
            """Admit, try and count in one worker thread: guesses in flight stay within the thread pool."""
            admission = backoff.admit(token, address)
            if admission.wait:
                return admission
            try:
                return sessions.start(ws, token)
            except Denied:
                backoff.failed(token, address, admission)  # counts only a token that does not authenticate
                raise

        try:
            who = await run_in_threadpool(start)
        except Denied as exc:
            return render(request, "signin.html", None, status=401, csrf=pre, error=exc.message)
        if isinstance(who, Admission):
            response = render(request, "signin.html", None, status=429, csrf=pre,
                              error=f"too many failed sign-ins {who.about}: try again in {who.wait} s")
            response.headers["Retry-After"] = str(who.wait)
            return response
        cookie, _ = box.seal(token, who["session"], who["name"], tuple(who["roles"]),
                             who["expires_in"])
        response = RedirectResponse("/portal/", status_code=303)
        _cookie(request, response, COOKIE, cookie, who["expires_in"])
        response.delete_cookie(PRE_COOKIE, path="/portal")
        return response

    @router.post("/signout")
    async def signout(request: Request) -> Response:
        response = await act_on(request, lambda s, f: sessions.end(ws, s.token, s.session_id), "/portal/signin")
        response.delete_cookie(COOKIE, path="/portal")
        return response

    @router.get("/")
    def home(request: Request) -> Response:
        session = signed_in(request)
        if session is None:
            return to_signin()
        return RedirectResponse("/portal/dashboard" if session.can("dashboard.read") else "/portal/requests", status_code=303)

    # -- requests -------------------------------------------------------------------------

    page("/requests", "requests.html", lambda s, r: {
        "rows": requests.list_requests(ws, s.token, mine=True)[::-1], "created": _id_param(r, "created")})

    def new_request_data(session: Session, asset: str | None, form: dict[str, str] | None = None) -> dict:
        """Every asset; for the chosen one, only the zones and kinds the policy lets this person ask for."""
        names = [a["asset"] for a in assets.list_assets(ws, session.token)]
        chosen = asset if asset in names else (names[0] if names else None)
        try:
            offered = requests.choices(ws, session.token, chosen) if chosen else []
        except (NotFound, InvalidState):
            offered = []  # e.g. no active replica to copy from: the page says nothing may be asked
        return {"assets": names, "asset": chosen, "offered": offered,
                "zones": sorted({c["zone"] for c in offered}), "kinds": sorted({c["kind"] for c in offered}),
                "form": form or {}, "preview": None, "error": None}

    page("/requests/new", "new_request.html", lambda s, r: new_request_data(s, r.query_params.get("asset")))

    @router.post("/requests/new")
    async def new_request(request: Request) -> Response:
        got = await posted(request)
        if isinstance(got, Response):
            return got
        session, form = got
        args = {"to": form.get("to", ""), "kind": form.get("kind", ""), "purpose": form.get("purpose", ""),
                "ttl": form.get("ttl") or None,
                "transform": (form.get("transform") or None) if form.get("kind") == "derivative" else None}
        try:
            data = await run_in_threadpool(new_request_data, session, form.get("asset"), form)
        except CustodyError as exc:
            return render(request, "error.html", session, status=status_for(exc), message=exc.message)
        try:
            if form.get("action") == "preview":
                data["preview"] = await run_in_threadpool(requests.preview, ws, session.token, form.get("asset", ""),
                                                          **args)
                return render(request, "new_request.html", session, **data)
            created = await run_in_threadpool(requests.create, ws, session.token, form.get("asset", ""), **args)
        except requests.RequestDenied as exc:
            data["preview"] = {"decision": exc.decision.to_dict(), "denied_request": exc.request.id}
            data["error"] = exc.message
            return render(request, "new_request.html", session, status=403, **data)
        except CustodyError as exc:
            data["error"] = exc.message
            return render(request, "new_request.html", session, status=status_for(exc), **data)
        return RedirectResponse(f"/portal/requests?{urlencode({'created': created['id']})}", status_code=303)

    @router.post("/requests/{request_id}/run")
    async def run_request(request: Request, request_id: str) -> Response:
        return await act_on(request, lambda s, f: copies.run(ws, s.token, request_id), "/portal/requests")

    # -- approvals ------------------------------------------------------------------------

    page("/approvals", "approvals.html", lambda s, r: {"rows": requests.inbox(ws, s.token),
                                                       "approved": _id_param(r, "approved"),
                                                       "denied": _id_param(r, "denied")})

    @router.post("/approvals/{request_id}/approve")
    async def approve(request: Request, request_id: str) -> Response:
        return await act_on(request, lambda s, f: requests.approve(
            ws, s.token, request_id, otp=f.get("otp") or None, comment=f.get("comment") or None),
            f"/portal/approvals?{urlencode({'approved': request_id})}")

    @router.post("/approvals/{request_id}/deny")
    async def deny(request: Request, request_id: str) -> Response:
        return await act_on(request, lambda s, f: requests.deny(ws, s.token, request_id, f.get("reason", "")),
                            f"/portal/approvals?{urlencode({'denied': request_id})}")

    # -- replicas, assets, ledger, dashboard ------------------------------------------------

    def replica_data(session: Session, request: Request) -> dict:
        rows = replicas.list_replicas(ws, session.token, state=request.query_params.get("state") or "active")
        horizon = datetime.now(timezone.utc) + timedelta(hours=24)
        for r in rows:
            r["expiring_soon"] = bool(r["expires_at"]) and datetime.fromisoformat(r["expires_at"]) <= horizon
        return {"rows": sorted(rows, key=lambda r: (r["asset"], r["zone"], r["expires_at"] or "~")),
                "soon": sum(r["expiring_soon"] for r in rows),
                "state": request.query_params.get("state") or "active", "shredded": _id_param(request, "shredded")}

    page("/replicas", "replicas.html", replica_data)

    @router.post("/replicas/{replica_id}/revoke")
    async def revoke(request: Request, replica_id: str) -> Response:
        return await act_on(request, lambda s, f: replicas.revoke_replica(ws, s.token, replica_id, f.get("reason", "")),
                            f"/portal/replicas?{urlencode({'shredded': replica_id})}")

    page("/assets", "assets.html", lambda s, r: {
        "rows": assets.inventory(ws, s.token)})

    page("/ledger", "ledger.html", lambda s, r: {
        **audit.search(ws, s.token, r.query_params.get("q") or None, limit=50,
                       before=int(r.query_params["before"]) if POSITION.fullmatch(r.query_params.get("before", ""))
                       else None),
        "q": r.query_params.get("q", "")})

    def dashboard_data(session: Session, request: Request) -> dict:
        f = dashboard.figures(ws, session.token)
        return {"f": f, "charts": {
            "attempts": charts.stacked_bars("Copy attempts per day", f["days"], {
                "allowed": [a["allowed"] for a in f["attempts"]], "denied": [a["denied"] for a in f["attempts"]]}),
            "cycles": charts.stacked_bars("Approval cycle time (requests per bucket)",
                                          [f"≤{_duration(b['le_seconds'])}" if b["le_seconds"] else "longer"
                                           for b in f["approval_cycles"]],
                                          {"approved requests": [b["count"] for b in f["approval_cycles"]]}),
            "bytes": charts.horizontal_bars("Bytes copied out of each zone", f["bytes_by_zone"], "B"),
            "replicas": charts.lines("Replicas by kind and zone", f["days"], f["replicas_over_time"]),
        }}

    page("/dashboard", "dashboard.html", dashboard_data)

    @router.get("/static/portal.css")
    def css() -> Response:
        text = resources.files("custody.web").joinpath("static/portal.css").read_text()
        return Response(text, media_type="text/css", headers={"Cache-Control": "max-age=3600"})

    async def posted(request: Request) -> Response | tuple[Session, dict[str, str]]:
        """A form post's session and fields, or where to send a post without a session or CSRF value."""
        session = await run_in_threadpool(signed_in, request)
        if session is None:
            return to_signin()
        form = await checked_form(request, session)
        if form is None:
            return refused(request, session)
        return session, form

    async def act_on(request: Request, action: Callable[[Session, dict], Any], then: str) -> Response:
        """A form that changes something: session, CSRF, one service call, back to a page (or the refusal)."""
        got = await posted(request)
        if isinstance(got, Response):
            return got
        session, form = got
        try:
            await run_in_threadpool(action, session, form)
        except CustodyError as exc:
            return render(request, "error.html", session, status=status_for(exc), message=exc.message)
        return RedirectResponse(then, status_code=303)

    return router


def _fresh() -> str:
    return secrets.token_urlsafe(32)


POSITION = re.compile(r"[0-9]{1,18}")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _id_param(request: Request, name: str) -> str | None:
    """An id passed back after a form (only an id: a link cannot put its own words on the page)."""
    value = request.query_params.get(name, "")
    return value if UUID.fullmatch(value) else None


def _cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/portal", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
