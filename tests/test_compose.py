"""docker-compose.yml, its auth override and the Dockerfile, checked without Docker.

Docker cannot run here, so these tests read the files as Compose would (YAML, then
``${VAR}`` interpolation from .env) and prove what can be proved without it: every command
is a real invocation of the installed programs (the same versions the image installs from
requirements.lock), every variable is documented in .env.example, the services agree on
database, user, host and port, nothing but 127.0.0.1 is published, and the image is built
from the lock and runs ``hpo`` as a user other than root.
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
AUTH_OVERRIDE = REPO / "docker" / "compose.auth.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"
SECRETS = ("POSTGRES_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_FLASK_SECRET_KEY")
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
    assert {"postgres", "mlflow", "worker", "optuna-dashboard"} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
    override = raw(AUTH_OVERRIDE)["services"]
    assert set(override) <= set(services)


def test_every_variable_is_in_env_example_and_every_example_is_used() -> None:
    text = COMPOSE.read_text() + AUTH_OVERRIDE.read_text()
    used = {m["name"] for m in _VARIABLE.finditer(text) if m["name"]}
    documented = set(env_example())
    assert used - documented == set(), "variables missing from .env.example"
    assert documented - used == set(), ".env.example variables that nothing uses"


def test_secrets_are_required_and_not_committed() -> None:
    example = env_example()
    for name in SECRETS:
        assert example[name] == "", f"{name} has a value in .env.example"
    text = COMPOSE.read_text() + AUTH_OVERRIDE.read_text()
    for m in _VARIABLE.finditer(text):
        if m["name"] in SECRETS:
            assert m["op"] == ":?", f"{m[0]}: a secret must be required, with no default"
    # An unedited copy of .env.example is refused rather than run with an empty password.
    with pytest.raises(MissingVariableError, match="POSTGRES_PASSWORD"):
        interpolate(raw(), env_example())
    assert ".env" in (REPO / ".gitignore").read_text().split()


def test_postgres_is_not_published_and_published_ports_bind_loopback() -> None:
    for path in (COMPOSE, AUTH_OVERRIDE):
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


@pytest.mark.parametrize("path", [COMPOSE, AUTH_OVERRIDE], ids=["base", "auth"])
def test_mlflow_service_runs_a_real_mlflow_server(mlflow_server_help: str, path: Path) -> None:
    base = compose()["services"]["mlflow"]
    override = compose(path)["services"]["mlflow"]
    # Compose merges an override's volumes and environment into the base service's.
    spec = {**base, **override, "volumes": [*base["volumes"], *override["volumes"]]}
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
    # Artifacts on a named volume, so that they outlive the container.
    destination = ctx.params["artifacts_destination"]
    assert mounts(spec).get(destination) in raw()["volumes"], destination


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


def test_services_agree_on_database_user_host_and_port() -> None:
    services = compose()["services"]
    pg = environment(services["postgres"])
    study_urls = {
        "worker": environment(services["worker"])["HPO_STORAGE"],
        "init-store": environment(services["init-store"])["HPO_STORAGE"],
        "optuna-dashboard": services["optuna-dashboard"]["command"][0],
    }
    mlflow_argv = services["mlflow"]["command"]
    for name, text in [*study_urls.items(), ("mlflow", option(mlflow_argv, "--backend-store-uri"))]:
        url = make_url(text)
        assert url.drivername == "postgresql+psycopg", name  # psycopg 3, as in the lock
        assert (url.host, url.port) == ("postgres", 5432), name  # the service, by its name
        assert url.username == pg["POSTGRES_USER"], name
        assert url.password == pg["POSTGRES_PASSWORD"], name
    assert {make_url(u).database for u in study_urls.values()} == {pg["POSTGRES_DB"]}
    mlflow_db = make_url(option(mlflow_argv, "--backend-store-uri")).database
    # Optuna and MLflow both keep an alembic_version table: they need databases of their own.
    assert mlflow_db == pg["MLFLOW_DB"] != pg["POSTGRES_DB"]
    init = REPO / "docker" / "postgres-init" / "10-mlflow-database.sh"
    assert os.access(init, os.X_OK) and "MLFLOW_DB" in init.read_text()
    assert (
        "./docker/postgres-init:/docker-entrypoint-initdb.d:ro" in services["postgres"]["volumes"]
    )

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


def test_auth_override_is_the_base_command_plus_basic_auth() -> None:
    base = raw()["services"]["mlflow"]["command"]
    auth = raw(AUTH_OVERRIDE)["services"]
    assert auth["mlflow"]["command"] == [*base, "--app-name", "basic-auth"]
    env = environment(compose(AUTH_OVERRIDE)["services"]["mlflow"])
    ini = mounts(auth["mlflow"])[env["MLFLOW_AUTH_CONFIG_PATH"]]
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
        auth_db.startswith(target + "/") and source in raw(AUTH_OVERRIDE)["volumes"]
        for target, source in mounts(auth["mlflow"]).items()
    ), auth_db
    parsed = configparser.ConfigParser()
    parsed.read(REPO / ini)
    assert "admin_password" not in parsed["mlflow"]  # the secret comes from .env only
    worker_env = environment(compose(AUTH_OVERRIDE)["services"]["worker"])
    assert worker_env["MLFLOW_TRACKING_USERNAME"] == env["MLFLOW_AUTH_ADMIN_USERNAME"]
    assert worker_env["MLFLOW_TRACKING_PASSWORD"] == env["MLFLOW_AUTH_ADMIN_PASSWORD"]


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
