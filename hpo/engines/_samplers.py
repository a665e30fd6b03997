"""Build the Optuna sampler of an algorithm name (see :data:`hpo.engines.ALGORITHMS`)."""

from __future__ import annotations

import contextlib
import functools
import itertools
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hpo._registry import import_object
from hpo.catalog import ALGORITHMS, call_factory, check_allowed, is_user_target
from hpo.spaces._params import CategoricalParam, ConstantParam, Param, join_path

if TYPE_CHECKING:
    import optuna

    from hpo.spaces import SearchSpace


#: Random trials each model-based algorithm starts with when the budget is unknown: its
#: engine's own default (Optuna's ``n_startup_trials``, hyperopt's ``n_startup_jobs``).
ENGINE_STARTUP_TRIALS = {"optuna-tpe": 10, "optuna-gp": 10, "hyperopt-tpe": 20}

#: The fewest random trials an algorithm starts with, whatever the budget (3 if not listed).
#: Optuna's TPE gets 5: with 3, at a budget of 10 it found worse than random search (-0.44
#: points of the best simulated accuracy, 300 seeds), with 5 better (+0.21), in
#: bench/tpe_small_budget.py (docs/benchmarks.md). Its first model, fitted on 3 trials, has a
#: "good" group of one and keeps proposing near it; budgets of 20 and more are unchanged.
STARTUP_MINIMUM = {"optuna-tpe": 5}


def startup_trials(algorithm: str, n_trials: int | None) -> int | None:
    """How many random trials ``algorithm`` runs before its model proposes, for a budget.

    A quarter of the study's ``n_trials``, at least 5 for Optuna's TPE and 3 for the others
    (:data:`STARTUP_MINIMUM`), at most the engine's default (10 for Optuna's TPE and GP, 20 for
    hyperopt's TPE): with the engines' defaults, a study of 10 or 20 trials would be random
    search throughout. None for algorithms without a random start, or when ``n_trials`` is
    None (the engine's default then applies).

    Example:
        >>> [startup_trials("optuna-tpe", n) for n in (8, 20, 100)]
        [5, 5, 10]
        >>> startup_trials("hyperopt-tpe", 12), startup_trials("optuna-gp", 12)
        (3, 3)
        >>> startup_trials("hyperopt-tpe", 60), startup_trials("optuna-random", 60)
        (15, None)
    """
    default = ENGINE_STARTUP_TRIALS.get(algorithm)
    if default is None or n_trials is None:
        return None
    return min(default, max(STARTUP_MINIMUM.get(algorithm, 3), n_trials // 4))


def create_sampler(
    algorithm: str,
    space: SearchSpace,
    *,
    seed: int | None,
    directions: list[str],
    n_trials: int | None = None,
) -> optuna.samplers.BaseSampler:
    """The Optuna sampler that runs ``algorithm`` over ``space``.

    hyperopt's algorithms come as a :class:`~hpo.engines.HyperoptSampler`, so every algorithm
    runs over the same Optuna study store.

    Args:
        algorithm: A name of :data:`hpo.engines.ALGORITHMS`, e.g. ``"optuna-tpe"``, or
            ``module:attribute``: a factory of an Optuna sampler, called with those of the
            keywords ``seed``, ``directions``, ``n_trials`` and ``space`` it takes.
        space: The search space the objective samples with :func:`hpo.spaces.suggest`.
        seed: Seed of the sampler; None for a random one.
        directions: The study's directions, one per objective.
        n_trials: The study's budget. TPE and GP then start with :func:`startup_trials`
            random trials instead of their engine's default; None keeps the default.

    Raises:
        ModuleNotAllowedError: ``module:attribute`` outside the worker's allow-list.
        TypeError: A factory returned something else than a sampler.
        ValueError: The name is unknown, or the algorithm optimizes one objective and
            ``directions`` has several, or grid search meets a float without a step.
        RuntimeError: ``optuna-gp`` without PyTorch installed.

    Example:
        >>> from hpo.spaces import IntParam, SearchSpace
        >>> space = SearchSpace({"units": IntParam(low=8, high=64)})
        >>> type(create_sampler("optuna-tpe", space, seed=0, directions=["maximize"])).__name__
        'TPESampler'
    """
    import optuna

    if is_user_target(algorithm):
        return _user_sampler(algorithm, space, seed, directions, n_trials)
    info = ALGORITHMS.get(algorithm)
    if info is None:
        raise ValueError(f"unknown algorithm {algorithm!r}; known: {', '.join(ALGORITHMS)}")
    if len(directions) > 1 and not info.multi_objective:
        raise ValueError(
            f"{algorithm} optimizes one objective; this study has {len(directions)} "
            f"(use {', '.join(n for n, a in ALGORITHMS.items() if a.multi_objective)})"
        )
    samplers = optuna.samplers
    startup = startup_trials(algorithm, n_trials)
    if algorithm == "optuna-cmaes":
        # CMA-ES ignores a space's constraints (hpo enforces them; docs/space-language.md):
        # said there once, not in the log after every trial. Process-wide, so set here.
        warnings.filterwarnings(
            "ignore", "Constraints have been set, but CmaEsSampler", UserWarning
        )
    with warnings.catch_warnings():
        # `group` and friends are flagged experimental: nothing a user of hpo can act on.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if algorithm == "optuna-tpe":
            # Constant liar: parallel workers see running trials as bad and spread out.
            return samplers.TPESampler(
                n_startup_trials=startup or ENGINE_STARTUP_TRIALS[algorithm],
                multivariate=True,
                group=True,
                constant_liar=True,
                seed=seed,
            )
        if algorithm == "optuna-cmaes":
            # CMA-ES handles the numbers present in every trial; TPE the categoricals and the
            # parameters of conditional branches. Those are expected, so no warning per trial.
            return samplers.CmaEsSampler(
                seed=seed,
                independent_sampler=samplers.TPESampler(seed=seed, constant_liar=True),
                warn_independent_sampling=False,
            )
        if algorithm == "optuna-gp":
            try:
                import torch  # noqa: F401  (GPSampler imports it only at its first proposal)
            except ImportError:
                raise RuntimeError("optuna-gp needs PyTorch: pip install 'hpo[gp]'") from None
            # Conditional parameters fall back to random sampling: expected, so no warning.
            return samplers.GPSampler(
                n_startup_trials=startup or ENGINE_STARTUP_TRIALS[algorithm],
                seed=seed,
                warn_independent_sampling=False,
            )
        if algorithm == "optuna-random":
            return samplers.RandomSampler(seed=seed)
        if algorithm == "optuna-grid":
            return _grid_sampler(space, seed)
        if algorithm == "optuna-nsga2":
            return samplers.NSGAIISampler(seed=seed)
    if info.engine == "hyperopt":
        from hpo.engines._hyperopt_sampler import HyperoptAlgo, HyperoptSampler

        algos: dict[str, HyperoptAlgo] = {"tpe": "tpe", "anneal": "anneal", "random": "random"}
        algo = algos[algorithm.removeprefix("hyperopt-")]
        return HyperoptSampler(
            space, algo=algo, seed=seed, direction=directions[0], startup_trials=startup
        )
    raise AssertionError(f"{algorithm} is listed in ALGORITHMS but has no sampler")


def _user_sampler(
    target: str,
    space: SearchSpace,
    seed: int | None,
    directions: list[str],
    n_trials: int | None,
) -> optuna.samplers.BaseSampler:
    import optuna

    check_allowed("algorithm", target)
    sampler = call_factory(
        import_object(target),
        {"seed": seed, "directions": list(directions), "n_trials": n_trials, "space": space},
    )
    if not isinstance(sampler, optuna.samplers.BaseSampler):
        raise TypeError(
            f"algorithm {target!r} returned a {type(sampler).__name__}, not an Optuna sampler"
        )
    return sampler


def _grid_sampler(space: SearchSpace, seed: int | None) -> optuna.samplers.BaseSampler:
    """Optuna's GridSampler over every value of every parameter.

    A conditional space is not a product: the grid over all branches would repeat each point
    once per combination of the inactive branches' values (and not stop before all those
    repeats ran). So the grid points are the distinct active configurations; for a space
    without conditions those are exactly GridSampler's product.
    """
    from hpo.spaces._optuna import grid

    values = grid(space)
    configs = _configurations(space.params, "", values)
    return _grid_sampler_class()(values, configs, seed=seed)


def grid_size(space: SearchSpace) -> int:
    """How many distinct configurations grid search visits in ``space``."""
    from hpo.spaces._optuna import grid

    return len(_configurations(space.params, "", grid(space)))


def _configurations(
    params: Mapping[str, Param], prefix: str, values: Mapping[str, list[Any]]
) -> list[dict[str, Any]]:
    """Every distinct assignment of the active parameters of ``params`` (depth first)."""
    configs: list[dict[str, Any]] = [{}]
    for key, p in params.items():
        name = join_path(prefix, key) if prefix else key
        if isinstance(p, ConstantParam):
            continue
        options: list[dict[str, Any]] = []
        if isinstance(p, CategoricalParam):
            for c in p.choices:
                subs = _configurations(c.params, join_path(name, c.label), values)
                options.extend({name: c.value, **sub} for sub in subs)
        else:
            options = [{name: v} for v in values[name]]
        configs = [{**a, **b} for a, b in itertools.product(configs, options)]
    return configs


@functools.cache
def _grid_sampler_class() -> Callable[..., optuna.samplers.GridSampler]:
    # A class built on first use: subclassing GridSampler at import time would import Optuna.
    import numpy as np
    import optuna

    class SpaceGridSampler(optuna.samplers.GridSampler):
        """GridSampler over given configurations, usable with ask and tell.

        GridSampler keeps its points in ``_all_grids`` (tuples over the sorted parameter names)
        and hands a trial a point by its index; everything else (spreading workers over
        unvisited points, stopping when all ran) works on indices, so swapping the list is all
        it takes. A parameter inactive in a configuration holds a placeholder that is never
        asked for. (tests/test_engines.py checks this against the installed Optuna.)
        """

        def __init__(
            self,
            search_space: Mapping[str, list[Any]],
            configs: list[dict[str, Any]],
            seed: int | None = None,
        ) -> None:
            super().__init__(search_space, seed=seed)
            names = self._param_names
            points = [tuple(c.get(n, search_space[n][0]) for n in names) for c in configs]
            # Shuffled like GridSampler's points (a study cut short samples the whole grid), but
            # in one order whatever the seed: trials name their point by index, so workers
            # seeded differently must agree on what each index means. The seed still decides
            # which unvisited point a worker picks once trial numbers pass the grid size.
            np.random.RandomState(0).shuffle(points)
            self._all_grids = points
            self._n_min_trials = len(points)

        def after_trial(
            self,
            study: optuna.Study,
            trial: optuna.trial.FrozenTrial,
            state: optuna.trial.TrialState,
            values: Sequence[float] | None,
        ) -> None:
            # GridSampler stops the study when the grid is done, but Study.stop() raises
            # outside study.optimize(). hpo's workers ask and tell; they see the end of the
            # grid with is_exhausted(), and the trial is stored either way.
            with contextlib.suppress(RuntimeError):
                super().after_trial(study, trial, state, values)

    return SpaceGridSampler
