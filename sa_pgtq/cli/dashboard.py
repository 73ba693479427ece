"""`sa-pgtq dashboard`: the web dashboard served by uvicorn (the `dashboard` extra)."""

from __future__ import annotations

import argparse
from typing import Any

from . import target
from .exits import HELP_ENDING, OK, USAGE, say


def port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text!r}")
    return int(text)


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    dashboard = commands.add_parser(
        "dashboard",
        parents=[target.database_options()],
        help="serve the web dashboard (pip install 'sa_pgtq[dashboard]')",
        **HELP_ENDING,
        description="Serve the web dashboard of a queue table until interrupted.",
    )
    dashboard.add_argument("--host", default="127.0.0.1", help="address (default %(default)s)")
    dashboard.add_argument("--port", type=port, default=8000, help="port (default %(default)s)")
    dashboard.add_argument(
        "--read-only", action="store_true", help="no retry, cancel, abort, pause or resume"
    )
    dashboard.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:  # the extra is optional: `import sa_pgtq` and the other commands work without it
        import uvicorn

        from ..dashboard import create_app
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] == "sa_pgtq":
            raise
        say(f'the dashboard needs {exc.name}: pip install "sa_pgtq[dashboard]"')
        return USAGE
    bind = target.source(args)
    # The overview's own read, once: a wrong URL or table fails here in one line, not
    # on every page after the server has started.
    target.monitor(args, bind).queues()
    app = create_app(bind, read_only=args.read_only, table_name=args.table)
    uvicorn.run(app, host=args.host, port=args.port)
    return OK
