"""Pages, error pages and redirects, all relative to where the dashboard is mounted.

Links are built from the request's `root_path` (the mount point, or uvicorn's
`--root-path`), not with `url_for`: a mounted app's route names live under the
host application's router, whose mount names the dashboard cannot know.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, unquote, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ..monitor import age
from . import csrf

#: What a page shows for a time or age that is not there.
_NOTHING = "\N{EN DASH}"
#: Carries the message of an action to the page it redirects to, once.
FLASH_COOKIE = "sa_pgtq_flash"


def root(request: Request) -> str:
    """The mount point's path, without a trailing slash ('' at the top)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _cookie_path(request: Request) -> str:
    return root(request) or "/"


def _age(elapsed: timedelta | None) -> str:
    return _NOTHING if elapsed is None else age(elapsed, sep=" ")


def _when(moment: datetime | None) -> str:
    if moment is None:
        return _NOTHING
    return f"{moment.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S} UTC"


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def query(**params: object) -> str:
    """`?a=1&b=2` of the parameters that are set ('' when none is)."""
    kept = {name: value for name, value in params.items() if value not in (None, "")}
    return f"?{urlencode(kept)}" if kept else ""


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("sa_pgtq.dashboard", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        age=_age,
        when=_when,
        json=_json,
        segment=lambda name: quote(name, safe=""),  # a queue name as one path segment
    )
    env.globals["query"] = query
    return env


class Renderer:
    """Renders the templates with what every page needs: links, the CSRF token, a flash."""

    def __init__(self, *, secret: bytes, read_only: bool, table_name: str) -> None:
        self.env = _environment()
        self.secret = secret
        self.read_only = read_only
        self.table_name = table_name

    def page(self, request: Request, template: str, status: int = 200, **context: Any) -> Response:
        nonce = request.cookies.get(csrf.COOKIE) or csrf.new_nonce()
        flash = request.cookies.get(FLASH_COOKIE)
        html = self.env.get_template(template).render(
            root=root(request),
            table_name=self.table_name,
            read_only=self.read_only,
            csrf_field=csrf.FIELD,
            csrf_token=csrf.sign(self.secret, nonce),
            flash=unquote(flash) if flash else None,
            **context,
        )
        response = HTMLResponse(html, status_code=status)
        if csrf.COOKIE not in request.cookies and not self.read_only:
            response.set_cookie(
                csrf.COOKIE, nonce, path=_cookie_path(request), httponly=True, samesite="lax"
            )
        if flash:
            response.delete_cookie(FLASH_COOKIE, path=_cookie_path(request))
        return response

    def error(self, request: Request, status: int, message: str) -> Response:
        title = f"{status} {HTTPStatus(status).phrase}"
        return self.page(request, "error.html", status, title=title, message=message)

    def redirect(self, request: Request, path: str, message: str) -> Response:
        """303 to `path` (relative to the mount point), which shows `message` once."""
        response = RedirectResponse(root(request) + path, status_code=303)
        response.set_cookie(
            FLASH_COOKIE,
            quote(message),
            max_age=60,
            path=_cookie_path(request),
            httponly=True,
            samesite="strict",
        )
        return response
