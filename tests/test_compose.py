"""docker-compose.yml, its no-auth override, the PostgreSQL init script and the Dockerfile,
checked without Docker.

Docker cannot run here, so these tests read the files as Compose would (YAML, then
``${VAR}`` interpolation from .env) and prove what can be proved without it: every command
is a real invocation of the installed programs (the same versions the image installs from
requirements.lock), every variable is documented in .env.example, the services agree on
database, host and port and each connects as its own role that the init script creates (none
as the superuser), every password comes from .env, MLflow runs with basic auth and the
dashboard only on request, nothing but 127.0.0.1 is published, and the image is built from
the lock and runs ``hpo`` as a user other than root. tests/test_compose_roles.py runs the
init script against a real PostgreSQL and the services as those roles.
"""

from __future__ import annotations

import configparser
import functools
import importlib.metadata
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
import pytest
import typer.main
import yaml
from sqlalchemy.engine import make_url

from hpo.cli import app

from conftest import REPO

COMPOSE = REPO / "docker-compose.yml"
NOAUTH_OVERRIDE = REPO / "deploy" / "compose.noauth.yml"
INIT_SCRIPT = REPO / "deploy" / "postgres-init" / "10-roles-and-databases.sh"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"
SECRETS = (
    "POSTGRES_PASSWORD",
    "HPO_OWNER_PASSWORD",
    "HPO_WORKER_PASSWORD",
    "MLFLOW_DB_PASSWORD",
    "DASHBOARD_DB_PASSWORD",
    "MLFLOW_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SECRET_KEY",
)
HPO_SERVICES = ("init-store", "worker")  # the image's entrypoint (hpo), not overridden

# Compose's interpolation: $$ escapes; ${VAR}, ${VAR:-default}, ${VAR-default},
# ${VAR:?error}, ${VAR?error}.
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})"
)


class MissingVariableError(Exception):
    """A ``${VAR:?message}`` whose variable is unset or empty: Compose refuses to start."""


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """``value`` (YAML data) with every string interpolated the way Compose does it."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        name, op, arg = m["name"], m["op"], m["arg"]
        current = env.get(name)
        if op in (":?", "?"):
            if current is None or (op == ":?" and not current):
                raise MissingVariableError(f"{name}: {arg}")
            return current
        if op == ":-":
            return current or arg
        if op == "-":
            return arg if current is None else current
        return current or ""

    return _VARIABLE.sub(substitute, value)


def env_example() -> dict[str, str]:
    """The variables of .env.example, as Compose reads a .env file."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def filled_env() -> dict[str, str]:
    """.env.example with its secrets filled in, as a user's .env would be."""
    env = env_example()
    env.update({name: f"test-{name.lower().replace('_', '-')}" for name in SECRETS})
    return env


@functools.cache
def raw(path: Path = COMPOSE) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def compose(path: Path = COMPOSE) -> dict[str, Any]:
    """The compose file as Compose would run it with a filled-in .env."""
    data: dict[str, Any] = interpolate(raw(path), filled_env())
    return data


def option(argv: list[str], flag: str) -> str:
    """The value after ``flag`` in ``argv``."""
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # the "KEY=value" list form
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def mounts(service: Mapping[str, Any]) -> dict[str, str]:
    """Mount target -> source (a named volume or a path) of a service's short-syntax volumes."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        out[target] = source
    return out


def seconds(duration: str) -> float:
    """A Compose duration such as ``30s``, ``1m30s`` or ``500ms`` in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


# -- the files --------------------------------------------------------------------------------


def test_compose_files_parse_with_the_expected_services() -> None:
    services = raw()["services"]
    assert {"postgres", "pgbouncer", "mlflow", "worker", "optuna-dashboard"} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
    override = raw(NOAUTH_OVERRIDE)["services"]
    assert set(override) <= set(services)


def test_every_variable_is_in_env_example_and_every_example_is_used() -> None:
    text = COMPOSE.read_text() + NOAUTH_OVERRIDE.read_text()
    used = {m["name"] for m in _VARIABLE.finditer(text) if m["name"]}
    documented = set(env_example())
    assert used - documented == set(), "variables missing from .env.example"
    assert documented - used == set(), ".env.example variables that nothing uses"


def test_secrets_are_required_and_not_committed() -> None:
    example = env_example()
    for name in SECRETS:
        assert example[name] == "", f"{name} has a value in .env.example"
    text = COMPOSE.read_text() + NOAUTH_OVERRIDE.read_text()
    for m in _VARIABLE.finditer(text):
        if m["name"] in SECRETS:
            assert m["op"] == ":?", f"{m[0]}: a secret must be required, with no default"
    # A .env that leaves any one of them empty is refused rather than run without it.
    for name in SECRETS:
        with pytest.raises(MissingVariableError, match=name):
            interpolate(raw(), {**filled_env(), name: ""})
    assert ".env" in (REPO / ".gitignore").read_text().split()


def test_postgres_is_not_published_and_published_ports_bind_loopback() -> None:
    for path in (COMPOSE, NOAUTH_OVERRIDE):
        for name, service in compose(path)["services"].items():
            if name == "postgres":
                assert "ports" not in service, "the database must not be published"
            for port in service.get("ports", []):
                if isinstance(port, dict):  # long syntax
                    assert port.get("host_ip") == "127.0.0.1", (name, port)
                else:
                    assert str(port).startswith("127.0.0.1:"), (name, port)
    services = compose()["services"]
    assert services["mlflow"]["ports"] == ["127.0.0.1:5000:5000"]
    assert services["optuna-dashboard"]["ports"] == ["127.0.0.1:8080:8080"]


# -- commands are real invocations ------------------------------------------------------------


def hpo_context(argv: list[str]) -> Any:
    """Parse ``argv`` as the real ``hpo`` command line would (options, types, required values).

    The command groups are walked down to the subcommand, which is parsed but not run.
    """
    command: Any = typer.main.get_command(app)
    args, path = list(argv), ["hpo"]
    while hasattr(command, "commands"):  # a group: its subcommand by name
        assert args and args[0] in command.commands, f"hpo {' '.join(argv)}: no such command"
        path.append(args[0])
        command = command.commands[args.pop(0)]
    try:
        return command.make_context(" ".join(path), args)
    except typer.TyperException as exc:  # Typer's own click raises these
        pytest.fail(f"hpo {' '.join(argv)}: {getattr(exc, 'format_message', exc.__str__)()}")


@pytest.mark.parametrize("service", HPO_SERVICES)
def test_hpo_services_run_real_hpo_commands(service: str) -> None:
    spec = compose()["services"][service]
    assert "entrypoint" not in spec, "the image's entrypoint is hpo"
    ctx = hpo_context(spec["command"])
    if service == "worker":
        assert ctx.params["study"] is None  # serves every active study
        assert ctx.params["threads"] == 2


def test_the_documented_compose_commands_are_real_hpo_commands() -> None:
    """The usage lines at the top of docker-compose.yml."""
    usage = re.compile(r"^#\s+docker compose run --rm worker (.*)$", re.M)
    lines = [m[1].split("#")[0].split() for m in usage.finditer(COMPOSE.read_text())]
    assert len(lines) >= 2
    for argv in lines:
        ctx = hpo_context(argv)
        space = ctx.params.get("space")
        if space is not None:  # the image copies search_spaces/ into its working directory
            assert (REPO / space).is_file(), space


def installed_matches_lock(package: str) -> None:
    """The venv's ``package`` is the lock's, so its CLI is the one the image runs."""
    pinned = re.search(
        rf"^{re.escape(package)}==(\S+)$", (REPO / "requirements.lock").read_text(), re.M
    )
    assert pinned, f"{package} is not in requirements.lock"
    assert importlib.metadata.version(package) == pinned[1]


def help_text(program: str, *args: str) -> str:
    result = subprocess.run(
        [str(Path(sys.executable).with_name(program)), *args, "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def flags(argv: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in argv if a.startswith("--")}


@pytest.fixture(scope="module")
def mlflow_server_help() -> str:
    installed_matches_lock("mlflow")
    return help_text("mlflow", "server")


@pytest.mark.slow
@pytest.mark.parametrize("path", [COMPOSE, NOAUTH_OVERRIDE], ids=["base", "noauth"])
def test_mlflow_service_runs_a_real_mlflow_server(mlflow_server_help: str, path: Path) -> None:
    base = compose()["services"]["mlflow"]
    override = compose(path)["services"]["mlflow"] if path != COMPOSE else {}
    spec = {**base, **override}  # the override replaces the command only
    assert spec["entrypoint"] == ["mlflow"]
    argv = spec["command"]
    assert argv[0] == "server"
    for flag in flags(argv):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", mlflow_server_help), flag
    # Values too: the real click command parses them (types, choices such as --app-name).
    from mlflow.cli import cli

    server = cli.commands["server"]
    try:
        ctx = server.make_context("server", list(argv[1:]))
    except click.ClickException as exc:
        pytest.fail(f"mlflow {' '.join(argv)}: {exc.format_message()}")
    assert ctx.params["serve_artifacts"] is True
    assert ctx.params["backend_store_uri"].startswith("postgresql+psycopg://")
    # hpo's server app (hpo/tracking/mlflow_app.py), with MLflow's logins unless noauth.
    assert ctx.params["app_name"] == ("hpo-basic-auth" if path == COMPOSE else "hpo")
    # Artifacts on a named volume, so that they outlive the container.
    destination = ctx.params["artifacts_destination"]
    assert mounts(spec).get(destination) in raw()["volumes"], destination


@pytest.mark.slow
def test_optuna_dashboard_runs_a_real_optuna_dashboard() -> None:
    installed_matches_lock("optuna-dashboard")
    text = help_text("optuna-dashboard")
    spec = compose()["services"]["optuna-dashboard"]
    assert spec["entrypoint"] == ["optuna-dashboard"]
    argv = spec["command"]
    assert not argv[0].startswith("-") and "storage" in text  # the positional storage URL
    for flag in flags(argv):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), flag
    assert option(argv, "--host") == "0.0.0.0"  # in the container; published on 127.0.0.1
    assert spec["ports"] == [f"127.0.0.1:8080:{option(argv, '--port')}"]


# -- the services agree -----------------------------------------------------------------------


# The role each service connects as, and the password variable of that role.
SERVICE_ROLES = {
    "init-store": ("hpo", "HPO_OWNER_PASSWORD"),
    "worker": ("hpo_worker", "HPO_WORKER_PASSWORD"),
    "optuna-dashboard": ("hpo_dashboard", "DASHBOARD_DB_PASSWORD"),
    "mlflow": ("mlflow", "MLFLOW_DB_PASSWORD"),
}


def database_urls(services: Mapping[str, Any]) -> dict[str, str]:
    """The database URL of every service that connects to PostgreSQL, by service."""
    return {
        "init-store": environment(services["init-store"])["HPO_STORAGE"],
        "worker": environment(services["worker"])["HPO_STORAGE"],
        "optuna-dashboard": services["optuna-dashboard"]["command"][0],
        "mlflow": option(services["mlflow"]["command"], "--backend-store-uri"),
    }


def login(service: Mapping[str, Any], url: str) -> tuple[str | None, str | None]:
    """(user, password) a service connects with: the URL's, else libpq's PGPASSWORD."""
    parsed = make_url(url)
    return parsed.username, parsed.password or environment(service).get("PGPASSWORD")


def init_script_roles() -> dict[str, str]:
    """Role variable -> role name, as deploy/postgres-init creates them (its defaults)."""
    text = INIT_SCRIPT.read_text()
    defaults = dict(re.findall(r"\$\{(\w+_ROLE):=(\w+)\}", text))
    created = set(re.findall(r'^CREATE ROLE :"(\w+)" LOGIN', text, re.M))
    getenv = dict(re.findall(r"^\\getenv (\w+) (\w+)$", text, re.M))
    # Every CREATE ROLE names a psql variable read from one of the *_ROLE variables.
    assert created and all(getenv.get(v) in defaults for v in created), (created, getenv)
    return {getenv[v]: defaults[getenv[v]] for v in created}


def test_services_agree_on_database_host_and_port() -> None:
    services = compose()["services"]
    pg = environment(services["postgres"])
    urls = database_urls(services)
    for name, text in urls.items():
        url = make_url(text)
        assert url.drivername == "postgresql+psycopg", name  # psycopg 3, as in the lock
        # The service, by its name; workers through the pooler (see the test below).
        expected = ("pgbouncer", 6432) if name == "worker" else ("postgres", 5432)
        assert (url.host, url.port) == expected, name
    study = {urls[s] for s in ("init-store", "worker", "optuna-dashboard")}
    assert {make_url(u).database for u in study} == {pg["POSTGRES_DB"]}
    mlflow_db = make_url(urls["mlflow"]).database
    # Optuna and MLflow both keep an alembic_version table: they need databases of their own.
    assert mlflow_db == pg["MLFLOW_DB"] != pg["POSTGRES_DB"]
    assert os.access(INIT_SCRIPT, os.X_OK) and "MLFLOW_DB" in INIT_SCRIPT.read_text()
    assert (
        "./deploy/postgres-init:/docker-entrypoint-initdb.d:ro" in services["postgres"]["volumes"]
    )
    mlflow_argv = services["mlflow"]["command"]

    # Workers reach MLflow by its service name on its container port, and MLflow accepts that
    # Host header (its DNS-rebinding guard), as well as the browser's on the published port.
    from mlflow.server.security_utils import is_allowed_host_header

    tracking = make_url(environment(services["worker"])["MLFLOW_TRACKING_URI"])
    port = option(mlflow_argv, "--port")
    assert (tracking.drivername, tracking.host, str(tracking.port)) == ("http", "mlflow", port)
    allowed = option(mlflow_argv, "--allowed-hosts").split(",")
    assert is_allowed_host_header(allowed, f"mlflow:{port}")
    assert is_allowed_host_header(allowed, "127.0.0.1:5000")
    assert is_allowed_host_header(allowed, "localhost:5000")


PGBOUNCER_START = REPO / "deploy" / "pgbouncer" / "start.sh"


def test_workers_reach_the_store_through_pgbouncer_as_their_own_role() -> None:
    """The pgbouncer service: transaction mode, in front of postgres:5432, logging in as the
    workers' role with their password, not published; tests/test_pooler_faults.py and
    bench/store_scale.py run the same start script against a real PostgreSQL."""
    services = compose()["services"]
    bouncer, worker = services["pgbouncer"], services["worker"]
    env = environment(bouncer)
    assert (env["STORE_HOST"], env["STORE_PORT"]) == ("postgres", "5432")
    worker_url = make_url(environment(worker)["HPO_STORAGE"])
    assert env["PGBOUNCER_USER"] == worker_url.username == SERVICE_ROLES["worker"][0]
    assert env["HPO_WORKER_PASSWORD"] == worker_url.password == filled_env()["HPO_WORKER_PASSWORD"]
    assert "POSTGRES_PASSWORD" not in yaml.safe_dump(raw()["services"]["pgbouncer"])
    assert "ports" not in bouncer
    assert bouncer["entrypoint"] == ["sh", "/etc/hpo-pgbouncer/start.sh"]
    assert "./deploy/pgbouncer:/etc/hpo-pgbouncer:ro" in bouncer["volumes"]
    script = PGBOUNCER_START.read_text()
    assert "pool_mode = transaction" in script and "auth_type = scram-sha-256" in script
    assert "listen_port = ${PGBOUNCER_PORT:-6432}" in script
    assert os.access(PGBOUNCER_START, os.X_OK)
    assert bouncer["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert worker["depends_on"]["pgbouncer"]["condition"] == "service_healthy"
    assert "6432" in " ".join(bouncer["healthcheck"]["test"])
    # The image has it (installed with apt, like the dataset).
    assert any(kind == "RUN" and "pgbouncer" in args for kind, args in dockerfile_instructions())


def test_healthchecks_and_start_order() -> None:
    services = compose()["services"]
    pg_check = " ".join(services["postgres"]["healthcheck"]["test"])
    # TCP, not the socket: the image's temporary init-time server listens on the socket only.
    assert "pg_isready" in pg_check and "-h 127.0.0.1" in pg_check
    mlflow_check = " ".join(services["mlflow"]["healthcheck"]["test"])
    port = option(services["mlflow"]["command"], "--port")
    assert f"http://127.0.0.1:{port}/health" in mlflow_check
    assert services["init-store"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    worker = services["worker"]["depends_on"]
    assert worker["postgres"]["condition"] == "service_healthy"
    assert worker["mlflow"]["condition"] == "service_healthy"
    assert worker["init-store"]["condition"] == "service_completed_successfully"
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    volumes = raw()["volumes"]
    assert services["postgres"]["volumes"][0] == "postgres-data:/var/lib/postgresql/data"
    assert "postgres-data" in volumes


def test_workers_scale_and_stop_gracefully() -> None:
    worker = compose()["services"]["worker"]
    # --scale needs replicas without a fixed name or host port.
    assert "container_name" not in worker and "ports" not in worker
    assert worker["init"] is True  # tini passes SIGTERM on to hpo
    ctx = hpo_context(["worker"])
    stop_grace = ctx.params["stop_grace"]  # its default
    # Docker's SIGKILL comes after the worker's own grace for its running trial.
    assert seconds(worker["stop_grace_period"]) >= float(stop_grace) + 5


# -- least privilege and logins ---------------------------------------------------------------


def test_no_service_but_postgres_connects_as_the_superuser() -> None:
    services = compose()["services"]
    pg = environment(services["postgres"])
    superuser = pg["POSTGRES_USER"]
    for name, url in database_urls(services).items():
        user, password = login(services[name], url)
        assert user == SERVICE_ROLES[name][0], name
        assert user != superuser, f"{name} connects as the superuser"
        assert password != pg["POSTGRES_PASSWORD"], f"{name} knows the superuser's password"
    # Nothing but postgres itself gets the superuser's password, in any form.
    for path in (COMPOSE, NOAUTH_OVERRIDE):
        for name, service in raw(path)["services"].items():
            if name != "postgres":
                assert "POSTGRES_PASSWORD" not in yaml.safe_dump(service), (path.name, name)
                assert "POSTGRES_USER" not in yaml.safe_dump(service), (path.name, name)
    # The superuser cannot be one of the services' roles (the init script refuses that too).
    assert superuser not in {role for role, _ in SERVICE_ROLES.values()}
    assert "POSTGRES_USER must not be" in INIT_SCRIPT.read_text()


def test_every_password_comes_from_env_example_variables() -> None:
    """Each service's database and MLflow password is its own .env variable, required."""
    raw_services = raw()["services"]
    services = compose()["services"]
    filled = filled_env()
    for name, url in database_urls(services).items():
        _, password = login(services[name], url)
        variable = SERVICE_ROLES[name][1]
        assert variable in SECRETS and env_example()[variable] == ""
        assert password == filled[variable], f"{name}: its password is not {variable}"
        # Unfilled, compose refuses to start rather than connect without a password.
        assert f"${{{variable}:?" in yaml.safe_dump(raw_services[name]), name
    passwords = [filled[v] for _, v in SERVICE_ROLES.values()]
    assert len(set(passwords)) == len(passwords)
    # The postgres service gets each role's password to create the role with.
    pg = environment(services["postgres"])
    for _, variable in SERVICE_ROLES.values():
        assert pg[variable] == filled[variable]
        assert variable in re.findall(r"^\\getenv \w+ (\w+)$", INIT_SCRIPT.read_text(), re.M)
    # Database passwords never on a command line (ps, docker top): URLs in commands have none.
    for name, service in services.items():
        for arg in [*service.get("command", []), *service.get("entrypoint", [])]:
            for secret in SECRETS:
                assert filled[secret] not in str(arg), f"{name}: {secret} on its command line"


def test_init_script_creates_the_roles_the_services_use() -> None:
    roles = init_script_roles()
    services = compose()["services"]
    used = {name: login(services[name], url)[0] for name, url in database_urls(services).items()}
    assert set(used.values()) == set(roles.values()), (used, roles)
    text = INIT_SCRIPT.read_text()
    # Workers: rows only, by default privileges on the tables the owner creates later.
    assert roles["HPO_OWNER_ROLE"] == used["init-store"]
    assert re.search(r'ALTER DATABASE :"hpo_db" OWNER TO :"owner"', text)
    grants = re.sub(r"\s+", " ", text)
    assert (
        'ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT SELECT, INSERT, '
        'UPDATE, DELETE ON TABLES TO :"worker";' in grants
    )
    assert 'GRANT SELECT ON TABLES TO :"dashboard";' in grants
    assert 'CREATE DATABASE :"mlflow_db" OWNER :"mlflow";' in grants
    assert "REVOKE ALL ON SCHEMA public FROM PUBLIC;" in grants
    for variable, role in roles.items():
        assert f"${{{variable}:={role}}}" in text


def test_mlflow_runs_with_basic_auth_by_default() -> None:
    raw_mlflow = raw()["services"]["mlflow"]
    mlflow = compose()["services"]["mlflow"]
    assert option(mlflow["command"], "--app-name") == "hpo-basic-auth"
    env = environment(mlflow)
    ini = mounts(raw_mlflow)[env["MLFLOW_AUTH_CONFIG_PATH"]]
    assert (REPO / ini).is_file()
    # MLflow's own reader accepts the file; its user database is on a named volume.
    from mlflow.server.auth.config import read_auth_config

    os.environ["MLFLOW_AUTH_CONFIG_PATH"] = str(REPO / ini)
    try:
        config = read_auth_config()
    finally:
        del os.environ["MLFLOW_AUTH_CONFIG_PATH"]
    auth_db = config.database_uri.removeprefix("sqlite:///")
    assert any(
        auth_db.startswith(target + "/") and source in raw()["volumes"]
        for target, source in mounts(raw_mlflow).items()
    ), auth_db
    parsed = configparser.ConfigParser()
    parsed.read(REPO / ini)
    assert "admin_password" not in parsed["mlflow"]  # the secret comes from .env only
    filled = filled_env()
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == filled["MLFLOW_ADMIN_PASSWORD"]
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == filled["MLFLOW_FLASK_SECRET_KEY"]
    # Workers sign in through MLflow's client variables, not a URL or a command line.
    worker_env = environment(compose()["services"]["worker"])
    assert worker_env["MLFLOW_TRACKING_USERNAME"] == env["MLFLOW_AUTH_ADMIN_USERNAME"]
    assert worker_env["MLFLOW_TRACKING_PASSWORD"] == env["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert make_url(worker_env["MLFLOW_TRACKING_URI"]).password is None


def test_noauth_override_is_the_base_command_without_basic_auth() -> None:
    base = raw()["services"]["mlflow"]["command"]
    override = raw(NOAUTH_OVERRIDE)["services"]
    assert set(override) == {"mlflow"} and set(override["mlflow"]) == {"command"}
    i = base.index("--app-name")
    without_auth = [*base[:i], *base[i + 2 :], "--app-name", "hpo"]
    assert override["mlflow"]["command"] == without_auth


def test_the_dashboard_runs_only_with_its_profile_and_read_only() -> None:
    services = raw()["services"]
    for name, service in services.items():
        expected = ["dashboard"] if name == "optuna-dashboard" else None
        assert service.get("profiles") == expected, name
    # Nothing started by default depends on it.
    for name, service in services.items():
        assert "optuna-dashboard" not in service.get("depends_on", {}), name
    dashboard = compose()["services"]["optuna-dashboard"]
    assert dashboard["ports"] == ["127.0.0.1:8080:8080"]
    user, _ = login(dashboard, dashboard["command"][0])
    assert user == init_script_roles()["HPO_DASHBOARD_ROLE"]


# -- the image --------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_installs_the_lock_and_runs_hpo_as_a_user() -> None:
    steps = dockerfile_instructions()
    words = [w for w, _ in steps]
    assert steps[0][0] == "FROM" and steps[0][1].startswith("python:3.11-slim")
    runs = " ".join(args for w, args in steps if w == "RUN")
    assert re.search(r"uv pip install .*-r \S*requirements\.lock", runs)
    makefile_uv = re.search(r'"uv==([\d.]+)"', (REPO / "Makefile").read_text())
    assert makefile_uv and f'"uv=={makefile_uv[1]}"' in runs  # the Makefile's uv
    copies = " ".join(args for w, args in steps if w == "COPY")
    for needed in ("requirements.lock", "pyproject.toml", "hpo", "search_spaces"):
        assert re.search(rf"(^|\s){re.escape(needed)}(\s|$)", copies), needed
    user = [args for w, args in steps if w == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN")
    assert ("ENTRYPOINT", '["hpo"]') in steps
    # The directories the named volumes are mounted on belong to that user.
    destination = option(compose()["services"]["mlflow"]["command"], "--artifacts-destination")
    assert destination in runs and "chown" in runs


def test_dockerignore_keeps_secrets_out_and_what_the_image_needs_in() -> None:
    patterns = [
        p.strip()
        for p in (REPO / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    assert ".env" in patterns and ".venv" in patterns and ".git" in patterns
    for needed in ("requirements.lock", "pyproject.toml", "README.md", "hpo", "search_spaces"):
        assert needed not in patterns, needed
