"""A web dashboard for a queue table (the `dashboard` extra: Starlette, Jinja2, uvicorn).

`create_app(bind)` is an ASGI app to mount in a Starlette or FastAPI application at any
path, or to serve alone (`sa-pgtq dashboard`, which runs it with uvicorn).
"""

from .app import Authorize, create_app

__all__ = ["Authorize", "create_app"]
