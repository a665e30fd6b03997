"""Throw-away study-store servers: a PostgreSQL cluster of its own and PgBouncer in front of one.

Used by ``bench/store_scale.py`` and by the tests of workers behind a pooler
(``tests/services.py`` imports it), so that a benchmark with hundreds of connections, or a
test that restarts the store, never touches the shared test server.

Both need the PostgreSQL server binaries (``initdb``, ``pg_ctl``, ``postgres``) and
``pgbouncer`` on the machine. Neither runs as root: as root they run as the ``postgres`` user
(``runuser``), in a directory that user owns.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

_SERVER_USER = "postgres"


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", _SERVER_USER, "--", *argv]


def _owned_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        user = pwd.getpwnam(_SERVER_USER)
        os.chown(path, user.pw_uid, user.pw_gid)
    path.chmod(0o755)
    return path


def _pg_bin(name: str) -> str:
    """A PostgreSQL server binary: on PATH, else Debian's ``/usr/lib/postgresql/*/bin``."""
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise FileNotFoundError(f"{name} not found (install the PostgreSQL server)")


def wait_accepting(port: int, timeout: float, what: str, log: Path) -> None:
    """Return once ``what`` accepts TCP connections on 127.0.0.1:``port``; raise with the tail
    of its ``log`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s, suppress(OSError):
            s.settimeout(1.0)
            s.connect(("127.0.0.1", port))
            return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:.0f} s\n{tail}")


@dataclass
class ScratchPostgres:
    """A PostgreSQL cluster of its own (``initdb``), trust auth on 127.0.0.1 only."""

    data_dir: Path
    port: int
    max_connections: int

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of its ``postgres`` database as the ``postgres`` superuser."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            _as_server_user(
                [_pg_bin("pg_ctl"), "-D", str(self.data_dir), "-w", "-t", "120", *args]
            ),
            check=True,
            capture_output=True,
            timeout=180,
        )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
        options += f" -c max_connections={self.max_connections}"
        self._ctl("-l", str(self.data_dir / "server.log"), "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "stop")

    def restart(self) -> None:
        """Fast shutdown (every session is cut), then start again on the same port."""
        self.stop()
        self.start()


@contextmanager
def scratch_postgres(max_connections: int = 100) -> Iterator[ScratchPostgres]:
    """A fresh cluster with ``max_connections`` (PostgreSQL's default: 100), removed afterwards."""
    root = _owned_dir("hpo-scratch-pg-")
    data = root / "data"
    subprocess.run(
        _as_server_user(
            [_pg_bin("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"]
        ),
        check=True,
        capture_output=True,
        timeout=300,
    )
    server = ScratchPostgres(data, free_port(), max_connections)
    server.start()
    try:
        yield server
    finally:
        with suppress(subprocess.SubprocessError):
            server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


REPO = Path(__file__).resolve().parents[1]
PGBOUNCER_START = REPO / "deploy" / "pgbouncer" / "start.sh"  # the compose/Kubernetes service's
POOLER_PASSWORD = "pooled"  # checked by PgBouncer only; the scratch cluster trusts 127.0.0.1


@dataclass
class PgBouncer:
    """PgBouncer in transaction mode in front of the PostgreSQL at ``backend_port``, started by
    the deployment's own script (``deploy/pgbouncer/start.sh``).

    ``pool_size`` server connections per database and user, whatever the number of clients.
    ``stop()`` kills it (SIGKILL: every client connection drops at once, as when its container
    dies); ``start()`` brings it back on the same port.
    """

    root: Path
    backend_port: int
    port: int
    pool_size: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.root / "pgbouncer.log"

    def url(self, database: str) -> str:
        """The URL of ``database`` through the pooler, as the ``postgres`` user."""
        return f"postgresql+psycopg://postgres:{POOLER_PASSWORD}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "STORE_HOST": "127.0.0.1",
            "STORE_PORT": str(self.backend_port),
            "PGBOUNCER_USER": "postgres",
            "HPO_WORKER_PASSWORD": POOLER_PASSWORD,
            "PGBOUNCER_POOL_SIZE": str(self.pool_size),
            "PGBOUNCER_LISTEN": "127.0.0.1",
            "PGBOUNCER_PORT": str(self.port),
            "PGBOUNCER_RUN_DIR": str(self.root / "run"),
        }
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                _as_server_user(["sh", str(PGBOUNCER_START)]),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_accepting(self.port, 60, "pgbouncer", self.log)

    def stop(self) -> None:
        if self.proc is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@contextmanager
def pgbouncer(backend_port: int, pool_size: int = 20) -> Iterator[PgBouncer]:
    """PgBouncer (transaction mode, ``pool_size`` server connections) on a free port."""
    if shutil.which("pgbouncer") is None:
        raise FileNotFoundError("pgbouncer not found (apt-get install pgbouncer)")
    bouncer = PgBouncer(_owned_dir("hpo-pgbouncer-"), backend_port, free_port(), pool_size)
    bouncer.start()
    try:
        yield bouncer
    finally:
        bouncer.stop()
        shutil.rmtree(bouncer.root, ignore_errors=True)
