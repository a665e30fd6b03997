"""What a finished study leaves in MLflow: Optuna's plots and the best trial's summary."""

from __future__ import annotations

import io
import json
import logging
from typing import TYPE_CHECKING, Any

from hpo import tracking
from hpo.storage.status import study_status
from hpo.storage.studies import RUN_ID_ATTR, StudyConfig, counted_trials
from hpo.storage.unread_params import unread_params

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

log = logging.getLogger("hpo.report")


def best_trial_summary(storage: BaseStorage, config: StudyConfig) -> dict[str, Any] | None:
    """Number, values, params and MLflow run of the best feasible trial (None before one
    completes and meets the space's constraints)."""
    import optuna

    from hpo.storage.feasibility import best_trials

    best = best_trials(optuna.load_study(study_name=config.name, storage=storage))
    if not best:
        return None
    return {
        "best_trials": [
            {
                "number": t.number,
                "values": t.values,
                "params": t.params,
                "mlflow_run_id": t.user_attrs.get(RUN_ID_ATTR),
                "params_count": t.user_attrs.get("params_count"),
                "epochs": t.user_attrs.get("epochs"),
            }
            for t in best
        ]
    }


def _figure_png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    figure = fig.figure if hasattr(fig, "figure") else fig
    if hasattr(figure, "savefig"):
        buf = io.BytesIO()
        figure.tight_layout()
        figure.savefig(buf, format="png", dpi=80)
        plt.close(figure)
        return buf.getvalue()
    raise TypeError("not a matplotlib figure")


# Importances from a handful of trials are noise (Optuna's default evaluator, PED-ANOVA, ranks
# the trials of the best quantile against the rest).
IMPORTANCE_MIN_TRIALS = 5


def study_plots(storage: BaseStorage, config: StudyConfig) -> dict[str, bytes]:
    """Optuna's optimization history, parallel coordinates and, from
    :data:`IMPORTANCE_MIN_TRIALS` complete trials on, parameter importances (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    study = optuna.load_study(study_name=config.name, storage=storage)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    spec = config.spec()
    target = (lambda t: t.values[0]) if spec.multi_objective else None
    name = spec.metrics[0]
    plots: dict[str, bytes] = {}
    makers = {
        "optimization_history.png": lambda: ovm.plot_optimization_history(
            study, target=target, target_name=name
        ),
        "parallel_coordinate.png": lambda: ovm.plot_parallel_coordinate(
            study, target=target, target_name=name
        ),
    }
    if len(complete) >= IMPORTANCE_MIN_TRIALS:
        makers["param_importances.png"] = lambda: ovm.plot_param_importances(
            study, target=target, target_name=name
        )
    else:
        log.info("no param_importances.png: %d complete trial(s)", len(complete))
    import warnings

    for filename, make in makers.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                plots[filename] = _figure_png(make())
        except Exception as exc:  # too few trials for a plot is normal early on
            log.info("no %s: %s", filename, exc)
    del optuna
    return plots


def finalize_study(storage: BaseStorage, config: StudyConfig) -> None:
    """Attach plots and the best trial to the study run, end it and any run left RUNNING."""
    if not (config.tracking_uri and config.experiment_id and config.parent_run_id):
        return
    import optuna

    from hpo.storage.feasibility import infeasible_count

    c = tracking.client(config.tracking_uri)
    study = optuna.load_study(study_name=config.name, storage=storage)
    trials = counted_trials(study.get_trials(deepcopy=False))
    states = [t.state.name for t in trials]
    constrained = bool(config.spec().constraints)
    tracking.log_metrics(
        c,
        config.parent_run_id,
        {
            "trials_complete": states.count("COMPLETE"),
            "trials_pruned": states.count("PRUNED"),
            "trials_failed": states.count("FAIL"),
            **({"trials_infeasible": infeasible_count(trials)} if constrained else {}),
        },
        step=0,
    )
    ended = study_status(storage, config.name).end_reason
    if ended:  # the trial budget was used, or the study's deadline came first
        c.set_tag(config.parent_run_id, "hpo.end_reason", ended)
    unread = unread_params(t for t in trials if t.state.name == "COMPLETE")
    if unread:  # parameters searched for nothing: a misspelled key, most often
        c.set_tag(config.parent_run_id, "hpo.unread_params", ", ".join(unread))
    files: dict[str, Any] = dict(study_plots(storage, config))
    summary = best_trial_summary(storage, config)
    if summary:
        files["best_trial.json"] = json.dumps(summary, indent=1, default=str).encode()
        best = summary["best_trials"][0]
        c.set_tag(config.parent_run_id, "hpo.best_trial", str(best["number"]))
        if best["mlflow_run_id"]:
            c.set_tag(config.parent_run_id, "hpo.best_run_id", best["mlflow_run_id"])
        values = {
            f"best_{m}": v for m, v in zip(config.spec().metrics, best["values"], strict=True)
        }
        tracking.log_metrics(c, config.parent_run_id, values, step=0)
    files.update(_pareto_grid(storage, config))
    if files:
        tracking.log_artifact_files(c, config.parent_run_id, files)
    from hpo.tracking.notes import update_study_note

    update_study_note(storage, config)
    tracking.end_dangling_runs(config.tracking_uri, config.experiment_id, config.parent_run_id)
    try:
        apply_retention_policy(storage, config)
    except Exception as exc:  # the files stay; `hpo study retain` can apply it later
        log.warning("study %s: retention not applied: %s", config.name, exc)
    c.set_terminated(config.parent_run_id, "FINISHED")


def apply_retention_policy(storage: BaseStorage, config: StudyConfig) -> None:
    """The space's ``retention: {keep_best: K}``, applied once the study's last trial is
    recorded (never before: a build of an ensemble from a running study may still be reading
    the files of trials outside the best K). Its result is logged on the study's run."""
    policy = config.spec().retention
    if policy is None or not config.parent_run_id:
        return
    from hpo.tracking.retention import retain

    report = retain(storage, config, policy.keep_best)
    c = tracking.client(config.tracking_uri or "")
    tracking.log_metrics(
        c,
        config.parent_run_id,
        {"retention_freed_bytes": report.bytes_freed, "retention_kept_bytes": report.bytes_kept},
        step=0,
    )
    c.set_tag(
        config.parent_run_id,
        "hpo.retention",
        f"keep_best {policy.keep_best}: model files of trials {report.removed_trials} deleted"[
            :5000
        ],
    )
    if report.problems:
        log.warning("study %s: retention: %s", config.name, "; ".join(report.problems))


def _pareto_grid(storage: BaseStorage, config: StudyConfig) -> dict[str, bytes]:
    """The Pareto grid of generated images, for a study with several objectives whose family
    generates one image per trial (``style_transfer``); nothing otherwise."""
    from hpo.tracking.pareto import PARETO_GRID_FILE, ParetoError, pareto_grid_png, pareto_images

    if not config.spec().multi_objective:
        return {}
    try:
        return {PARETO_GRID_FILE: pareto_grid_png(pareto_images(storage, config))}
    except ParetoError as exc:
        log.info("no %s: %s", PARETO_GRID_FILE, exc)
    except Exception as exc:  # a picture must not keep the study's run from ending
        log.warning("no %s: %s: %s", PARETO_GRID_FILE, type(exc).__name__, exc)
    return {}


def report_by(storage: BaseStorage, config: StudyConfig, param: str) -> list[dict[str, Any]]:
    """Per value of ``param``: trials, best and median objective, median epoch time and size.

    Answers questions such as "does SeparableConv2D train faster than Conv2D, and how
    accurate is it?". Objective statistics use complete trials that meet the study's
    constraints (as ``best`` does); trial counts include pruned, failed and infeasible ones.
    Trials where ``param`` is inactive (a conditional branch not taken) are grouped under
    ``(inactive)``.

    Example (a sketch):
        >>> # report_by(store, load_config(store, "image_cnn"), "conv_type")
    """
    import numpy as np
    import optuna
    from optuna.trial import TrialState

    from hpo.storage.feasibility import is_feasible

    study = optuna.load_study(study_name=config.name, storage=storage)
    spec = config.spec()
    known = set(spec.space.names())
    if param not in known:
        raise ValueError(
            f"{param!r} is not a parameter of study {config.name!r}; "
            f"parameters: {', '.join(sorted(known))}"
        )
    maximize = spec.directions[0] == "maximize"
    groups: dict[str, list[Any]] = {}
    for t in counted_trials(study.get_trials(deepcopy=False)):
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            continue
        key = str(t.params[param]) if param in t.params else "(inactive)"
        groups.setdefault(key, []).append(t)

    def median(values: list[float]) -> float | None:
        return float(np.median(values)) if values else None

    rows = []
    for value, trials in sorted(groups.items()):
        objective = [
            t.values[0] for t in trials if t.state == TrialState.COMPLETE and is_feasible(t)
        ]
        epoch_s = [
            float(t.user_attrs["epoch_seconds_median"])
            for t in trials
            if "epoch_seconds_median" in t.user_attrs
        ]
        sizes = [
            float(t.user_attrs["params_count"]) for t in trials if "params_count" in t.user_attrs
        ]
        best = (max(objective) if maximize else min(objective)) if objective else None
        rows.append(
            {
                "value": value,
                "trials": len(trials),
                "complete": sum(t.state == TrialState.COMPLETE for t in trials),
                "pruned": sum(t.state == TrialState.PRUNED for t in trials),
                "failed": sum(t.state == TrialState.FAIL for t in trials),
                "infeasible": sum(not is_feasible(t) for t in trials),
                f"best_{spec.metrics[0]}": best,
                f"median_{spec.metrics[0]}": median(objective),
                "median_epoch_seconds": median(epoch_s),
                "median_params_count": median(sizes),
            }
        )
    return rows


def report_by_png(rows: list[dict[str, Any]], param: str, metric: str) -> bytes:
    """Bar charts of the :func:`report_by` rows: best/median objective, epoch time, size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["value"] for r in rows]
    panels = [
        (f"{metric} (best / median)", [f"best_{metric}", f"median_{metric}"]),
        ("median seconds per epoch", ["median_epoch_seconds"]),
        ("median parameter count", ["median_params_count"]),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, (title, keys) in zip(axes, panels, strict=True):
        width = 0.8 / len(keys)
        for i, key in enumerate(keys):
            values = [r[key] if r[key] is not None else 0.0 for r in rows]
            ax.bar([x + i * width for x in range(len(rows))], values, width, label=key)
        ax.set_xticks([x + width * (len(keys) - 1) / 2 for x in range(len(rows))], labels)
        ax.set_title(title)
        ax.set_xlabel(param)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()
