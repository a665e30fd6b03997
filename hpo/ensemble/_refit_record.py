"""Recording a refit (:mod:`hpo.ensemble._refit`): its MLflow run, in the study's experiment
under the study run, and a registered version that reads as an ensemble of one member.

The version has what every reader of registered ensembles uses: the ``hpo.kind=ensemble``
registered model, the run's ``members`` parameter (one member, weight 1, whose run is the
refit's own: it holds ``model.keras`` and ``dataset.json`` as a trial's run does) and, when
the model takes raw inputs and is standard Keras, the MLflow model folder that ``hpo export``
and serving read. Its method is ``refit``; its test metrics are of kind ``refit`` (the refit)
and ``trial`` (the trial it refits, trained on the training split only).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

from hpo.ensemble._errors import EnsembleError, EnsembleWarning
from hpo.ensemble._refit import EPOCHS_RULE, METHOD, RefitResult, Trained
from hpo.tracking._outbox import is_placeholder
from hpo.tracking.artifacts import DATASET_FILE, HISTORY_FILE, MODEL_FILE, PARAMS_FILE

REFIT_FILE = "refit.json"
REFIT_MODEL_DESCRIPTION = (
    "An hpo trial's configuration trained again on training + validation data, by `hpo refit`."
)


def record_refit(client: Any, uri: str, name: str, t: Trained, dest: Path) -> RefitResult:
    """Log the refit's run, register its model as a new version of ``name`` and tag the
    trial's and the study's runs with it."""
    from hpo import tracking
    from hpo.ensemble._export import MODEL_ARTIFACT
    from hpo.ensemble._record import (
        _append_tag,
        _experiment,
        _log_folder,
        _registered_model,
        _unavailable,
        flat_metrics,
        links_missing,
        run_outcome,
        start_run,
    )

    info, cand = t.info, t.cand
    _registered_model(client, name, create=True, description=REFIT_MODEL_DESCRIPTION)
    experiment_id, parent = _experiment(client, [info])
    tags = {
        "hpo.kind": "refit",
        "hpo.study": info.name,
        "hpo.studies": info.name,
        "hpo.family": info.family,
        "hpo.dataset": str(info.spec.dataset.name),
        "hpo.refit.name": name,
        "hpo.refit.trial": str(cand.trial_number),
        "hpo.refit.trial_run": cand.run_id,
        "hpo.refit.epochs_rule": EPOCHS_RULE,
    }
    if parent:
        tags["mlflow.parentRunId"] = parent
    run_name = f"refit {name} (trial {cand.trial_number})"
    run_id, artifact_uri = start_run(
        client, uri, experiment_id, run_name, tags, name, "refit", "Refit"
    )
    task = str(t.data.task)
    result = RefitResult(
        name=name,
        version=None,
        run_id=run_id,
        experiment_id=experiment_id,
        tracking_uri=uri,
        study=info.name,
        trial=cand.trial_number,
        trial_run_id=cand.run_id,
        family=info.family,
        epochs=t.epochs,
        epochs_rule=EPOCHS_RULE,
        trial_best_epoch=t.best_epoch,
        seed=t.seed,
        task=task,
        train_size=len(t.data.train),
        params=t.params,
        metrics=t.metrics,
        history=t.history,
    )
    with run_outcome(client, run_id):
        tracking.log_params(client, run_id, _run_params(t, result))
        for epoch, values in enumerate(t.history, start=1):
            tracking.log_metrics(client, run_id, values, epoch)
        tracking.log_metrics(
            client, run_id, {**flat_metrics(t.metrics), "epochs": float(t.epochs)}, t.epochs
        )
        model_dir = dest / "mlflow-model"
        files = _run_files(t, result, model_dir)
        tracking.log_artifact_files(client, run_id, files)
        if result.exportable:
            _log_folder(client, run_id, model_dir, MODEL_ARTIFACT)
        source = f"{artifact_uri}/{MODEL_ARTIFACT}" if result.exportable else artifact_uri
        refit_metrics = t.metrics["test"]["refit"]
        with _unavailable(
            uri,
            f"registering {name!r}",
            f"no version of {name!r} was registered; the refit's run {run_id} is marked "
            "FAILED (sent when the server answers, or with `hpo sync`)",
        ):
            mv = client.raw.create_model_version(
                name,
                source=source,
                run_id=run_id,
                tags={
                    "hpo.kind": "ensemble",
                    "hpo.method": METHOD,
                    "hpo.refit": "true",
                    "hpo.studies": info.name,
                    "hpo.ensemble_run": run_id,
                    "hpo.member_runs": run_id,
                    "hpo.refit.trial_run": cand.run_id,
                    "hpo.task": task,
                    "hpo.exportable": str(result.exportable).lower(),
                    **(
                        {"hpo.export_problem": result.export_problem[:4000]}
                        if result.export_problem
                        else {}
                    ),
                    **_metric_tags(refit_metrics),
                },
                description=refit_description(result),
            )
        result.version = int(mv.version)
        result.model_uri = f"models:/{name}/{mv.version}"
        tracking.log_artifact_files(
            client, run_id, {REFIT_FILE: json.dumps(result.to_dict(), indent=1).encode()}
        )
        client.set_tag(run_id, "hpo.refit.version", str(mv.version))
        client.set_tag(run_id, "hpo.refit.model_uri", result.model_uri)
        client.set_tag(run_id, tracking.NOTE_TAG, refit_description(result))
        try:
            _append_tag(client, cand.run_id, f"hpo.refit.{name}", str(mv.version))
            if info.parent_run_id and not is_placeholder(info.parent_run_id):
                _append_tag(client, info.parent_run_id, "hpo.ensembles", f"{name}:{mv.version}")
        except Exception as exc:
            links_missing(exc, name, int(mv.version), "the trial's run was tagged with it")
    return result


def _run_params(t: Trained, result: RefitResult) -> dict[str, Any]:
    """The trial's hyperparameters under their own names (as its run has them), then what
    the refit did; a hyperparameter whose name the refit uses is logged as ``hp.NAME``."""
    summary = t.cand.summary or {}
    meta: dict[str, Any] = {
        "method": METHOD,
        "members": json.dumps([[result.study, result.trial, result.run_id, 1.0]]),
        "refit.study": result.study,
        "refit.trial": result.trial,
        "refit.trial_run_id": result.trial_run_id,
        "refit.epochs": result.epochs,
        "refit.epochs_rule": result.epochs_rule,
        "refit.trial_best_epoch": result.trial_best_epoch,
        "refit.seed": result.seed,
        "refit.train_size": result.train_size,
        "refit.dataset": summary.get("dataset"),
        "refit.task": result.task,
        "refit.fingerprint": summary.get("fingerprint"),
    }
    hp = {(f"hp.{k}" if k in meta else k): v for k, v in t.params.items()}
    return {**hp, **meta}


def _run_files(t: Trained, result: RefitResult, model_dir: Path) -> dict[str, Path | bytes]:
    """The run's files: the model as a trial stores it (raw inputs where it can), its
    dataset summary, parameters and history; and the MLflow model folder in ``model_dir``
    (``result.exportable`` says whether there is one, ``export_problem`` why not)."""
    from hpo.ensemble._export import check_standard, save_mlflow_model
    from hpo.ensemble._record import _lm_tokens

    summary = t.data.summary()
    summary["train_includes_validation"] = True
    tmp = Path(tempfile.mkdtemp(prefix="model-", dir=model_dir.parent))
    model_path = tmp / MODEL_FILE
    try:
        saved = t.family.saved_model(t.model, t.data)
        saved.save(model_path)
    except Exception as exc:
        saved = t.model
        summary["inputs_problem"] = f"{type(exc).__name__}: {exc}"[:500]
        t.model.save(model_path)
    if saved is t.model:
        summary.pop("inputs", None)
        result.exportable = False
        result.export_problem = str(
            summary.get("inputs_problem")
            or f"family {t.info.family!r} keeps its own inputs: its model takes the arrays it "
            "trained on, not raw inputs"
        )
    else:
        try:
            check_standard(saved)
            save_mlflow_model(
                saved,
                model_dir,
                t.data.inputs,
                t.data.class_names or _lm_tokens(t.data.inputs),
                result.task,
            )
        except EnsembleError as exc:
            result.exportable, result.export_problem = False, str(exc)
    if not result.exportable:
        warnings.warn(
            f"the refit is registered without a model: {result.export_problem}",
            EnsembleWarning,
            stacklevel=4,
        )
    return {
        **t.extra_files,
        MODEL_FILE: model_path,
        DATASET_FILE: json.dumps(summary, indent=1).encode(),
        PARAMS_FILE: json.dumps(t.params, indent=1, default=str).encode(),
        HISTORY_FILE: json.dumps({"epochs": t.history}, indent=1).encode(),
    }


def _metric_tags(metrics: dict[str, float]) -> dict[str, str]:
    from hpo.tracking.notes import fmt

    return {f"test_{k}": fmt(v) for k, v in metrics.items()}


def refit_description(result: RefitResult) -> str:
    """The refit's description (Markdown): what was trained, on what, for how many epochs,
    with a link to the trial it refits and its test metrics beside the trial's."""
    from hpo.tracking.notes import fmt, run_link

    trial = run_link(
        result.experiment_id, result.trial_run_id, f"trial {result.trial} of {result.study}"
    )
    best = (
        f"; its best epoch by the objective was {result.trial_best_epoch}"
        if result.trial_best_epoch is not None
        else ""
    )
    lines = [
        f"**Refit of {trial}** ({result.family}, {result.task}): its configuration trained "
        f"again on training + validation data ({result.train_size} examples) for "
        f"{result.epochs} epochs, as many as led to the model the trial kept{best}; "
        f"seed {result.seed}. "
        f"Logged in {run_link(result.experiment_id, result.run_id, 'its MLflow run')} by "
        "`hpo refit`.",
    ]
    test = result.metrics.get("test") or {}
    refit, single = test.get("refit") or {}, test.get("trial") or {}
    if refit:
        lines += ["", "**Test metrics** (refit; the trial, trained on training data only):"]
        for key, value in refit.items():
            other = single.get(key)
            lines.append(
                f"- {key}: **{fmt(value)}**" + (f"; {fmt(other)}" if other is not None else "")
            )
    return "\n".join(lines)
