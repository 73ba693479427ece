"""The `sa-pgtq` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sa-pgtq", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="show jobs committing with the application's rows")
    demo.add_argument(
        "--url",
        default=os.environ.get("DATABASE_URL"),
        help="database URL (default: $DATABASE_URL, else an embedded throwaway PostgreSQL)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from . import demo

        demo.run(args.url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
