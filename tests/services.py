"""The docker-compose topology as local processes, for tests (Docker does not run here).

A pytest plugin: a test module loads it with ``pytest_plugins = ["services"]``.

- ``mlflow_server`` (session): a real ``mlflow server`` on a fresh PostgreSQL database of its
  own, ``--serve-artifacts --artifacts-destination <tmp dir>``, on a free port of 127.0.0.1,
  like the compose ``mlflow`` service. ``stop()`` and ``start()`` take it down and bring it
  back on the same port, database and artifact directory.
- ``served_study`` (session): one finished study run through that server over HTTP
  (``hpo run ... --tracking-uri http://127.0.0.1:PORT`` with 2 workers, PostgreSQL store), so
  the server and browser tests check the same study.
- ``start_workers`` (per test): a factory of real ``hpo worker`` subprocesses, configured like
  the compose ``worker`` service (``HPO_STORAGE``, ``MLFLOW_TRACKING_URI`` in the environment);
  whatever it started is stopped at the end of the test.
- ``compose_roles()``: deploy/postgres-init's script run against the test server, as the
  postgres image runs it: the study store and MLflow's database with the compose services'
  roles (randomly suffixed names), dropped afterwards.
- ``postgres_cluster()``, ``restart_postgres()``, ``ensure_postgres_up()``: the local Debian
  cluster of the test database (``pg_lsclusters``, by port), restarted with ``pg_ctlcluster``
  at the niceness it had, waited for with ``pg_isready``.
- ``pooled_store`` (per test): a PostgreSQL cluster of its own (``initdb``) behind PgBouncer
  in transaction mode (``bench/_store_servers.py``), either restartable without touching the
  shared test server.
- ``ServiceProcess``: any such server process (the Optuna dashboard too): started in its own
  process group, waited for over HTTP, stopped with SIGTERM and, after a grace, SIGKILL.

In CI (``CI`` set) a missing PostgreSQL fails the tests instead of skipping them; a server
that does not come up always fails them.
"""

from __future__ import annotations

import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, TypeVar

import pytest

from conftest import DEFAULT_POSTGRES, POSTGRES_ENV, REPO, hpo

sys.path.insert(0, str(REPO / "bench"))  # the throw-away servers the benchmark uses too
from _store_servers import PgBouncer, ScratchPostgres, pgbouncer, scratch_postgres

T = TypeVar("T")


# -- waiting on conditions --------------------------------------------------------------------


def wait_for(
    condition: Callable[[], T],
    timeout: float,
    what: str,
    *,
    alive: Sequence[subprocess.Popen[bytes] | subprocess.Popen[str]] = (),
    logs: Callable[[], str] = lambda: "",
    every: float = 0.5,
) -> T:
    """Poll ``condition`` until it gives a truthy value, and return that value.

    Fails the test when ``timeout`` seconds pass first, or at once when a process of ``alive``
    (the ones the condition depends on) has exited; the message names ``what`` and ends with
    ``logs()``.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        dead = [p.args for p in alive if p.poll() is not None]
        if dead:
            pytest.fail(f"waiting for {what}: {dead} exited\n{logs()}")
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{logs()}")
        time.sleep(every)


def wait_all(procs: Sequence[subprocess.Popen[bytes]], timeout: float) -> list[int]:
    """Exit codes once every process of ``procs`` has exited, within ``timeout`` seconds in all;
    raises ``subprocess.TimeoutExpired`` otherwise."""
    deadline = time.monotonic() + timeout
    for p in procs:
        p.wait(timeout=max(0.1, deadline - time.monotonic()))
    return [p.returncode for p in procs]


def stop_processes(
    procs: Sequence[subprocess.Popen[bytes]], grace: float = 30.0
) -> list[int | None]:
    """SIGTERM to every running process (like ``docker compose stop``), SIGKILL to those still
    running ``grace`` seconds later; each exit code as it was after the grace (None: killed)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    codes: list[int | None] = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            codes.append(None)
            p.kill()
            p.wait(timeout=30)
    return codes


IN_CI = bool(os.environ.get("CI"))
DIGITS_SPACE = REPO / "search_spaces" / "image_cnn_digits.yaml"
SERVED_STUDY = "served_digits"
SERVED_TRIALS = 3
# Variables of the developer's shell that would point the processes somewhere else.
_FOREIGN_ENV = ("HPO_STORAGE", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME",
                "MLFLOW_TRACKING_PASSWORD", "MLFLOW_AUTH_CONFIG_PATH")  # fmt: skip


def unavailable(reason: str) -> NoReturn:
    """A missing prerequisite: fail in CI (where it must be there), skip elsewhere."""
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


_PORT_LOCKS = Path(tempfile.gettempdir()) / "hpo-test-ports"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now, reserved for this test process.

    Picked below the kernel's ephemeral range (no outgoing connection is given it meanwhile)
    and claimed with a lock file holding this process's pid (``O_EXCL``), so that the other
    test process of ``make test`` never picks the same port while a server here is starting.
    The reservation lasts as long as this process; a dead process's lock is taken over.
    """
    _PORT_LOCKS.mkdir(exist_ok=True)
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(20000, max(20001, min(ephemeral_low, 32768)))
        lock = _PORT_LOCKS / str(port)
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            with suppress(OSError, ValueError):
                if not _alive(int(lock.read_text() or "0")):
                    lock.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use by something else: keep the lock, try another
        return port
    raise RuntimeError(f"no free port found (locks in {_PORT_LOCKS})")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without the variables that select stores or users.

    MLflow's usage telemetry is off: tests send nothing beyond this machine.
    """
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
    env.update({"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"})
    env.update(extra or {})
    return env


def http_status(url: str, timeout: float = 5.0, headers: Mapping[str, str] | None = None) -> int:
    """The HTTP status of a GET of ``url``; 0 when nothing answers."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


# -- PostgreSQL -------------------------------------------------------------------------------


@contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database (the ``postgres_url`` pattern), dropped afterwards.

    The server is the one of ``$HPO_TEST_POSTGRES_URL`` (default: 127.0.0.1:5432, database
    ``test``); unreachable, it skips the test, or fails it in CI.
    """
    import sqlalchemy as sa

    admin = os.environ.get(POSTGRES_ENV, DEFAULT_POSTGRES)
    # pre-ping: a test may restart the server under this engine's pooled connection.
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
    except Exception as exc:
        engine.dispose()
        unavailable(f"PostgreSQL unreachable at {admin}: {exc}")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with engine.connect() as conn:
        conn.execute(sa.text(f'create database "{name}"'))
    try:
        yield admin.rsplit("/", 1)[0] + "/" + name
    finally:
        with engine.connect() as conn:
            # A server or worker that is still connected must not keep the database alive.
            conn.execute(sa.text(f'drop database if exists "{name}" with (force)'))
        engine.dispose()


INIT_SCRIPT = REPO / "deploy" / "postgres-init" / "10-roles-and-databases.sh"


@dataclass(frozen=True)
class ComposeRoles:
    """The compose services' databases and roles, made by deploy/postgres-init's script.

    Role names carry a random suffix (roles belong to the whole server, which other test
    sessions share); each URL holds its role's password, as the services' environment does.
    """

    owner: str  # the study store as its owner (init-store)
    worker: str  # ... as the workers' role (rows only)
    dashboard: str  # ... as the dashboard's role (read-only)
    mlflow: str  # MLflow's database as its owner
    roles: Mapping[str, str]  # HPO_OWNER_ROLE ... -> the role's name


@contextmanager
def compose_roles() -> Iterator[ComposeRoles]:
    """Run the compose init script as the postgres image would, against the test server.

    A fresh database plays ``POSTGRES_DB`` (the study store) and the script creates MLflow's
    database and the four roles; all are dropped afterwards. Needs ``psql`` (15 or later).
    """
    import sqlalchemy as sa

    if not shutil.which("psql"):
        unavailable("psql is not installed")
    admin = sa.engine.make_url(os.environ.get(POSTGRES_ENV, DEFAULT_POSTGRES))
    suffix = uuid.uuid4().hex[:8]
    roles = {
        "HPO_OWNER_ROLE": f"hpo_{suffix}",
        "HPO_WORKER_ROLE": f"hpo_worker_{suffix}",
        "HPO_DASHBOARD_ROLE": f"hpo_dashboard_{suffix}",
        "MLFLOW_ROLE": f"mlflow_{suffix}",
    }
    passwords = {
        "HPO_OWNER_ROLE": ("HPO_OWNER_PASSWORD", f"owner-{suffix}"),
        "HPO_WORKER_ROLE": ("HPO_WORKER_PASSWORD", f"worker-{suffix}"),
        "HPO_DASHBOARD_ROLE": ("DASHBOARD_DB_PASSWORD", f"dashboard-{suffix}"),
        "MLFLOW_ROLE": ("MLFLOW_DB_PASSWORD", f"mlflow-{suffix}"),
    }
    mlflow_db = f"hpo_mlflow_{suffix}"
    engine = sa.create_engine(
        admin.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT"
    )
    try:
        with fresh_database("hpo_roles") as study_url:
            study_db = study_url.rsplit("/", 1)[1]
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("PG")},
                "PGHOST": admin.host or "127.0.0.1",
                "PGPORT": str(admin.port or 5432),
                "POSTGRES_USER": admin.username or "postgres",
                "POSTGRES_DB": study_db,
                "MLFLOW_DB": mlflow_db,
                **roles,
                **dict(passwords.values()),
            }
            if admin.password:
                env["PGPASSWORD"] = admin.password
            try:
                result = subprocess.run(
                    ["sh", str(INIT_SCRIPT)], env=env, capture_output=True, text=True, timeout=120
                )
                assert result.returncode == 0, result.stdout + result.stderr

                def url(variable: str, database: str) -> str:
                    return admin.set(
                        username=roles[variable],
                        password=passwords[variable][1],
                        database=database,
                    ).render_as_string(hide_password=False)

                yield ComposeRoles(
                    owner=url("HPO_OWNER_ROLE", study_db),
                    worker=url("HPO_WORKER_ROLE", study_db),
                    dashboard=url("HPO_DASHBOARD_ROLE", study_db),
                    mlflow=url("MLFLOW_ROLE", mlflow_db),
                    roles=roles,
                )
            finally:
                with engine.connect() as conn:
                    conn.execute(sa.text(f'drop database if exists "{mlflow_db}" with (force)'))
    finally:
        # After both databases are gone (fresh_database drops the study store): the roles
        # own nothing any more.
        with engine.connect() as conn:
            for role in roles.values():
                conn.execute(sa.text(f'drop role if exists "{role}"'))
        engine.dispose()


def _pg_address() -> tuple[str, int]:
    import sqlalchemy as sa

    url = sa.engine.make_url(os.environ.get(POSTGRES_ENV, DEFAULT_POSTGRES))
    return url.host or "127.0.0.1", url.port or 5432


def postgres_ready(timeout: float = 0.0) -> bool:
    """Whether the test PostgreSQL accepts connections (``pg_isready``), waiting ``timeout`` s."""
    host, port = _pg_address()
    deadline = time.monotonic() + timeout
    while True:
        ready = subprocess.run(
            ["pg_isready", "-q", "-h", host, "-p", str(port)], check=False, timeout=30
        ).returncode
        if ready == 0:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


@dataclass(frozen=True)
class PgCluster:
    """A local Debian PostgreSQL cluster (``pg_lsclusters``)."""

    version: str
    name: str
    data_dir: Path

    def ctl(self, action: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """``pg_ctlcluster VERSION NAME ACTION``, run at the niceness the server had.

        The server's processes inherit the caller's priority: a test run under ``nice`` must
        not leave a slower database behind it.
        """
        command = ["pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name, action]
        with suppress(OSError, ValueError, IndexError):
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
            change = os.getpriority(os.PRIO_PROCESS, pid) - os.getpriority(os.PRIO_PROCESS, 0)
            if change:
                command = ["nice", "-n", str(change), *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def postgres_cluster() -> PgCluster:
    """The local Debian cluster that serves the test database's port.

    Restarting it needs that cluster on this machine (``pg_lsclusters``) and root (or the
    ``postgres`` user); otherwise the test is skipped here and fails in CI.
    """
    host, port = _pg_address()
    if host not in ("127.0.0.1", "localhost", "::1"):
        unavailable(f"PostgreSQL at {host} is not on this machine: it cannot be restarted")
    if not (shutil.which("pg_lsclusters") and shutil.which("pg_ctlcluster")):
        unavailable("pg_lsclusters/pg_ctlcluster missing (Debian's postgresql-common)")
    if os.geteuid() != 0 and pwd.getpwuid(os.geteuid()).pw_name != "postgres":
        unavailable("restarting PostgreSQL needs root or the postgres user")
    listing = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True
    ).stdout
    for line in listing.splitlines():
        fields = line.split()  # Ver Cluster Port Status Owner Data-directory Log-file
        if len(fields) >= 6 and fields[2] == str(port):
            return PgCluster(fields[0], fields[1], Path(fields[5]))
    unavailable(f"no local PostgreSQL cluster on port {port}:\n{listing}")


def restart_postgres(cluster: PgCluster, timeout: float = 120.0) -> float:
    """Restart the cluster (fast shutdown: every session is cut); returns seconds until ready.

    Settings made with ``ALTER SYSTEM`` (CI's ``max_connections``) survive a restart.
    """
    began = time.monotonic()
    result = cluster.ctl("restart", timeout)
    if not postgres_ready(timeout):
        # Whatever happened, leave a running server to the rest of the suite.
        cluster.ctl("start", timeout)
        if not postgres_ready(timeout):
            pytest.fail(f"PostgreSQL did not come back: {result.stdout}{result.stderr}")
    return time.monotonic() - began


def ensure_postgres_up(cluster: PgCluster, timeout: float = 120.0) -> None:
    """Start the cluster if it is down and wait until it accepts connections."""
    if postgres_ready(1.0):
        return
    cluster.ctl("start", timeout)
    postgres_ready(timeout)


# -- a study store behind PgBouncer -----------------------------------------------------------


@dataclass(frozen=True)
class PooledStore:
    """A PostgreSQL cluster of its own behind PgBouncer in transaction mode.

    ``url`` is the study store's database through the pooler (what workers get); ``direct``
    the same database without it (what a test reads back). ``postgres.restart()`` and
    ``bouncer.restart()`` restart either without touching the shared test server.
    """

    postgres: ScratchPostgres
    bouncer: PgBouncer
    url: str
    direct: str


@pytest.fixture
def pooled_store() -> Iterator[PooledStore]:
    """A fresh :class:`PooledStore` (``max_connections`` 40, 5 pooled server connections)."""
    import sqlalchemy as sa

    if shutil.which("pgbouncer") is None:
        unavailable("pgbouncer missing (make pooler installs it)")
    with scratch_postgres(max_connections=40) as postgres, pgbouncer(postgres.port, 5) as bouncer:
        admin = sa.create_engine(postgres.url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text("create database hpo"))
        admin.dispose()
        direct = postgres.url.rsplit("/", 1)[0] + "/hpo"
        yield PooledStore(postgres, bouncer, bouncer.url("hpo"), direct)


# -- server processes -------------------------------------------------------------------------


class ServiceError(RuntimeError):
    """A service process exited or did not answer in time (its log's tail in the message)."""


@dataclass
class ServiceProcess:
    """A server started as a process of its own, as a compose service would run it.

    ``start()`` returns once ``health_url`` answers 200 (or raises :class:`ServiceError`);
    ``stop()`` ends the whole process group (servers fork their own workers).
    """

    name: str
    argv: Sequence[str]
    health_url: str
    log_path: Path
    cwd: Path
    env: Mapping[str, str] = field(default_factory=clean_env)
    # MLflow takes 15 s to start on an idle 2-core machine, minutes on a busy one.
    start_timeout: float = 300.0
    stop_grace: float = 20.0
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts + 1}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                list(self.argv),
                cwd=self.cwd,
                env=dict(self.env),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stop() reaches its workers
            )
        self.starts += 1
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServiceError(
                    f"{self.name} exited with code {self.proc.returncode} while starting\n"
                    + self.log_tail()
                )
            if http_status(self.health_url, timeout=2.0) == 200:
                return
            time.sleep(0.5)
        self.stop()
        raise ServiceError(
            f"{self.name} did not answer {self.health_url} within {self.start_timeout:.0f} s\n"
            + self.log_tail()
        )

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM to the process group, SIGKILL after ``grace`` (or ``stop_grace``) seconds."""
        grace = self.stop_grace if grace is None else grace
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            self._signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        # Workers of the server may outlive their parent for a moment: reap the group.
        self._signal_group(proc.pid, signal.SIGKILL)
        self.proc = None

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with suppress(ProcessLookupError):
            os.killpg(pgid, sig)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"


def require_mlflow_app(name: str) -> None:
    """Fail unless ``mlflow server --app-name NAME`` can find ``name`` (hpo's apps are entry
    points of the installed hpo: an install older than pyproject.toml lacks them)."""
    from importlib.metadata import entry_points

    if not entry_points(group="mlflow.app", name=name):
        pytest.fail(f"no mlflow.app entry point {name!r} installed: run `make setup`")


class MlflowServer(ServiceProcess):
    """``mlflow server`` as in docker-compose.yml: SQL backend store, artifacts served by it,
    hpo's app (``--app-name hpo``, as deploy/compose.noauth.yml) unless ``app_name`` says
    another (``hpo-basic-auth``) or None (MLflow's own)."""

    def __init__(
        self,
        backend_store_uri: str,
        root: Path,
        *,
        port: int | None = None,
        app_name: str | None = "hpo",
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        if app_name is not None:
            require_mlflow_app(app_name)
        self.port = port or free_port()
        self.backend_store_uri = backend_store_uri
        self.artifacts_dir = root / "artifacts"
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--backend-store-uri",
            backend_store_uri,
            "--serve-artifacts",
            "--artifacts-destination",
            str(self.artifacts_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            # One server process is plenty for a test and spares the 2 cores.
            "--workers",
            "1",
            *(["--app-name", app_name] if app_name else []),
            *extra_args,
        ]
        super().__init__(
            name="mlflow server",
            argv=argv,
            health_url=f"http://127.0.0.1:{self.port}/health",
            log_path=root / "mlflow-server.log",
            cwd=root,  # anything MLflow writes by default lands here, not in the repo
            # MLflow's job runner (GenAI judges) is of no use to hpo and costs a dozen
            # processes on 2 cores.
            env=clean_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}),
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def optuna_dashboard(
    storage: str, root: Path, env: Mapping[str, str] | None = None
) -> ServiceProcess:
    """``optuna-dashboard STORAGE`` as in docker-compose.yml, on a free port of 127.0.0.1.

    ``env``: extra variables, e.g. ``PGPASSWORD`` as the compose service passes its password.
    """
    port = free_port()
    return ServiceProcess(
        name="optuna-dashboard",
        argv=[
            str(Path(sys.executable).with_name("optuna-dashboard")),
            storage,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        health_url=f"http://127.0.0.1:{port}/api/meta",
        log_path=root / "optuna-dashboard.log",
        cwd=root,
        env=clean_env(env),
        stop_grace=5.0,  # it keeps no state of its own
    )


def started(service: ServiceProcess) -> ServiceProcess:
    """Start ``service``; a server that does not come up fails the test, in CI and out."""
    try:
        service.start()
    except ServiceError as exc:
        pytest.fail(str(exc))
    return service


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real MLflow tracking server over HTTP on a fresh PostgreSQL database."""
    with fresh_database("hpo_mlflow") as backend:
        server = MlflowServer(backend, tmp_path_factory.mktemp("mlflow-server"))
        started(server)
        try:
            yield server
        finally:
            server.stop()


# -- workers ----------------------------------------------------------------------------------


@dataclass
class WorkerGroup:
    """``hpo worker`` subprocesses, each with its log file, as compose's scaled workers."""

    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]

    def wait(self, timeout: float) -> list[int]:
        """Exit codes once all have exited; raises ``subprocess.TimeoutExpired`` otherwise."""
        return wait_all(self.procs, timeout)

    def stop(self, grace: float = 30.0) -> list[int | None]:
        """SIGTERM (like ``docker compose stop``), then SIGKILL after ``grace`` seconds.

        Returns each exit code as it was after the grace (``None``: had to be killed).
        """
        return stop_processes(self.procs, grace)

    def log_text(self, chars: int = 3000) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}" for path in self.logs
        )


StartWorkers = Callable[..., WorkerGroup]


@pytest.fixture
def start_workers(tmp_path: Path) -> Iterator[StartWorkers]:
    """``start_workers(n, storage=..., tracking_uri=..., args=[...], env={...})``: n workers.

    The store and tracking URLs go in the environment, as in the compose ``worker`` service
    (``args`` are extra ``hpo worker`` arguments, e.g. ``["--study", name]``; ``env`` extra
    variables, e.g. a ``PYTHONPATH`` for a family of the tests). Every worker
    still running at the end of the test is stopped.
    """
    groups: list[WorkerGroup] = []

    def start(
        n: int,
        *,
        storage: str,
        tracking_uri: str | None = None,
        args: Sequence[str] = (),
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> WorkerGroup:
        where = cwd or tmp_path
        extra = {
            "HPO_STORAGE": storage,
            "HPO_OUTBOX_DIR": str(where / "outbox"),  # not the developer's ~/.cache
            "TF_CPP_MIN_LOG_LEVEL": "2",
            **(env or {}),
        }
        if tracking_uri:
            extra["MLFLOW_TRACKING_URI"] = tracking_uri
        env = clean_env(extra)
        procs: list[subprocess.Popen[bytes]] = []
        logs: list[Path] = []
        for _ in range(n):
            log_path = where / f"worker-{len(groups)}-{len(procs)}.log"
            with open(log_path, "wb") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "hpo", "worker", *args],
                        cwd=where,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                    )
                )
            logs.append(log_path)
        group = WorkerGroup(procs, logs)
        groups.append(group)
        return group

    yield start
    for group in groups:
        group.stop(grace=5.0)


# -- one finished study, shared ---------------------------------------------------------------


@dataclass(frozen=True)
class ServedStudy:
    """A study that ``hpo run`` finished through the MLflow server."""

    name: str
    storage: str
    server: MlflowServer
    workdir: Path
    stdout: str  # of `hpo run --json`
    summary: dict[str, object]  # its JSON summary
    seconds: float


@pytest.fixture(scope="session")
def served_study(
    postgres_url: str, mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory
) -> ServedStudy:
    """``hpo run`` of the digits space: 3 trials, 2 workers, PostgreSQL store, MLflow by HTTP."""
    workdir = tmp_path_factory.mktemp("served-study")
    began = time.monotonic()
    result = hpo(
        "run",
        str(DIGITS_SPACE),
        "--trials",
        str(SERVED_TRIALS),
        "--workers",
        "2",
        "--study",
        SERVED_STUDY,
        "--seed",
        "0",
        "--storage",
        postgres_url,
        "--tracking-uri",
        mlflow_server.url,
        "--json",
        cwd=workdir,
        # MLflow writes that could not be delivered would wait here, not in ~/.cache.
        env={"HPO_OUTBOX_DIR": str(workdir / "outbox")},
        timeout=600,
    )
    seconds = time.monotonic() - began
    if result.returncode != 0:
        logs = "\n".join(
            p.read_text(errors="replace")[-3000:] for p in workdir.glob("hpo-logs/*/*.log")
        )
        pytest.fail(
            f"hpo run exited {result.returncode}\n{result.stderr[-3000:]}\n{logs}\n"
            f"server log:\n{mlflow_server.log_tail()}"
        )
    # The summary is the last top-level JSON object: a test of its own checks that nothing
    # else is printed, so that the other checks do not hang on that one.
    start = 0 if result.stdout.startswith("{") else result.stdout.rfind("\n{") + 1
    try:
        summary = json.loads(result.stdout[start:])
    except json.JSONDecodeError:
        pytest.fail(f"no JSON summary in the output of hpo run --json:\n{result.stdout}")
    return ServedStudy(
        SERVED_STUDY, postgres_url, mlflow_server, workdir, result.stdout, summary, seconds
    )


def forget_ensemble(server: MlflowServer, experiment_name: str, name: str) -> None:
    """Delete registered model ``name`` and its ensemble runs in ``experiment_name``.

    Tests that build ensembles of the shared ``served_study`` call it when done, so that the
    study's experiment holds only its study and trial runs for every other test.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(server.url, registry_uri=server.url)
    with suppress(MlflowException):
        client.delete_registered_model(name)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return
    for run in client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`hpo.ensemble.name` = '{name}'"
    ):
        client.delete_run(run.info.run_id)


def forget_experiment(server: MlflowServer, name: str) -> None:
    """Delete experiment ``name`` (a test's own study) so that later tests of the shared server
    see only the experiments they expect."""
    from mlflow import MlflowClient

    client = MlflowClient(server.url)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        client.delete_experiment(experiment.experiment_id)
