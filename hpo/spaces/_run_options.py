"""Checks of a study's algorithm and pruner against its space: known names (or a user's
``module:attribute`` factory that returns a sampler or pruner), one objective or several, a
discrete space for grid search."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from hpo.catalog import ALGORITHMS, PRUNERS, is_user_target, unknown_names, user_object_problem
from hpo.spaces._params import FloatParam, SearchSpace
from hpo.spaces._sections import DefaultsSpec

if TYPE_CHECKING:
    from hpo.spaces._spec import StudySpec


def check_run_options(spec: StudySpec, algorithm: str, pruner: str) -> list[str]:
    """Problems with running ``spec`` under ``algorithm`` and ``pruner`` (empty when fine).

    A ``module:attribute`` algorithm or pruner is imported and its factory called once (with
    the arguments a worker gives it), to check that it returns an Optuna sampler or pruner.

    Example:
        >>> from hpo.spaces import parse_spec
        >>> spec = parse_spec('''
        ... family: image_cnn
        ... dataset: digits
        ... objective: {metric: val_accuracy, direction: maximize}
        ... budget: {max_epochs: 2}
        ... params: {lr: {type: float, low: 0.001, high: 0.1}}
        ... ''')
        >>> check_run_options(spec, "optuna-grid", "none")
        ['optuna-grid needs a discrete space: give every float a step (no step: lr)']
    """
    return [
        msg
        for _, msg in run_problems(
            len(spec.objectives),
            spec.space,
            algorithm,
            pruner,
            sampler_args(spec.space, spec.directions, spec.defaults),
            {"budget": spec.budget},
        )
    ]


def sampler_args(
    space: SearchSpace | None, directions: list[str], defaults: DefaultsSpec
) -> dict[str, Any]:
    """What a worker hands a user's sampler factory (see :mod:`hpo.catalog`)."""
    return {
        "seed": defaults.seed,
        "directions": directions,
        "n_trials": defaults.trials,
        "space": space,
    }


def run_problems(
    n_objectives: int,
    space: SearchSpace | None,
    algorithm: str | None,
    pruner: str | None,
    sampler_args: Mapping[str, Any] | None = None,
    pruner_args: Mapping[str, Any] | None = None,
) -> list[tuple[str, str]]:
    """``(defaults key, problem)`` pairs; an argument that is None skips the checks on it.

    Without ``sampler_args`` (``pruner_args``) a user's factory is only checked to be callable.
    """
    problems: list[tuple[str, str]] = []
    if algorithm is not None and is_user_target(algorithm):
        problem = user_object_problem("algorithm", algorithm, sampler_args)
        if problem:
            problems.append(("algorithm", problem))
        algorithm = None
    if pruner is not None and is_user_target(pruner):
        problem = user_object_problem("pruner", pruner, pruner_args)
        if problem:
            problems.append(("pruner", problem))
    info = ALGORITHMS.get(algorithm) if algorithm is not None else None
    if algorithm is not None and info is None:
        problems.append(
            (
                "algorithm",
                f"unknown algorithm {algorithm!r}{close_match(algorithm, ALGORITHMS)}; "
                f"{unknown_names('algorithm', ALGORITHMS)}",
            )
        )
    if pruner is not None and not is_user_target(pruner) and pruner not in PRUNERS:
        problems.append(
            (
                "pruner",
                f"unknown pruner {pruner!r}{close_match(pruner, PRUNERS)}; "
                f"{unknown_names('pruner', PRUNERS)}",
            )
        )
    if info is not None:
        if n_objectives > 1 and not info.multi_objective:
            multi = ", ".join(n for n, a in ALGORITHMS.items() if a.multi_objective)
            problems.append(
                (
                    "algorithm",
                    f"{algorithm} optimizes one objective; this study has {n_objectives} "
                    f"(use one of {multi})",
                )
            )
        if info.needs_discrete_space and space is not None and not space.is_discrete():
            floats = [
                n.name
                for n in space.searched_nodes()
                if isinstance(n.param, FloatParam) and n.param.step is None
            ]
            problems.append(
                (
                    "algorithm",
                    f"{algorithm} needs a discrete space: give every float a step "
                    f"(no step: {', '.join(floats)})",
                )
            )
    if n_objectives > 1 and pruner is not None and pruner != "none":
        problems.append(
            (
                "pruner",
                f"pruning works with one objective only, this study has {n_objectives}: "
                "use pruner none",
            )
        )
    return problems


def close_match(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
