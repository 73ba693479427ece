"""`sa-pgtq sql`: the DDL of the migration chain as a script, for DBAs without Alembic.

No database is needed: the versioned steps of `schema` run on Alembic's offline
(`as_sql`) context, which writes each statement instead of executing it.
"""

from __future__ import annotations

import argparse
import io
from typing import Any

from alembic.migration import MigrationContext
from alembic.operations import Operations

from .. import schema, validation
from ..models import DEFAULT_TABLE
from .exits import HELP_ENDING, OK


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    description = (
        "Print the SQL that creates a queue table and its side tables (<table>_queues,\n"
        "<table>_ticks), exactly as `alembic upgrade sa_pgtq@head` and Queue.create_table()\n"
        "do, as one transaction: `sa-pgtq sql | psql -v ON_ERROR_STOP=1`. Needs no database."
    )
    sql = commands.add_parser(
        "sql",
        help="the DDL the migration chain runs (no database needed)",
        description=description,
        **HELP_ENDING,
    )
    sql.add_argument(
        "--table", default=DEFAULT_TABLE, help="the queue table (default: %(default)s)"
    )
    sql.add_argument(
        "--from-version",
        type=int,
        choices=range(schema.LATEST),  # at the latest there is nothing to run
        default=0,
        metavar="N",
        help="upgrade a table at schema version N (its comment says which) instead of creating "
        f"one (default 0: no table yet; the latest is {schema.LATEST})",
    )
    sql.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    print(script(validation.check_table_name(args.table), args.from_version), end="")
    return OK


def script(table_name: str, from_version: int = 0) -> str:
    """Versions `from_version + 1` .. `schema.LATEST` of `table_name`, as one transaction."""
    steps = io.StringIO()
    context = MigrationContext.configure(
        dialect_name="postgresql", opts={"as_sql": True, "output_buffer": steps}
    )
    schema.upgrade(Operations(context), from_version=from_version, table_name=table_name)
    versions = f"versions {from_version + 1} to {schema.LATEST}"
    return (
        f"-- sa_pgtq schema {versions} of queue table {table_name!r}.\n"
        "BEGIN;\n\n"
        f"{steps.getvalue()}"
        "COMMIT;\n"
    )
