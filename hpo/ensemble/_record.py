"""Recording a built ensemble: its MLflow run, the registered model version, and the tags
that link the version, its run, the member trials' runs and the studies' runs.

The Model Registry has no outbox: registering needs the server to answer (see
:func:`hpo.ensemble.build_ensemble`).
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo.ensemble._candidates import (
    Candidate,
)
from hpo.ensemble._combine import Combination
from hpo.ensemble._errors import EnsembleError, EnsembleWarning, RegistryUnavailableError
from hpo.ensemble._plots import metrics_png, weights_png
from hpo.ensemble._predictions import PredictionSet
from hpo.ensemble._result import EnsembleResult, Member
from hpo.storage import mask_url
from hpo.tracking._outbox import is_placeholder

CROSS_STUDY_EXPERIMENT = "ensembles"


ENSEMBLE_FILE = "ensemble.json"


def _experiment(client: Any, infos: list[Any]) -> tuple[str, str | None]:
    """The ensemble's experiment (the study's, or ``ensembles`` across studies) and parent."""
    if len(infos) == 1 and infos[0].experiment_id:
        experiment_id = str(infos[0].experiment_id)
        parent = infos[0].parent_run_id
        if is_placeholder(experiment_id) or (parent and is_placeholder(parent)):
            from hpo import tracking

            experiment_id = client.resolve(experiment_id)
            parent = tracking.resolve_run_id(client.uri, parent) if parent else None
        return experiment_id, parent
    from hpo.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND

    tags = {"hpo.kind": "ensembles", EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND}
    return client.ensure_experiment(CROSS_STUDY_EXPERIMENT, tags=tags), None


@dataclass(frozen=True)
class EnsembleRecord:
    """What a build chose and scored, for :func:`record` to log and register.

    ``infos`` are the studies (:class:`hpo.ensemble._candidates.StudyInfo`); ``models`` the
    members' loaded Keras models, in the order of ``members``; ``dest`` a scratch folder.
    """

    name: str
    uri: str
    infos: list[Any]
    candidates: list[Candidate]
    members: list[Member]
    models: list[Any]
    comb: Combination
    preds: PredictionSet
    metric: str
    top: int
    seed: int | None
    dataset: dict[str, Any]
    skipped: list[dict[str, Any]]
    dest: Path


def record(client: Any, rec: EnsembleRecord) -> EnsembleResult:
    """Log the ensemble's run, register its model and tag both ways."""
    from hpo import tracking
    from hpo.ensemble._export import (
        MODEL_ARTIFACT,
        check_standard,
        ensemble_model,
        save_mlflow_model,
    )
    from hpo.tracking.notes import ensemble_description, version_metric_tags

    name, uri, infos, candidates, members = (
        rec.name,
        rec.uri,
        rec.infos,
        rec.candidates,
        rec.members,
    )
    comb, metric, dataset = rec.comb, rec.metric, rec.dataset
    method, size = comb.method, comb.size
    _registered_model(client, name, create=True)
    study_names = [s.name for s in infos]
    experiment_id, parent = _experiment(client, infos)
    tags = {
        "hpo.kind": "ensemble",
        "hpo.studies": ",".join(study_names),
        "hpo.ensemble.name": name,
        "hpo.ensemble.method": method,
        "hpo.ensemble.members": ",".join(m.run_id for m in members),
    }
    if len(infos) == 1:
        tags["hpo.study"] = infos[0].name
    if parent:
        tags["mlflow.parentRunId"] = parent
    run_id, artifact_uri = start_run(
        client, uri, experiment_id, f"ensemble {name}", tags, name, "ensemble", "Build"
    )
    result = EnsembleResult(
        name=name,
        version=None,
        run_id=run_id,
        experiment_id=experiment_id,
        tracking_uri=uri,
        method=method,
        metric=metric,
        size=size,
        top=rec.top,
        seed=rec.seed,
        task=str(dataset["task"]),
        studies=study_names,
        members=members,
        metrics=comb.metrics,
        candidates=[c.to_dict() for c in candidates],
        skipped=rec.skipped,
    )
    with run_outcome(client, run_id):
        tracking.log_params(
            client,
            run_id,
            {
                "method": method,
                "selection_metric": metric,
                "size": size,
                "top": rec.top,
                "seed": rec.seed,
                "studies": ",".join(study_names),
                "dataset": dataset.get("dataset"),
                "task": dataset["task"],
                "fingerprint": dataset["fingerprint"],
                "n_candidates": len(candidates),
                "n_members": len(members),
                "members": json.dumps([[m.study, m.trial, m.run_id, m.weight] for m in members]),
                **{f"member.{i}.run_id": m.run_id for i, m in enumerate(members)},
                **{f"member.{i}.weight": m.weight for i, m in enumerate(members)},
            },
        )
        tracking.log_metrics(client, run_id, flat_metrics(comb.metrics), 0)
        files: dict[str, Path | bytes] = {
            "weights.png": weights_png(members),
            "metrics.png": metrics_png(rec.preds, comb, candidates),
        }
        model_dir = rec.dest / "mlflow-model"
        try:
            inputs = raw_inputs_of(
                [c for c, w in zip(candidates, comb.weights, strict=True) if w > 0]
            )
            ensemble = ensemble_model(
                rec.models,
                [m.weight for m in members],
                [f"{m.study}_trial{m.trial}" for m in members],
            )
            check_standard(ensemble)
            save_mlflow_model(
                ensemble,
                model_dir,
                inputs,
                dataset.get("class_names") or _lm_tokens(inputs),
                str(dataset["task"]),
            )
        except EnsembleError as exc:
            result.exportable, result.export_problem = False, str(exc)
            warnings.warn(
                f"the ensemble is registered without a model: {exc}", EnsembleWarning, stacklevel=3
            )
        if result.exportable:
            _log_folder(client, run_id, model_dir, MODEL_ARTIFACT)
        source = f"{artifact_uri}/{MODEL_ARTIFACT}" if result.exportable else artifact_uri
        # Registry writes have no outbox: a server that stops answering now fails the build.
        with _unavailable(
            uri,
            f"registering {name!r}",
            f"no version of {name!r} was registered; the ensemble's run {run_id} is marked "
            "FAILED (sent when the server answers, or with `hpo sync`)",
        ):
            mv = client.raw.create_model_version(
                name,
                source=source,
                run_id=run_id,
                tags={
                    "hpo.kind": "ensemble",
                    "hpo.studies": ",".join(study_names),
                    "hpo.ensemble_run": run_id,
                    "hpo.member_runs": ",".join(m.run_id for m in members),
                    "hpo.method": method,
                    "hpo.task": str(dataset["task"]),
                    "hpo.exportable": str(result.exportable).lower(),
                    **(
                        {"hpo.export_problem": result.export_problem[:4000]}
                        if result.export_problem
                        else {}
                    ),
                    **version_metric_tags(comb.metrics),
                },
                description=ensemble_description(
                    method=method,
                    metric=metric,
                    task=str(dataset["task"]),
                    studies={s.name: s.experiment_id for s in infos},
                    run=(experiment_id, run_id),
                    members=members,
                    metrics=comb.metrics,
                ),
            )
        result.version = int(mv.version)
        result.model_uri = f"models:/{name}/{mv.version}"
        tracking.log_artifact_files(
            client,
            run_id,
            {**files, ENSEMBLE_FILE: json.dumps(result.to_dict(), indent=1).encode()},
        )
        client.set_tag(run_id, "hpo.ensemble.version", str(mv.version))
        client.set_tag(run_id, "hpo.ensemble.model_uri", result.model_uri)
        try:
            _tag_sources(client, name, int(mv.version), members, infos)
        except Exception as exc:
            links_missing(exc, name, int(mv.version), "the member trial runs were tagged with it")
    return result


def start_run(
    client: Any,
    uri: str,
    experiment_id: str,
    run_name: str,
    tags: dict[str, str],
    name: str,
    what: str,
    again: str,
) -> tuple[str, str]:
    """Start the run of a version of ``name`` about to be registered: its id and artifact URI.

    A run MLflow did not take (it waits in the outbox) is ended FAILED there, and nothing is
    registered: ``what`` names the run in the message, ``again`` what to do once MLflow answers.
    """
    run_id = client.start_run(experiment_id, run_name=run_name, tags=tags)
    if is_placeholder(run_id) or is_placeholder(experiment_id):
        client.set_tag(run_id, "hpo.fail_reason", "MLflow did not answer: nothing registered")
        client.set_terminated(run_id, "FAILED")
        raise RegistryUnavailableError(
            f"MLflow at {mask_url(uri)} stopped answering before the {what} could be "
            f"registered: no version of {name!r} was registered (the {what}'s run waits in "
            f"the outbox, marked FAILED; `hpo sync` sends it). {again} again once the server "
            "answers."
        )
    with _unavailable(uri, f"reading the {what}'s run {run_id}"):
        return run_id, str(client.get_run(run_id).info.artifact_uri)


@contextlib.contextmanager
def run_outcome(client: Any, run_id: str) -> Iterator[None]:
    """The build's (or refit's) MLflow run ends FINISHED, or FAILED with the error's reason."""
    try:
        yield
    except BaseException as exc:
        client.set_tag(run_id, "hpo.fail_reason", f"{type(exc).__name__}: {exc}"[:5000])
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


def links_missing(exc: Exception, name: str, version: int, what: str) -> None:
    """A registered version whose reverse links (tags on other runs) MLflow did not take: a
    warning when MLflow stopped answering (the version names its sources in its own tags),
    else the error."""
    from hpo import tracking

    if not tracking.is_unreachable(exc):
        raise exc
    warnings.warn(
        f"version {version} of {name!r} is registered, but MLflow stopped answering before "
        f"{what}: {exc}",
        EnsembleWarning,
        stacklevel=4,
    )


def raw_inputs_of(members: Sequence[Any]) -> Any:
    """The raw inputs every member's saved model takes (:mod:`hpo.inputs`).

    Raises:
        EnsembleError: a member's model takes transformed arrays (a trial stored before
            models took raw inputs, or one whose input layers could not be saved): one
            exported model would silently expect transformed inputs.
    """
    from hpo.inputs import INPUTS_KEY, InputSpec, InputSpecError

    specs = []
    for m in members:
        summary = m.summary or {}
        if INPUTS_KEY not in summary:
            why = summary.get("inputs_problem") or (
                "it was stored before hpo saved models with their input transformation; run "
                "the study's trials again (hpo run --resume with more --trials) to get such "
                "models"
            )
            raise EnsembleError(
                f"{m.label}'s model takes the transformed arrays it trained on, not raw inputs: "
                f"{why}"
            )
        try:
            specs.append(InputSpec.from_json(summary[INPUTS_KEY]))
        except InputSpecError as exc:
            raise EnsembleError(f"{m.label}: {exc}") from None
    first = specs[0]
    for m, spec in zip(members, specs, strict=True):
        if (spec.kind, spec.shape, spec.dtype) != (first.kind, first.shape, first.dtype):
            raise EnsembleError(
                f"{m.label} takes {spec.description} {spec.describe_shape()}, but "
                f"{members[0].label} takes {first.description} {first.describe_shape()}: one "
                "exported model has one input"
            )
    return first


def _lm_tokens(inputs: Any) -> list[str] | None:
    """A language model's "classes": its tokens, by id."""
    if inputs.kind != "tokens":
        return None
    step = inputs.steps[0]
    oov = step.get("oov_token")
    return ([oov] if oov is not None else []) + list(step["vocabulary"])


def _require_server(client: Any, uri: str) -> None:
    """Fail before any work when the registry cannot be written (server down, offline)."""
    from hpo.tracking import OFFLINE_ENV

    if client.answers():
        return
    why = f"{OFFLINE_ENV} is set" if os.environ.get(OFFLINE_ENV) else "it does not answer"
    raise RegistryUnavailableError(
        f"MLflow at {mask_url(uri)} cannot be written ({why}): an ensemble is registered in "
        "the MLflow Model Registry, which has no offline queue; nothing was built or "
        "registered. Build again once the server answers."
    )


@contextlib.contextmanager
def _unavailable(uri: str, doing: str, consequence: str = "nothing was registered") -> Any:
    """Turn "the server does not answer" into a :class:`RegistryUnavailableError`."""
    from hpo import tracking

    try:
        yield
    except Exception as exc:
        if not tracking.is_unreachable(exc):
            raise
        raise RegistryUnavailableError(
            f"MLflow at {mask_url(uri)} stopped answering while {doing} "
            f"({type(exc).__name__}): {consequence}. Build again once the server answers."
        ) from exc


ENSEMBLE_MODEL_DESCRIPTION = "Weighted ensemble of hpo trials, built by `hpo ensemble build`."


def _registered_model(
    client: Any, name: str, create: bool, description: str = ENSEMBLE_MODEL_DESCRIPTION
) -> Any:
    """The registered model ``name`` (created with ``description`` if missing and ``create``;
    else None); refuses a registered model that hpo did not make."""
    from mlflow.exceptions import MlflowException

    uri = client.uri
    try:
        with _unavailable(uri, f"looking up the registered model {name!r}"):
            model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        if not create:
            return None
        with _unavailable(uri, f"creating the registered model {name!r}"):
            return client.raw.create_registered_model(
                name,
                tags={"hpo.kind": "ensemble"},
                description=description,
            )
    if model.tags.get("hpo.kind") != "ensemble":
        raise EnsembleError(
            f"the registry already has a model named {name!r} that is not an hpo ensemble; "
            "choose another --name"
        )
    return model


def _log_folder(client: Any, run_id: str, folder: Path, artifact_path: str) -> None:
    """Log every file under ``folder`` below ``artifact_path``, keeping the layout."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        sub = path.parent.relative_to(folder).as_posix()
        client.log_artifact(run_id, path, artifact_path if sub == "." else f"{artifact_path}/{sub}")


def _append_tag(client: Any, run_id: str, key: str, value: str) -> None:
    current = client.get_run(run_id).data.tags.get(key, "")
    items = [v for v in current.split(",") if v]
    if value not in items:
        items.append(value)
    client.set_tag(run_id, key, ",".join(items)[-5000:])


def _tag_sources(
    client: Any, name: str, version: int, members: list[Member], infos: list[Any]
) -> None:
    """Tag member trial runs and study runs with the registered version that uses them."""
    for m in members:
        _append_tag(client, m.run_id, f"hpo.ensemble.{name}", str(version))
    for s in infos:
        if s.parent_run_id:
            _append_tag(client, s.parent_run_id, "hpo.ensembles", f"{name}:{version}")


def flat_metrics(metrics: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    """``{kind}_{split}_{metric}`` names, as logged in MLflow.

    Example:
        >>> flat_metrics({"test": {"ensemble": {"nll": 0.2}}})
        {'ensemble_test_nll': 0.2}
    """
    return {
        f"{kind}_{split}_{name}": value
        for split, by_kind in metrics.items()
        for kind, values in by_kind.items()
        for name, value in values.items()
    }
