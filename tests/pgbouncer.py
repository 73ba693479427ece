"""A PgBouncer in transaction pooling mode in front of the test database, started by the test.

Debian's `pgbouncer` package provides the binary (`.ci/run` installs it). Two
server connections serve every client, so consecutive transactions of one client
land on different server connections, as they do in production.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy.engine import URL, make_url
from tcpproxy import upstream_address

SERVER_CONNECTIONS = 2


def binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None
    )


#: A test module's `pytestmark` when it starts a PgBouncer.
requires_pgbouncer = pytest.mark.skipif(
    binary() is None, reason="needs Debian's pgbouncer (.ci/run installs it)"
)


@contextmanager
def pgbouncer(url: URL | str) -> Iterator[URL]:
    """Run PgBouncer in front of the database of `url`; yield `url` pointed at it."""
    upstream = make_url(url)
    family, address = upstream_address(upstream)
    host, port = (
        (os.path.dirname(address), address.rsplit(".", 1)[1])
        if family == socket.AF_UNIX
        else address
    )
    password = f" password={upstream.password}" if upstream.password else ""
    listen_port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="sa_pgtq-pgbouncer-"))
    workdir.chmod(0o755)  # PgBouncer drops root privileges before reading its files
    user = upstream.username or "postgres"
    (workdir / "users.txt").write_text(f'"{user}" ""\n')
    (workdir / "pgbouncer.ini").write_text(
        f"""\
[databases]
* = host={host} port={port}{password}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir / "users.txt"}
pool_mode = transaction
default_pool_size = {SERVER_CONNECTIONS}
max_client_conn = 500
ignore_startup_parameters = extra_float_digits,options
"""
    )
    for path in workdir.iterdir():
        path.chmod(0o644)
    command = [str(binary()), str(workdir / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root; take the socket's owner
        command[1:1] = ["-u", _unprivileged_user(host)]
    log = open(workdir / "pgbouncer.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_listening(listen_port, proc, workdir / "pgbouncer.log")
        query = {k: v for k, v in upstream.query.items() if k != "host"}
        yield upstream.set(host="127.0.0.1", port=listen_port, query=query)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _unprivileged_user(host: str) -> str:
    """Who may reach the server: a Unix socket directory's owner, else nobody in particular."""
    if host.startswith("/"):
        return pwd.getpwuid(os.stat(host).st_uid).pw_name
    return "nobody"


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return int(sock.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(100):
        if proc.poll() is not None:
            raise RuntimeError(f"pgbouncer exited: {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"pgbouncer did not start listening: {log.read_text()}")
