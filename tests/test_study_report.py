"""The plots a finished study attaches to its MLflow run (hpo.tracking.study_report.study_plots)."""

from __future__ import annotations

import pytest

from conftest import REPO

SPACE = REPO / "search_spaces" / "dense_bn_digits.yaml"


@pytest.mark.parametrize(("complete", "importances"), [(2, False), (5, True)])
def test_param_importances_only_from_enough_complete_trials(
    complete: int, importances: bool, quiet_optuna: None
) -> None:
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution

    from hpo.storage.studies import StudyConfig, create_study
    from hpo.tracking.study_report import IMPORTANCE_MIN_TRIALS, study_plots

    storage = optuna.storages.InMemoryStorage()
    config = StudyConfig(
        name="plots", source=SPACE.read_text(), filename=SPACE.name,
        algorithm="optuna-random", pruner="none", n_trials=complete + 1,
    )  # fmt: skip
    study = create_study(storage, config)
    dists = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "units": IntDistribution(8, 64)}
    for i in range(complete):
        params = {"lr": 10 ** -(1 + i % 3), "units": 8 + 7 * i}
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=dists, value=0.5 + 0.1 * i)
        )
    # A failed trial: counted by nobody's importances, and no reason to skip a plot.
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))

    plots = study_plots(storage, config)

    assert {"optimization_history.png", "parallel_coordinate.png"} <= set(plots)
    assert ("param_importances.png" in plots) == importances
    assert (complete >= IMPORTANCE_MIN_TRIALS) == importances
    assert all(png.startswith(b"\x89PNG") for png in plots.values())
