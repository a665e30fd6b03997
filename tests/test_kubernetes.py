"""The Kubernetes manifests (deploy/kustomization.yaml and the GPU component), checked offline.

Rendered by the kustomize built into kubectl, as `kubectl apply -k` would render them, then
every object is validated against the Kubernetes API's own schemas (kubernetes-validate
ships them) and checked for what docs/kubernetes.md promises: secrets only from the Secret,
workers without the owner's or superuser's password, nothing exposed outside the cluster,
a termination grace that covers the worker's stop grace, GPU requests in the GPU component.
The commands the manifests run are those of docker-compose.yml, which
tests/test_compose_roles.py runs for real against PostgreSQL as the same roles.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from conftest import REPO
from services import unavailable

DEPLOY = REPO / "deploy"
GPU_COMPONENT = DEPLOY / "kubernetes" / "gpu"
# The oldest Kubernetes release the manifests claim to work on (docs/kubernetes.md).
KUBERNETES_VERSION = "1.30.0"
SECRET = "hpo-secrets"


def _render(kustomization_dir: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        unavailable("kubectl (with its built-in kustomize) is not installed")
    done = subprocess.run(
        [kubectl, "kustomize", str(kustomization_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return _render(DEPLOY)


@pytest.fixture(scope="module")
def gpu(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    # A user's overlay: the base plus the GPU component, from a folder of their own.
    overlay = tmp_path_factory.mktemp("overlay")
    relative = Path(os.path.relpath(DEPLOY, overlay))
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [str(relative)],
                "components": [str(relative / "kubernetes" / "gpu")],
            }
        )
    )
    return _render(overlay)


def _one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def _pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for o in objects:
        if o["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield o["metadata"]["name"], o["spec"]["template"]["spec"]


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


@pytest.mark.parametrize("which", ["base", "gpu"])
def test_every_object_validates_against_the_kubernetes_schemas(
    which: str, request: pytest.FixtureRequest
) -> None:
    objects = request.getfixturevalue(which)
    kinds = sorted({o["kind"] for o in objects})
    assert kinds == [
        "ConfigMap", "Deployment", "Job", "PersistentVolumeClaim", "Service", "StatefulSet",
    ]  # fmt: skip
    for o in objects:
        # strict: a misspelled or misplaced field is an error, not ignored.
        kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)
        assert o["metadata"]["namespace"] == "hpo"


def test_a_broken_manifest_is_caught(base: list[dict[str, Any]]) -> None:
    # The check above can fail: a field at the wrong level is refused.
    worker = yaml.safe_load(yaml.safe_dump(_one(base, "Deployment", "hpo-worker")))
    worker["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, KUBERNETES_VERSION, strict=True)


def test_secrets_come_from_the_secret_and_workers_hold_only_theirs(
    base: list[dict[str, Any]],
) -> None:
    example = (REPO / ".env.example").read_text()
    env_keys = set(re.findall(r"^([A-Z_]+)=", example, flags=re.M))
    for name, spec in _pod_specs(base):
        for container in _containers(spec):
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == SECRET
                    # `kubectl create secret generic hpo-secrets --from-env-file=.env`.
                    assert ref["key"] in env_keys, f"{name}: {ref['key']} not in .env.example"
                else:
                    # No password, token or key written into a manifest.
                    assert not re.search(r"PASSWORD|SECRET|TOKEN", var["name"]), (name, var)
                    value = var.get("value", "")
                    assert "://" not in value or urlsplit(value).password is None, (name, var)
    worker = _one(base, "Deployment", "hpo-worker")["spec"]["template"]["spec"]
    secret_keys = {
        var["valueFrom"]["secretKeyRef"]["key"]
        for container in _containers(worker)
        for var in container.get("env", [])
        if "secretKeyRef" in var.get("valueFrom", {})
    }
    # The DML-only role's password and MLflow's login: not the owner's, not the superuser's.
    assert secret_keys == {
        "HPO_WORKER_PASSWORD", "MLFLOW_ADMIN_USERNAME", "MLFLOW_ADMIN_PASSWORD",
    }  # fmt: skip
    storage = {
        var["name"]: var.get("value") for c in _containers(worker) for var in c.get("env", [])
    }["HPO_STORAGE"]
    assert storage.startswith("postgresql+psycopg://hpo_worker@")
    assert worker["securityContext"]["runAsNonRoot"] is True


def test_nothing_is_exposed_outside_the_cluster(base: list[dict[str, Any]]) -> None:
    for service in (o for o in base if o["kind"] == "Service"):
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    for _, spec in _pod_specs(base):
        assert not spec.get("hostNetwork")
        for container in _containers(spec):
            assert all("hostPort" not in p for p in container.get("ports", []))


def test_the_pod_grace_covers_the_workers_stop_grace(base: list[dict[str, Any]]) -> None:
    worker = _one(base, "Deployment", "hpo-worker")["spec"]["template"]["spec"]
    args = worker["containers"][0]["args"]
    assert args[0] == "worker" and "--study" not in args  # serves every study
    stop_grace = float(args[args.index("--stop-grace") + 1])
    # The trial's grace, then requeueing it and closing the connections, before SIGKILL.
    assert worker["terminationGracePeriodSeconds"] >= stop_grace + 5


def test_the_gpu_component_requests_a_gpu_and_pins_trials_to_it(
    base: list[dict[str, Any]], gpu: list[dict[str, Any]]
) -> None:
    container = _one(gpu, "Deployment", "hpo-worker")["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    args = container["args"]
    assert args[args.index("--gpus") + 1] == "0"
    assert args[args.index("--backend") + 1] == "jax"
    assert container["image"].startswith("hpo-gpu")
    cpu = _one(base, "Deployment", "hpo-worker")["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in cpu["resources"].get("limits", {})


def test_the_worker_arguments_are_options_hpo_worker_takes(
    base: list[dict[str, Any]], gpu: list[dict[str, Any]]
) -> None:
    import typer.main

    from hpo.cli import app

    command = typer.main.get_command(app)
    worker = command.commands["worker"]  # type: ignore[attr-defined]
    options = {opt for param in worker.params for opt in getattr(param, "opts", [])}
    for objects in (base, gpu):
        spec = _one(objects, "Deployment", "hpo-worker")["spec"]["template"]["spec"]
        for arg in spec["containers"][0]["args"][1:]:
            if arg.startswith("--"):
                assert arg in options, f"hpo worker has no {arg}"


def test_mlflow_runs_hpos_app_with_logins_as_compose_does(base: list[dict[str, Any]]) -> None:
    """The MLflow server is hpo's app (its UI opens experiments on their training runs) with
    MLflow's basic auth, an app hpo's package registers, as in docker-compose.yml."""
    import tomllib

    (container,) = _one(base, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert container["command"] == ["mlflow"] and args[0] == "server"
    app_name = args[args.index("--app-name") + 1]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["mlflow"]
    assert app_name == compose["command"][compose["command"].index("--app-name") + 1]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    apps = project["entry-points"]["mlflow.app"]
    assert apps[app_name] == "hpo.tracking.mlflow_app:create_auth_app", apps


def test_workers_reach_the_store_through_one_pgbouncer_as_their_role(
    base: list[dict[str, Any]],
) -> None:
    """Workers connect to the pgbouncer Service; it runs the compose service's start script
    (transaction mode), in front of the study store, as the workers' role with only their
    password; PostgreSQL keeps its default connection limit."""
    service = _one(base, "Service", "pgbouncer")
    [port] = service["spec"]["ports"]
    bouncer = _one(base, "Deployment", "pgbouncer")
    assert bouncer["spec"]["replicas"] == 1  # two would hold twice the pool
    spec = bouncer["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert container["command"] == ["sh", "/etc/hpo-pgbouncer/start.sh"]
    env = {var["name"]: var for var in container["env"]}
    assert env["PGBOUNCER_USER"]["value"] == "hpo_worker"
    assert env["STORE_HOST"]["valueFrom"]["configMapKeyRef"]["key"] == "STORE_HOST"
    secrets = {v["valueFrom"]["secretKeyRef"]["key"] for v in env.values() if "secretKeyRef" in
               v.get("valueFrom", {})}  # fmt: skip
    assert secrets == {"HPO_WORKER_PASSWORD"}
    [volume] = spec["volumes"]
    script = _one(base, "ConfigMap", volume["configMap"]["name"])["data"]["start.sh"]
    assert script == (DEPLOY / "pgbouncer" / "start.sh").read_text()
    assert "pool_mode = transaction" in script
    assert f"listen_port = ${{PGBOUNCER_PORT:-{port['port']}}}" in script
    worker = _one(base, "Deployment", "hpo-worker")["spec"]["template"]["spec"]
    for container in _containers(worker):
        storage = {var["name"]: var.get("value") for var in container["env"]}["HPO_STORAGE"]
        assert storage.startswith(f"postgresql+psycopg://hpo_worker@pgbouncer:{port['port']}/")
    postgres = _one(base, "StatefulSet", "postgres")["spec"]["template"]["spec"]["containers"][0]
    assert "max_connections" not in " ".join(postgres.get("args", []))


def _guide_overlays() -> list[str]:
    from pytest_codeblocks import extract_from_file

    return [
        block.code
        for block in extract_from_file(REPO / "docs" / "kubernetes.md")
        if block.syntax == "yaml" and block.code.startswith("# my-hpo/kustomization.yaml")
    ]


def test_the_guides_overlays_render_and_validate(tmp_path: Path) -> None:
    overlays = _guide_overlays()
    assert len(overlays) == 2, "the guide lost an overlay"
    # As the guide lays them out: my-hpo/ beside the checkout hpo/.
    (tmp_path / "hpo").symlink_to(REPO, target_is_directory=True)
    (tmp_path / "my-hpo").mkdir()
    for text in overlays:
        (tmp_path / "my-hpo" / "kustomization.yaml").write_text(text)
        objects = _render(tmp_path / "my-hpo")
        for o in objects:
            kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)
        worker = _one(objects, "Deployment", "hpo-worker")["spec"]["template"]["spec"]
        assert worker["containers"][0]["image"].startswith("registry.example.com/hpo")
