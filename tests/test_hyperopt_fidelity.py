"""hyperopt algorithms over an Optuna study propose exactly what ``hyperopt.fmin`` proposes.

With one worker and a fixed seed, a study sampled by ``create_sampler("hyperopt-...")`` must
walk the same sequence of points as ``fmin(..., rstate=np.random.default_rng(seed))`` on the
same space and objective. Both sides evaluate the objective on the decoded parameters, so the
losses, and therefore every later proposal, agree bit for bit.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np
import optuna
import pytest
from hyperopt import Trials, anneal, fmin, rand, tpe
from hyperopt.base import JOB_STATE_DONE, JOB_STATE_RUNNING
from hyperopt.fmin import fmin_pass_expr_memo_ctrl
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from hpo.engines import HyperoptSampler, create_sampler
from hpo.engines._hyperopt_sampler import PROPOSAL_ATTR
from hpo.spaces import SearchSpace, parse_params, suggest
from hpo.spaces._hyperopt import decode, to_hyperopt

Direction = Literal["minimize", "maximize"]
N_TRIALS = 30  # TPE's first 20 are random (n_startup_jobs); the last 10 use the model
SEED = 20240611

ALGOS: dict[str, Callable[..., Any]] = {
    "tpe": tpe.suggest,
    "anneal": anneal.suggest,
    "random": rand.suggest,
}


pytestmark = pytest.mark.usefixtures("quiet_optuna", "sqlite_without_fsync")


def make_space() -> SearchSpace:
    params, issues = parse_params(
        {
            "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "units": {"type": "int", "low": 8, "high": 128, "log": True},
            "layers": {"type": "int", "low": 3, "high": 15, "step": 4},  # 3 is not k*4
            "dropout": {"type": "float", "low": 0.1, "high": 0.5, "step": 0.1},
            "batch_size": 64,
            "optimizer": {
                "type": "categorical",
                "choices": {
                    "adam": {
                        "beta_1": {"type": "float", "low": 0.8, "high": 0.99},
                        "schedule": {
                            "type": "categorical",
                            "choices": {
                                "cosine": {"warmup": {"type": "int", "low": 0, "high": 5}},
                                "step": {"gamma": {"type": "float", "low": 0.1, "high": 0.9}},
                                "none": None,
                            },
                        },
                    },
                    "sgd": {
                        "momentum": {"type": "float", "low": 0.0, "high": 0.9},
                        "nesterov": {"type": "categorical", "choices": [True, False]},
                    },
                    "rmsprop": {"rho": 0.9},  # a branch with only a constant
                },
            },
        }
    )
    assert not issues, issues
    return SearchSpace(params)


def loss(p: Mapping[str, Any]) -> float:
    """Cheap and deterministic, with a clear optimum so that TPE's model matters."""
    value = (math.log10(p["lr"]) + 2.5) ** 2 + (math.log2(p["units"]) - 5) ** 2 / 4
    value += p["layers"] / 10 + (p["dropout"] - 0.3) ** 2
    value += {"adam": 0.0, "sgd": 0.3, "rmsprop": 0.6}[p["optimizer"]]
    value += abs(p.get("optimizer.adam.beta_1", 0.9) - 0.9)
    value += p.get("optimizer.adam.schedule.cosine.warmup", 0) / 20
    value += p.get("optimizer.adam.schedule.step.gamma", 0.0) / 5
    value += p.get("optimizer.sgd.momentum", 0.0) / 3
    value += 0.05 if p.get("optimizer.sgd.nesterov") else 0.0
    return float(value)


def fmin_proposals(
    space: SearchSpace, algo: str, seed: int, suggest_fn: Callable[..., Any] | None = None
) -> list[dict[str, Any]]:
    """What ``hyperopt.fmin`` proposes, decoded to parameters by path name."""

    # The objective decodes hyperopt's own numbers (misc.vals), as our side does.
    @fmin_pass_expr_memo_ctrl  # type: ignore[untyped-decorator]
    def objective(expr: Any, memo: Any, ctrl: Any) -> float:
        return loss(decode(space, ctrl.current_trial["misc"]["vals"]))

    trials = Trials()
    fmin(
        objective,
        to_hyperopt(space),
        algo=suggest_fn or ALGOS[algo],
        max_evals=N_TRIALS,
        trials=trials,
        rstate=np.random.default_rng(seed),
        show_progressbar=False,
    )
    return [decode(space, t["misc"]["vals"]) for t in trials.trials]


def study_proposals(
    space: SearchSpace,
    algo: str,
    seed: int,
    storage: str | None,
    direction: Direction = "minimize",
    budget: int | None = None,
) -> tuple[list[dict[str, Any]], optuna.Study]:
    """What our sampler proposes in a one-worker Optuna study (constants included).

    ``budget`` is the study's ``n_trials`` as a worker passes it (it sizes TPE's random start).
    """
    sampler = create_sampler(
        f"hyperopt-{algo}", space, seed=seed, directions=[direction], n_trials=budget
    )
    study = optuna.create_study(storage=storage, sampler=sampler, direction=direction)
    seen: list[dict[str, Any]] = []
    sign = -1.0 if direction == "maximize" else 1.0

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, space)
        seen.append(params)
        return sign * loss(params)

    study.optimize(objective, n_trials=N_TRIALS)
    return seen, study


def assert_same(expected: list[dict[str, Any]], got: list[dict[str, Any]]) -> None:
    assert len(got) == len(expected)
    for i, (e, g) in enumerate(zip(expected, got, strict=True)):
        assert sorted(g) == sorted(e), f"trial {i}: active parameters differ"
        for name, value in e.items():
            if isinstance(value, float):
                assert math.isclose(g[name], value, rel_tol=1e-12, abs_tol=1e-12), (i, name)
            else:
                assert g[name] == value and type(g[name]) is type(value), (i, name)


@pytest.mark.parametrize("algo", ["tpe", "anneal"])
def test_same_proposals_as_fmin(algo: str, tmp_path: Any) -> None:
    space = make_space()
    expected = fmin_proposals(space, algo, SEED)
    # A file store: proposals go through its JSON and float columns, as with real workers.
    got, study = study_proposals(space, algo, SEED, f"sqlite:///{tmp_path}/s.db")
    assert_same(expected, got)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    # Every branch of the conditional space came up, so the comparison covered it.
    assert {p["optimizer"] for p in got} == {"adam", "sgd", "rmsprop"}
    assert {p.get("optimizer.adam.schedule") for p in got} >= {"cosine", "step", "none"}
    # The proposal is visible on each trial.
    attr = study.trials[0].system_attrs[PROPOSAL_ATTR]
    assert attr["params"] == study.trials[0].params


def test_a_study_budget_shortens_tpe_random_start_as_fmin_would() -> None:
    # A 12-trial study starts TPE's model after max(3, 12 // 4) = 3 random trials instead of
    # hyperopt's 20: the proposals must be fmin's with n_startup_jobs=3, trial for trial.
    import functools

    from hpo.engines import startup_trials

    assert startup_trials("hyperopt-tpe", 12) == 3
    space = make_space()
    got, _ = study_proposals(space, "tpe", SEED, None, budget=12)
    expected = fmin_proposals(space, "tpe", SEED, functools.partial(tpe.suggest, n_startup_jobs=3))
    assert_same(expected, got)
    # And it is not hyperopt's default start: from trial 4 on the two differ.
    default = fmin_proposals(space, "tpe", SEED)
    assert default[:3] == expected[:3] and default[3:] != expected[3:]


def test_random_matches_fmin() -> None:
    space = make_space()
    got, _ = study_proposals(space, "random", 3, None)
    assert_same(fmin_proposals(space, "random", 3), got)
    assert len({p["lr"] for p in got}) == N_TRIALS


def test_maximize_negates_the_loss() -> None:
    # Maximizing -loss must walk exactly the path of fmin minimizing loss; without the
    # negation TPE would model the best trials as the worst and diverge after trial 20.
    space = make_space()
    expected = fmin_proposals(space, "tpe", 5)
    got, study = study_proposals(space, "tpe", 5, None, direction="maximize")
    assert_same(expected, got)
    assert study.best_value == -min(loss(p) for p in expected)
    # And the model does its job: its proposals beat the random start on average.
    values = [t.values[0] for t in study.trials]
    assert np.mean(values[20:]) > np.mean(values[:20])


def test_a_new_worker_proposes_what_the_first_would() -> None:
    # Seeds come from the trial number, so a sampler in another process continues the
    # sequence: 6 trials by one sampler == 5 by one and the 6th by a fresh one.
    space = make_space()
    storage = optuna.storages.InMemoryStorage()  # shared, as a database is between processes

    def run(sampler: HyperoptSampler, name: str, n: int) -> optuna.Study:
        study = optuna.create_study(
            study_name=name, storage=storage, sampler=sampler, load_if_exists=True
        )
        study.optimize(lambda t: loss(suggest(t, space)), n_trials=n)
        return study

    one = run(HyperoptSampler(space, "anneal", 11, "minimize"), "one", 6)
    run(HyperoptSampler(space, "anneal", 11, "minimize"), "two", 5)
    two = run(HyperoptSampler(space, "anneal", 11, "minimize"), "two", 1)
    assert [t.params for t in one.trials] == [t.params for t in two.trials]


def test_parallel_workers_see_running_trials_as_pending() -> None:
    # Past TPE's start-up, three trials asked before any is told (three workers): each sees
    # the ones running as pending jobs and all three proposals are valid and distinct.
    space = make_space()
    sampler = create_sampler("hyperopt-tpe", space, seed=2, directions=["minimize"])
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: loss(suggest(t, space)), n_trials=22)
    running = [study.ask() for _ in range(3)]
    params = [suggest(t, space) for t in running]
    assert len({p["lr"] for p in params}) == 3
    assert isinstance(sampler, HyperoptSampler)
    history = sampler._history(study, running[2]._cached_frozen_trial)
    pending = [d["tid"] for d in history.trials if d["state"] == JOB_STATE_RUNNING]
    assert pending == [running[0].number, running[1].number]
    for trial, p in zip(running, params, strict=True):
        study.tell(trial, loss(p))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 25


def test_trial_seeds_are_those_fmin_draws() -> None:
    sampler = HyperoptSampler(make_space(), "tpe", seed=9)
    rstate = np.random.default_rng(9)
    draws = [int(rstate.integers(2**31 - 1)) for _ in range(5)]
    assert [sampler.trial_seed(n) for n in (4, 0, 1, 2, 3)] == [draws[4], *draws[:4]]


def _history_study(direction: Direction) -> tuple[optuna.Study, HyperoptSampler, SearchSpace]:
    params, _ = parse_params({"x": {"type": "float", "low": 0.0, "high": 1.0}})
    space = SearchSpace(params)
    sampler = HyperoptSampler(space, "tpe", seed=0, direction=direction)
    study = optuna.create_study(direction=direction, sampler=sampler)
    dist: dict[str, BaseDistribution] = {"x": FloatDistribution(0.0, 1.0)}
    study.add_trial(create_trial(params={"x": 0.1}, distributions=dist, value=0.5))
    study.add_trial(
        create_trial(
            state=TrialState.PRUNED,
            params={"x": 0.2},
            distributions=dist,
            intermediate_values={1: 0.9, 3: 0.7, 2: 0.8},
        )
    )
    study.add_trial(create_trial(state=TrialState.FAIL, params={"x": 0.3}, distributions=dist))
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"x": 0.4}, distributions=dist))
    return study, sampler, space


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_history_given_to_hyperopt(direction: Direction) -> None:
    study, sampler, _ = _history_study(direction)
    running = study.ask()  # proposes, and stores the proposal; it is another worker's trial
    current = study.ask()
    history = sampler._history(study, current._cached_frozen_trial)
    by_tid = {d["tid"]: d for d in history.trials}
    sign = -1.0 if direction == "maximize" else 1.0
    # Complete: its value; pruned: its last reported value (by step, not by insertion);
    # failed and pruned-without-reports: left out; running: a pending job, as in hyperopt.
    assert sorted(by_tid) == [0, 1, running.number]
    assert by_tid[0]["result"] == {"loss": sign * 0.5, "status": "ok"}
    assert by_tid[1]["result"] == {"loss": sign * 0.7, "status": "ok"}
    assert by_tid[0]["state"] == by_tid[1]["state"] == JOB_STATE_DONE
    assert by_tid[running.number]["state"] == JOB_STATE_RUNNING
    assert "loss" not in by_tid[running.number]["result"]
    assert by_tid[1]["misc"]["vals"] == {"x": [0.2]}
    assert by_tid[1]["misc"]["idxs"] == {"x": [1]}


def test_enqueued_and_foreign_parameters() -> None:
    space = make_space()
    sampler = create_sampler("hyperopt-tpe", space, seed=0, directions=["minimize"])
    study = optuna.create_study(sampler=sampler)
    fixed = {"lr": 0.01, "units": 32, "layers": 7, "dropout": 0.2, "optimizer": "rmsprop"}
    study.enqueue_trial(fixed)
    study.optimize(lambda t: loss(suggest(t, space)), n_trials=3)
    assert study.trials[0].params == fixed
    assert all(t.state == TrialState.COMPLETE for t in study.trials)


def test_unknown_parameter_falls_back_to_random(caplog: pytest.LogCaptureFixture) -> None:
    space = make_space()
    sampler = create_sampler("hyperopt-random", space, seed=0, directions=["minimize"])
    study = optuna.create_study(sampler=sampler)

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_categorical("extra", ["a", "b"])
        # In the space, but asked with a range that hyperopt's value is outside of.
        return trial.suggest_float("lr", 10.0, 20.0)

    with caplog.at_level(logging.WARNING, logger="hpo.engines._hyperopt_sampler"):
        study.optimize(objective, n_trials=2)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert all(10.0 <= t.params["lr"] <= 20.0 for t in study.trials)
    messages = [r.getMessage() for r in caplog.records]
    assert any("'extra'" in m and "not in the search space" in m for m in messages)
    assert any("'lr'" in m and "is not in FloatDistribution" in m for m in messages)
    assert sum("'extra'" in m for m in messages) == 1  # once per name, not per trial


def test_multi_objective_is_refused() -> None:
    space = make_space()
    with pytest.raises(ValueError, match="one objective"):
        create_sampler("hyperopt-tpe", space, seed=0, directions=["minimize", "maximize"])
    sampler = HyperoptSampler(space, "tpe", seed=0)
    study = optuna.create_study(directions=["minimize", "maximize"], sampler=sampler)
    with pytest.raises(ValueError, match="one objective"):
        study.ask()
    study = optuna.create_study(direction="maximize", sampler=sampler)
    with pytest.raises(ValueError, match="direction"):
        study.ask()
