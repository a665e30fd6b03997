"""The registered ensembles and their versions, as ``hpo ensemble list`` and ``show`` print them."""

from __future__ import annotations

import json
import time
from typing import Any

from hpo.ensemble._combine import KINDS
from hpo.ensemble._errors import EnsembleError
from hpo.ensemble._predictions import SPLITS

# The kinds of metrics a version's run logs: an ensemble's (and its baselines'), a refit's
# (and the trial's it refits).
LISTED_KINDS = (*KINDS, "refit", "trial")


def _version_summary(client: Any, mv: Any) -> dict[str, Any]:
    run = client.get_run(mv.run_id) if mv.run_id else None
    metrics = {}
    params: dict[str, str] = {}
    if run is not None:
        metrics = dict(run.data.metrics)
        params = dict(run.data.params)
    members = json.loads(params.get("members", "[]")) if params.get("members") else []
    return {
        "version": int(mv.version),
        "run_id": mv.run_id,
        "created": time.strftime(
            "%Y-%m-%d %H:%M:%S", time.localtime(int(mv.creation_timestamp) / 1000)
        ),
        "method": mv.tags.get("hpo.method") or params.get("method"),
        "studies": [s for s in mv.tags.get("hpo.studies", "").split(",") if s],
        "task": mv.tags.get("hpo.task"),
        "exportable": mv.tags.get("hpo.exportable") != "false",
        "source": mv.source,
        "members": [{"study": s, "trial": t, "run_id": r, "weight": w} for s, t, r, w in members],
        "metrics": _nest(metrics),
    }


def _nest(flat: dict[str, float]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for key, value in flat.items():
        for kind in LISTED_KINDS:
            for split in SPLITS:
                prefix = f"{kind}_{split}_"
                if key.startswith(prefix):
                    out.setdefault(split, {}).setdefault(kind, {})[key[len(prefix) :]] = value
    return out


def _ensemble_models(client: Any) -> list[Any]:
    return [
        m
        for m in client.search_registered_models(max_results=1000)
        if m.tags.get("hpo.kind") == "ensemble"
    ]


def list_ensembles(tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Every registered hpo ensemble with its latest version's method, members and metrics
    (none where the local tracking store does not exist yet).

    Example:
        >>> [e["name"] for e in list_ensembles()]  # doctest: +SKIP
        ['cnn-ens']
    """
    from hpo import tracking
    from hpo.storage import store_exists

    uri = tracking.resolve_tracking_uri(tracking_uri)
    if not store_exists(uri):
        return []  # no local tracking store yet: no ensembles (and none is created)
    client = tracking.client(uri)
    out = []
    for model in sorted(_ensemble_models(client), key=lambda m: m.name):
        versions = client.search_model_versions(f"name = '{_quote(model.name)}'")
        if not versions:
            continue
        latest = max(versions, key=lambda v: int(v.version))
        summary = _version_summary(client, latest)
        out.append(
            {
                "name": model.name,
                "versions": len(versions),
                "latest_version": summary["version"],
                "method": summary["method"],
                "studies": summary["studies"],
                "members": len(summary["members"]),
                "metrics": summary["metrics"],
            }
        )
    return out


def show_ensemble(
    name: str, version: int | None = None, tracking_uri: str | None = None
) -> dict[str, Any]:
    """A registered ensemble: its versions (or one), each with method, members, weights and
    metrics.

    Example:
        >>> show_ensemble("cnn-ens")["versions"][0]["method"]  # doctest: +SKIP
        'caruana'
    """
    from hpo.ensemble._export import registered_version, registry_client

    client = registry_client(name, tracking_uri)
    if version is not None:
        versions = [registered_version(client, name, version)]
    else:
        versions = client.search_model_versions(f"name = '{_quote(name)}'")
        if not versions:
            known = ", ".join(m.name for m in _ensemble_models(client)) or "none"
            raise EnsembleError(f"no registered ensemble named {name!r}; known: {known}")
    return {
        "name": name,
        "versions": [
            _version_summary(client, mv) for mv in sorted(versions, key=lambda v: int(v.version))
        ],
    }


def _quote(name: str) -> str:
    return name.replace("'", "\\'")
