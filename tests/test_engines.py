"""Samplers and pruners by name: every algorithm runs, grids enumerate, pruners prune."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import optuna
import pytest
from optuna.trial import TrialState

from hpo.engines import ALGORITHMS, PRUNERS, HyperoptSampler, create_pruner, create_sampler
from hpo.engines._hyperband import SharedHistoryHyperband
from hpo.spaces import BudgetSpec, SearchSpace, parse_params, suggest

Direction = Literal["minimize", "maximize"]
SINGLE = [name for name in ALGORITHMS if name != "optuna-nsga2"]
MULTI = [name for name, info in ALGORITHMS.items() if info.multi_objective]


pytestmark = pytest.mark.usefixtures("quiet_optuna", "sqlite_without_fsync")


def space_of(raw: dict[str, Any]) -> SearchSpace:
    params, issues = parse_params(raw)
    assert not issues, issues
    return SearchSpace(params)


# A conditional space, and a discrete one (3 * (2 + 1 + 1) = 12 active configurations).
CONDITIONAL = space_of(
    {
        "x": {"type": "float", "low": -2.0, "high": 2.0},
        "n": {"type": "int", "low": 1, "high": 8},
        "lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
        "kind": {
            "type": "categorical",
            "choices": {"a": {"y": {"type": "float", "low": 0.0, "high": 1.0}}, "b": None},
        },
        "epochs": 3,
    }
)
DISCRETE = space_of(
    {
        "x": {"type": "float", "low": -0.5, "high": 0.5, "step": 0.5},
        "kind": {
            "type": "categorical",
            "choices": {"a": {"y": {"type": "int", "low": 1, "high": 2}}, "b": None, "c": None},
        },
    }
)


def objective_for(space: SearchSpace, n_objectives: int = 1) -> Any:
    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
        p = suggest(trial, space)
        first = p["x"] ** 2 + p.get("n", 0) / 10 + p.get("kind.a.y", 0.5)
        return first if n_objectives == 1 else (first, (p["x"] - 1) ** 2)

    return objective


def run(
    algorithm: str,
    space: SearchSpace,
    n_trials: int,
    storage: Any = None,
    seed: int | None = 0,
    directions: tuple[Direction, ...] = ("minimize",),
) -> optuna.Study:
    sampler = create_sampler(algorithm, space, seed=seed, directions=list(directions))
    study = optuna.create_study(storage=storage, sampler=sampler, directions=list(directions))
    study.optimize(objective_for(space, len(directions)), n_trials=n_trials)
    return study


def complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(TrialState.COMPLETE,))


# -- samplers ---------------------------------------------------------------------------------


# optuna-gp fits a Gaussian process in PyTorch for its proposal: the slow tier.
@pytest.mark.parametrize(
    "algorithm",
    [pytest.param(a, marks=pytest.mark.slow) if a == "optuna-gp" else a for a in SINGLE],
)
def test_every_algorithm_runs(algorithm: str, tmp_path: Path) -> None:
    space = DISCRETE if ALGORITHMS[algorithm].needs_discrete_space else CONDITIONAL
    # optuna-gp models from trial 11 on (10 random start-up trials); one proposal covers it.
    n_trials = 11 if algorithm == "optuna-gp" else 8
    study = run(algorithm, space, n_trials, storage=f"sqlite:///{tmp_path}/s.db")
    assert len(complete(study)) == len(study.trials) == n_trials
    for t in study.trials:
        # The stored parameters are exactly the active ones of one configuration.
        fixed: Any = optuna.trial.FixedTrial(t.params)
        assert set(suggest(fixed, space)) - {"epochs"} == set(t.params)


@pytest.mark.parametrize("algorithm", MULTI)
def test_multi_objective_algorithms(algorithm: str) -> None:
    space = DISCRETE if ALGORITHMS[algorithm].needs_discrete_space else CONDITIONAL
    study = run(algorithm, space, 10, directions=("minimize", "minimize"))
    assert len(complete(study)) == 10
    assert study.best_trials


@pytest.mark.parametrize("algorithm", [a for a in SINGLE if a not in MULTI])
def test_single_objective_algorithms_refuse_two(algorithm: str) -> None:
    with pytest.raises(ValueError, match="optimizes one objective"):
        create_sampler(algorithm, CONDITIONAL, seed=0, directions=["minimize", "maximize"])


def test_sampler_types_and_settings() -> None:
    def make(name: str) -> Any:
        return create_sampler(name, CONDITIONAL, seed=1, directions=["minimize"])

    tpe = make("optuna-tpe")
    assert isinstance(tpe, optuna.samplers.TPESampler)
    assert tpe._multivariate and tpe._group and tpe._constant_liar
    cmaes = make("optuna-cmaes")
    assert isinstance(cmaes, optuna.samplers.CmaEsSampler)
    assert isinstance(cmaes._independent_sampler, optuna.samplers.TPESampler)
    assert not cmaes._warn_independent_sampling
    assert isinstance(make("optuna-gp"), optuna.samplers.GPSampler)
    assert isinstance(make("optuna-random"), optuna.samplers.RandomSampler)
    assert isinstance(make("optuna-nsga2"), optuna.samplers.NSGAIISampler)
    grid = create_sampler("optuna-grid", DISCRETE, seed=1, directions=["minimize"])
    assert isinstance(grid, optuna.samplers.GridSampler)
    for algo in ("tpe", "anneal", "random"):
        sampler = make(f"hyperopt-{algo}")
        assert isinstance(sampler, HyperoptSampler) and sampler._algo_name == algo


def test_unknown_algorithm() -> None:
    with pytest.raises(ValueError, match="unknown algorithm 'optuna-bogus'; known: optuna-tpe"):
        create_sampler("optuna-bogus", CONDITIONAL, seed=0, directions=["minimize"])


def test_gp_without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    with pytest.raises(RuntimeError, match=r"optuna-gp needs PyTorch: pip install 'hpo\[gp\]'"):
        create_sampler("optuna-gp", CONDITIONAL, seed=0, directions=["minimize"])


@pytest.mark.parametrize("algorithm", ["optuna-tpe", "hyperopt-tpe"])
def test_seed_makes_a_study_reproducible(algorithm: str) -> None:
    # 12 trials: past optuna-tpe's 10 random start-up trials.
    first = [t.params for t in run(algorithm, CONDITIONAL, 12, seed=123).trials]
    again = [t.params for t in run(algorithm, CONDITIONAL, 12, seed=123).trials]
    other = [t.params for t in run(algorithm, CONDITIONAL, 12, seed=124).trials]
    assert first == again
    assert first != other


# -- grid -------------------------------------------------------------------------------------


def test_grid_enumerates_a_product_space() -> None:
    space = space_of(
        {
            "units": {"type": "int", "low": 16, "high": 64, "step": 16},
            "act": {"type": "categorical", "choices": ["relu", "tanh"]},
            "batch_size": 32,
        }
    )
    sampler = create_sampler("optuna-grid", space, seed=0, directions=["minimize"])
    study = optuna.create_study(sampler=sampler)
    # The sampler stops the study when the grid is done.
    study.optimize(lambda t: suggest(t, space)["units"] / 10, n_trials=100)
    got = sorted((t.params["units"], t.params["act"]) for t in study.trials)
    assert got == sorted((u, a) for u in (16, 32, 48, 64) for a in ("relu", "tanh"))


def test_grid_enumerates_active_configurations_of_a_conditional_space() -> None:
    # A product over all branches would have 3 * 2 * 3 = 18 points, each active configuration
    # repeated; the conditional grid has the 3 * (2 + 1 + 1) = 12 distinct ones.
    study = run("optuna-grid", DISCRETE, 100)
    got = sorted(tuple(sorted(t.params.items())) for t in study.trials)
    expected = sorted(
        tuple(sorted({"x": x, "kind": k, **({"kind.a.y": y} if y else {})}.items()))
        for x in (-0.5, 0.0, 0.5)
        for k, ys in (("a", (1, 2)), ("b", (None,)), ("c", (None,)))
        for y in ys
    )
    assert got == expected
    assert all(t.state == TrialState.COMPLETE for t in study.trials)


def test_conditional_grid_with_two_workers(tmp_path: Path) -> None:
    # Two samplers on one store, trials interleaved: the points are shared out, none twice.
    # Workers get different seeds (hpo's workers do): they must still agree on the points.
    storage = f"sqlite:///{tmp_path}/s.db"
    studies = [
        optuna.create_study(
            study_name="grid",
            storage=storage,
            load_if_exists=True,
            sampler=create_sampler("optuna-grid", DISCRETE, seed=seed, directions=["minimize"]),
        )
        for seed in (0, 1)
    ]
    objective = objective_for(DISCRETE)
    for _ in range(6):
        trials = [study.ask() for study in studies]
        # The last tell finishes the grid; GridSampler would call Study.stop(), which raises
        # outside study.optimize(). Workers ask and tell, so it must not.
        for study, trial in zip(studies, trials, strict=True):
            study.tell(trial, objective(trial))
    seen = [tuple(sorted(t.params.items())) for t in studies[0].trials]
    assert len(seen) == len(set(seen)) == 12
    assert all(t.state == TrialState.COMPLETE for t in studies[0].trials)
    sampler = studies[1].sampler
    assert isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(studies[1])


def test_grid_needs_a_discrete_space() -> None:
    with pytest.raises(ValueError, match="needs a step"):
        create_sampler("optuna-grid", CONDITIONAL, seed=0, directions=["minimize"])


# -- pruners ----------------------------------------------------------------------------------


def test_pruner_types_and_settings() -> None:
    budget = BudgetSpec(max_epochs=27, min_epochs=2)
    assert isinstance(create_pruner("none", budget), optuna.pruners.NopPruner)
    median = create_pruner("median", budget)
    assert isinstance(median, optuna.pruners.MedianPruner)
    assert (median._n_startup_trials, median._n_warmup_steps) == (5, 2)
    sha = create_pruner("sha", budget)
    assert isinstance(sha, optuna.pruners.SuccessiveHalvingPruner)
    assert (sha._min_resource, sha._reduction_factor) == (2, 3)
    hyperband = create_pruner("hyperband", budget)
    assert isinstance(hyperband, SharedHistoryHyperband)
    inner = hyperband.hyperband
    assert (inner._min_resource, inner._max_resource, inner._reduction_factor) == (2, 27, 3)
    # The space's budget sets how many trials each rung keeps (1/reduction_factor).
    aggressive = BudgetSpec(max_epochs=27, min_epochs=1, reduction_factor=4)
    assert create_pruner("sha", aggressive)._reduction_factor == 4  # type: ignore[attr-defined]
    inner = create_pruner("hyperband", aggressive).hyperband  # type: ignore[attr-defined]
    assert (inner._min_resource, inner._max_resource, inner._reduction_factor) == (1, 27, 4)


def test_unknown_pruner() -> None:
    with pytest.raises(ValueError, match="unknown pruner 'asha'; known: none, median, sha"):
        create_pruner("asha", BudgetSpec(max_epochs=3))
    assert set(PRUNERS) == {"none", "median", "sha", "hyperband"}


def scripted(name: str, budget: BudgetSpec, bad: float) -> list[bool]:
    """6 good trials report every epoch, then one reporting ``bad``: its should_prune()s."""
    study = optuna.create_study(study_name="scripted", pruner=create_pruner(name, budget))
    for value in (1.0, 1.1, 1.2, 1.3, 1.4, 1.5):
        trial = study.ask()
        for epoch in range(1, budget.max_epochs + 1):
            trial.report(value, epoch)
            trial.should_prune()  # halving pruners record rungs here; the decision is ignored
        study.tell(trial, value)
    trial = study.ask()
    decisions = []
    for epoch in range(1, budget.max_epochs + 1):
        trial.report(bad, epoch)
        decisions.append(bool(trial.should_prune()))
    return decisions


def test_median_pruner_stops_a_bad_trial_after_warm_up() -> None:
    budget = BudgetSpec(max_epochs=4, min_epochs=2)
    # Epoch 1 is warm-up; from epoch min_epochs on the bad trial is stopped.
    assert scripted("median", budget, bad=10.0) == [False, True, True, True]
    assert scripted("median", budget, bad=0.5) == [False] * 4


@pytest.mark.parametrize("name", ["sha", "hyperband"])
def test_halving_pruners_stop_a_bad_trial(name: str) -> None:
    budget = BudgetSpec(max_epochs=9, min_epochs=1)
    assert any(scripted(name, budget, bad=10.0))
    assert not any(scripted(name, budget, bad=0.5))


def test_none_never_prunes() -> None:
    assert scripted("none", BudgetSpec(max_epochs=3), bad=10.0) == [False] * 3


class _SeenSampler(optuna.samplers.RandomSampler):
    """Random proposals; records how many finished trials the sampler was shown each time."""

    def __init__(self) -> None:
        super().__init__(seed=0)
        self.seen: list[tuple[int, int]] = []  # (trial number, finished trials shown)

    def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
        shown = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        self.seen.append((trial.number, len(shown)))
        return super().sample_independent(study, trial, name, distribution)


def _hyperband_study(pruner: optuna.pruners.BasePruner) -> tuple[list[list[bool]], _SeenSampler]:
    """20 trials of scripted curves: each trial's should_prune()s, and what its sampler saw."""
    sampler = _SeenSampler()
    study = optuna.create_study(study_name="hb-seen", sampler=sampler, pruner=pruner)
    decisions = []
    for number in range(20):
        trial = study.ask()
        trial.suggest_float("x", 0.0, 1.0)
        value = 1.0 + ((number * 7) % 11) / 10  # minimize: a fixed, scrambled order of quality
        mine = []
        for epoch in range(1, 10):
            trial.report(value + 1 / epoch, epoch)
            mine.append(bool(trial.should_prune()))
            if mine[-1]:
                break
        decisions.append(mine)
        if mine[-1]:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, value)
    return decisions, sampler


def test_hyperband_prunes_as_optunas_but_the_sampler_sees_every_trial() -> None:
    budget = BudgetSpec(max_epochs=9, min_epochs=1)
    ours, ours_seen = _hyperband_study(create_pruner("hyperband", budget))
    optunas, optunas_seen = _hyperband_study(
        optuna.pruners.HyperbandPruner(min_resource=1, max_resource=9, reduction_factor=3)
    )
    assert ours == optunas  # the same brackets, rungs and decisions
    assert any(d[-1] for d in ours)  # and some trials were pruned
    # Trial n is proposed from all n finished trials before it; Optuna's shows its bracket's.
    assert ours_seen.seen == [(n, n) for n in range(20)]
    assert any(shown < n for n, shown in optunas_seen.seen)


@pytest.mark.parametrize("algorithm", ["hyperopt-tpe", "optuna-tpe"])
def test_a_study_with_hyperband_prunes(algorithm: str) -> None:
    space = CONDITIONAL
    sampler = create_sampler(algorithm, space, seed=0, directions=["minimize"])
    study = optuna.create_study(
        study_name="hb",
        sampler=sampler,
        pruner=create_pruner("hyperband", BudgetSpec(max_epochs=9, min_epochs=1)),
    )

    def objective(trial: optuna.Trial) -> float:
        p = suggest(trial, space)
        value = float(p["x"] ** 2)
        for epoch in range(1, 10):
            trial.report(value + 1 / epoch, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    study.optimize(objective, n_trials=25)
    states = [t.state for t in study.trials]
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states


# -- packaging --------------------------------------------------------------------------------


def test_import_is_light() -> None:
    # The CLI imports hpo.engines for its names; --help must not pay for Optuna or hyperopt.
    code = (
        "import sys, hpo.engines\n"
        "heavy = {m.split('.')[0] for m in sys.modules} & {'optuna', 'hyperopt', 'torch'}\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_hyperopt_sampler_is_exported_lazily() -> None:
    import hpo.engines

    assert hpo.engines.HyperoptSampler is HyperoptSampler
    assert "HyperoptSampler" in hpo.engines.__all__
    with pytest.raises(AttributeError):
        hpo.engines.NoSuchThing  # noqa: B018


@pytest.mark.parametrize(("n_trials", "expected"), [(10, 5), (24, 6), (400, 10), (None, 10)])
def test_tpe_starts_with_a_quarter_of_the_budget_as_random_trials(
    n_trials: int | None, expected: int
) -> None:
    def proposals(budget: int | None) -> list[dict[str, Any]]:
        sampler = create_sampler(
            "optuna-tpe", CONDITIONAL, seed=0, directions=["minimize"], n_trials=budget
        )
        study = optuna.create_study(sampler=sampler)
        study.optimize(objective_for(CONDITIONAL, 1), n_trials=expected + 1)
        return [t.params for t in study.trials]

    sampler = create_sampler(
        "optuna-tpe", CONDITIONAL, seed=0, directions=["minimize"], n_trials=n_trials
    )
    assert sampler._n_startup_trials == expected  # type: ignore[attr-defined]
    # The same random draws as with Optuna's 10 random trials, then the model's proposal.
    got, all_random = proposals(n_trials), proposals(None)
    assert got[:expected] == all_random[:expected]
    if expected < 10:
        assert got[expected] != all_random[expected]
