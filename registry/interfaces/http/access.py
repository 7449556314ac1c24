"""What every route depends on: the server's `Service` and `ServerPaths` (kept on the app's state), and who is
calling — a bearer token whose scope covers the route (`read` < `review` < `admin`; reads need none when
`api_public_reads` is set)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from registry.interfaces import tokens
from registry.interfaces.server_paths import ServerPaths
from registry.interfaces.service import Service
from registry.interfaces.tokens import Caller

bearer = HTTPBearer(auto_error=False)


def service_of(request: Request) -> Service:
    return request.app.state.service


def paths_of(request: Request) -> ServerPaths:
    return request.app.state.paths


def needs(scope: str) -> Callable[..., Caller | None]:
    """A dependency that admits a caller whose token covers `scope`, else answers 401 or 403."""
    def check(request: Request,
              credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Caller | None:
        service = service_of(request)
        found = None
        if credentials is not None and credentials.scheme.lower() == "bearer":
            found = tokens.verify(service.reads, credentials.credentials)
        if found is None:
            if scope == "read" and service.settings.api_public_reads:
                return None
            raise HTTPException(401, "a valid bearer token is required (registry token create NAME)",
                                headers={"WWW-Authenticate": "Bearer"})
        if not tokens.allows(found.scope, scope):
            raise HTTPException(403, f"this token's scope is {found.scope!r}; this needs {scope!r}")
        return found
    return check


ServiceDep = Annotated[Service, Depends(service_of)]
PathsDep = Annotated[ServerPaths, Depends(paths_of)]
Reader = Annotated[Caller | None, Depends(needs("read"))]
Reviewer = Annotated[Caller, Depends(needs("review"))]
Admin = Annotated[Caller, Depends(needs("admin"))]
