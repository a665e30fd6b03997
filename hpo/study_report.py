"""What a finished study leaves in MLflow: Optuna's plots and the best trial's summary."""

from __future__ import annotations

import io
import json
import logging
from typing import TYPE_CHECKING, Any

from hpo import tracking
from hpo.studies import RUN_ID_ATTR, StudyConfig, counted_trials

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

log = logging.getLogger("hpo.report")


def best_trial_summary(storage: BaseStorage, config: StudyConfig) -> dict[str, Any] | None:
    """Number, values, params and MLflow run of the best trial (None before any completes)."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=config.name, storage=storage)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        return None
    best = study.best_trials if len(study.directions) > 1 else [study.best_trial]
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


def study_plots(storage: BaseStorage, config: StudyConfig) -> dict[str, bytes]:
    """Optuna's optimization history, parameter importances and parallel coordinates (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    from optuna.visualization import matplotlib as ovm

    study = optuna.load_study(study_name=config.name, storage=storage)
    spec = config.spec()
    target = (lambda t: t.values[0]) if spec.multi_objective else None
    name = spec.metrics[0]
    plots: dict[str, bytes] = {}
    makers = {
        "optimization_history.png": lambda: ovm.plot_optimization_history(
            study, target=target, target_name=name
        ),
        "param_importances.png": lambda: ovm.plot_param_importances(
            study, target=target, target_name=name
        ),
        "parallel_coordinate.png": lambda: ovm.plot_parallel_coordinate(
            study, target=target, target_name=name
        ),
    }
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

    c = tracking.client(config.tracking_uri)
    study = optuna.load_study(study_name=config.name, storage=storage)
    trials = counted_trials(study.get_trials(deepcopy=False))
    states = [t.state.name for t in trials]
    tracking.log_metrics(
        c,
        config.parent_run_id,
        {
            "trials_complete": states.count("COMPLETE"),
            "trials_pruned": states.count("PRUNED"),
            "trials_failed": states.count("FAIL"),
        },
        step=0,
    )
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
    if files:
        tracking.log_artifact_files(c, config.parent_run_id, files)
    tracking.end_dangling_runs(config.tracking_uri, config.experiment_id, config.parent_run_id)
    c.set_terminated(config.parent_run_id, "FINISHED")
