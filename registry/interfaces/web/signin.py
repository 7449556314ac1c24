"""Signing in and out: a token exchanged for a session cookie (`sessions`), its CSRF secret on every form."""

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from registry.interfaces.web import sessions
from registry.interfaces.web.pages import UI, ServiceDep, allowed, local_target, page
from registry.interfaces.web.sessions import COOKIE

router = APIRouter()


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = f"{UI}/queue", failed: int = 0) -> HTMLResponse:
    return page(request, "login.html", None, next=next if next.startswith("/") else f"{UI}/queue",
                failed=bool(failed))


@router.post("/login")
def login(request: Request, service: ServiceDep, token: Annotated[str, Form()],
          next: Annotated[str, Form()] = f"{UI}/queue") -> Response:
    key = sessions.sign_in(service.reads, token)
    target = local_target(next, f"{UI}/queue")
    if key is None:
        return RedirectResponse(f"{UI}/login?" + urlencode({"next": target, "failed": 1}), status_code=303)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, key, max_age=int(sessions.LIFETIME.total_seconds()), httponly=True,
                        samesite="strict", secure=request.url.scheme == "https", path="/")
    return response


@router.post("/logout")
def logout(request: Request, service: ServiceDep, csrf: Annotated[str | None, Form()] = None) -> Response:
    allowed(request, csrf, "read")
    sessions.sign_out(service.reads, request.cookies.get(COOKIE))
    response = RedirectResponse(f"{UI}/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


@router.get("/")
def home() -> Response:
    return RedirectResponse(f"{UI}/queue", status_code=303)
