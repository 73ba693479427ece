"""What `sa-pgtq`'s exit status means, and how a failure becomes one line on stderr."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from sqlalchemy.exc import SQLAlchemyError

from ..errors import InvalidInputError, InvalidSessionError

OK = 0
#: A job id that is not in the table, or an action that did not apply to the job.
NOT_DONE = 1
#: Bad arguments: argparse's own status, also for a bad URL or module:attribute.
USAGE = 2
#: The database failed: unreachable, refused us, or has no such queue table.
DATABASE = 3

EPILOG = """\
exit status:
  0  done
  1  a job id not found, or an action that did not apply (retry of a job that is
     not failed, cancel of a running or finished job, abort of a finished job)
  2  bad arguments: a bad option, URL, module:attribute or table name
  3  the database failed: unreachable, refused the login, or has no such queue table
"""

#: `add_parser` options of every operator's command: its help ends with the exit statuses.
HELP_ENDING: dict[str, Any] = {
    "epilog": EPILOG,
    "formatter_class": argparse.RawDescriptionHelpFormatter,
}


# SQLSTATE of a missing table: the queue table was never created (or --table is wrong).
_UNDEFINED_TABLE = "42P01"


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: the usage is a `--help` away."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def usage(message: str) -> NoReturn:
    """Stop on bad arguments found after parsing (a URL, a module:attribute)."""
    say(message)
    raise SystemExit(USAGE)


def say(message: object) -> None:
    """One line on stderr, whatever line breaks the message (a driver's, a library's) has."""
    print("sa-pgtq:", *str(message).split(), file=sys.stderr)


def guarded(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command; what went wrong outside it is one line on stderr, not a traceback."""
    try:
        return command(args)
    except (InvalidInputError, InvalidSessionError) as exc:  # refused before anything ran
        say(exc)
        return USAGE
    except SQLAlchemyError as exc:
        say(_database_error(exc))
        return DATABASE


def _database_error(exc: SQLAlchemyError) -> str:
    cause = getattr(exc, "orig", None) or exc
    # psycopg2 names the SQLSTATE `pgcode`, psycopg 3 `sqlstate`.
    state = getattr(cause, "pgcode", None) or getattr(cause, "sqlstate", None)
    first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    if state == _UNDEFINED_TABLE:
        return f"{first_line} (no queue table there: create it, or give --table)"
    return f"database error: {first_line}"
