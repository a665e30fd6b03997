"""What a space file may name on each axis: family, dataset, algorithm and pruner.

Each axis has built-in names and takes a user's own object as ``module:attribute``. This module
holds the built-in names (as ``module:attribute`` strings, imported on use), the module
allow-list of workers, and the checks a space's validation runs on a user's object. It imports
no other part of hpo but :mod:`hpo._registry` and :mod:`hpo.errors`: :mod:`hpo.spaces`
validates names through it, and the packages that implement the names (:mod:`hpo.families`,
:mod:`hpo.datasets`, :mod:`hpo.engines`) depend on :mod:`hpo.spaces`, never the other way.

What a user's object must be, per axis:

- family: a :class:`hpo.families.Family` subclass or instance, or ``build(hp, data)``;
- dataset: a function returning the data (see :func:`hpo.datasets.from_arrays`);
- algorithm: a function returning an Optuna ``BaseSampler``; it is called with those of the
  keywords ``seed``, ``directions``, ``n_trials`` and ``space`` that it takes;
- pruner: a function returning an Optuna ``BasePruner``; it is called with ``budget`` (the
  space's :class:`hpo.spaces.BudgetSpec`) if it takes it.

Example:
    >>> is_user_target("mypackage.samplers:make"), is_user_target("optuna-tpe")
    (True, False)
    >>> "digits" in DATASETS, "image_cnn" in FAMILIES, "median" in PRUNERS
    (True, True, True)
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from hpo._registry import LazyRegistry, import_object, module_exists
from hpo.errors import UsageError

Axis: TypeAlias = Literal["family", "dataset", "algorithm", "pruner"]

FAMILIES: LazyRegistry[Any] = LazyRegistry(
    "family",
    {
        "image_cnn": "hpo.families.image_cnn:ImageCNN",
        "dense_bn": "hpo.families.dense_bn:DenseBN",
        "text_conv1d": "hpo.families.text_conv1d:TextConv1D",
        "text_dense": "hpo.families.text_dense:TextDense",
        "char_lstm": "hpo.families.language_models:CharLSTM",
        "word_lstm": "hpo.families.language_models:WordLSTM",
        "sorted_seq": "hpo.families.sorted_seq:SortedSeq",
        "vae": "hpo.families.vae:VAE",
        "gan": "hpo.families.gan:GAN",
        "style_transfer": "hpo.families.style_transfer:StyleTransfer",
    },
)

DATASETS: LazyRegistry[Any] = LazyRegistry(
    "dataset",
    {
        "fashion_mnist": "hpo.datasets.fashion_mnist:load",
        "digits": "hpo.datasets.digits:load",
        "tabular": "hpo.datasets.tabular:load",
        "reuters": "hpo.datasets.reuters:load",
        "text_classification": "hpo.datasets.text_classification:load",
        "shakespeare": "hpo.datasets.text_corpus:load_shakespeare",
        "text_corpus": "hpo.datasets.text_corpus:load",
        "sorted_sequences": "hpo.datasets.sorted_sequences:load",
        "style_images": "hpo.datasets.style_images:load",
    },
)


@dataclass(frozen=True)
class AlgorithmInfo:
    """What the CLI and the validator need to know about an algorithm."""

    name: str
    engine: str  # "optuna" or "hyperopt"
    description: str
    multi_objective: bool = False
    needs_discrete_space: bool = False


ALGORITHMS: dict[str, AlgorithmInfo] = {
    a.name: a
    for a in [
        AlgorithmInfo(
            "optuna-tpe",
            "optuna",
            "Optuna TPE, multivariate, constant liar for parallel workers",
            multi_objective=True,
        ),
        AlgorithmInfo("optuna-cmaes", "optuna", "Optuna CMA-ES (categoricals fall back to TPE)"),
        AlgorithmInfo("optuna-gp", "optuna", "Optuna Gaussian process (needs PyTorch)"),
        AlgorithmInfo("optuna-random", "optuna", "Optuna random search", multi_objective=True),
        AlgorithmInfo(
            "optuna-grid",
            "optuna",
            "Optuna grid search over a discrete space",
            multi_objective=True,
            needs_discrete_space=True,
        ),
        AlgorithmInfo(
            "optuna-nsga2", "optuna", "Optuna NSGA-II (multi-objective)", multi_objective=True
        ),
        AlgorithmInfo("hyperopt-tpe", "hyperopt", "hyperopt's TPE, proposing over the study store"),
        AlgorithmInfo("hyperopt-anneal", "hyperopt", "hyperopt's simulated annealing"),
        AlgorithmInfo("hyperopt-random", "hyperopt", "hyperopt's random search"),
    ]
}

PRUNERS: dict[str, str] = {
    "none": "never stop a trial early",
    "median": "stop a trial below the median of earlier trials at the same epoch",
    "sha": "asynchronous successive halving over epochs",
    "hyperband": "Hyperband over epochs (several successive-halving brackets)",
}

#: Metrics hpo records on every trial besides those Keras logs each epoch (``loss``,
#: ``val_accuracy``, ...): an objective or a constraint may name them.
RECORDED_METRICS = ("params_count", "train_seconds", "epoch_seconds_median")

#: Comma-separated modules or packages whose objects a worker may import (every axis).
ALLOWED_MODULES_ENV = "HPO_ALLOWED_FAMILY_MODULES"


class ModuleNotAllowedError(UsageError, ImportError):
    """A study names an object of a module outside those this worker may import."""


def is_user_target(name: str) -> bool:
    """Whether ``name`` names a user's object (``module:attribute``) rather than a built-in."""
    return ":" in name


def module_allowed(target: str) -> bool:
    """Whether this process may import the module of ``target`` (``module:attribute``).

    Yes when ``$HPO_ALLOWED_FAMILY_MODULES`` is unset, or when the module is one of its
    comma-separated modules or packages (or inside one). Set but empty: none. Built-in names
    (without ``:``) are always allowed.

    Example:
        >>> os.environ[ALLOWED_MODULES_ENV] = "mypackage"
        >>> module_allowed("mypackage.samplers:make"), module_allowed("os:system")
        (True, False)
        >>> module_allowed("optuna-tpe")
        True
        >>> del os.environ[ALLOWED_MODULES_ENV]
    """
    if not is_user_target(target):
        return True
    raw = os.environ.get(ALLOWED_MODULES_ENV)
    if raw is None:
        return True
    module = target.partition(":")[0]
    prefixes = [p.strip() for p in raw.split(",") if p.strip()]
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def check_allowed(axis: Axis, target: str) -> None:
    """Raise :class:`ModuleNotAllowedError` unless :func:`module_allowed` says yes."""
    if not module_allowed(target):
        raise ModuleNotAllowedError(
            f"{axis} {target!r} is not allowed on this worker: its module is not in "
            f"${ALLOWED_MODULES_ENV} ({os.environ.get(ALLOWED_MODULES_ENV)!r})"
        )


def first_disallowed(targets: Mapping[Axis, str | None]) -> tuple[Axis, str] | None:
    """The first ``(axis, target)`` of ``targets`` whose module this process may not import."""
    for axis, target in targets.items():
        if target is not None and not module_allowed(target):
            return axis, target
    return None


def call_factory(factory: Callable[..., Any], available: Mapping[str, Any]) -> Any:
    """``factory(**kw)`` with those of ``available`` that its signature takes (all of them
    when it takes ``**kwargs``).

    Example:
        >>> call_factory(lambda seed: seed, {"seed": 3, "directions": ["minimize"]})
        3
    """
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # no signature (a builtin): pass nothing
        return factory()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return factory(**available)
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return factory(**{k: v for k, v in available.items() if k in names})


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


def user_object_problem(
    axis: Axis, target: str, factory_args: Mapping[str, Any] | None = None
) -> str | None:
    """Why ``target`` (``module:attribute``) is not a valid ``axis`` object; None when it is.

    The module is imported (its code runs), after the allow-list said yes. Sampler and pruner
    factories are called with ``factory_args`` (see :func:`call_factory`) and their result's
    type checked; without ``factory_args`` only that they are callable.

    Example:
        >>> user_object_problem("dataset", "os.path:sep")
        "dataset 'os.path:sep' is the text '/': expected a function returning the data"
        >>> user_object_problem("algorithm", "nowhere_at_all:make")
        "cannot find module 'nowhere_at_all' of algorithm 'nowhere_at_all:make'"
    """
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        return f"write your own {axis} as 'module:attribute', got {target!r}"
    if not module_allowed(target):
        # Checked before the import: a worker's allow-list keeps the module's code from running.
        return f"{axis} {target!r} is not allowed on this machine (${ALLOWED_MODULES_ENV})"
    if not module_exists(target):
        return f"cannot find module {module!r} of {axis} {target!r}"
    try:
        obj = import_object(target)
    except AttributeError:
        return f"module {module!r} has no attribute {attr!r}"
    except Exception as exc:  # the user's module failed to import: say how, in one line
        return f"cannot import {target!r}: {_one_line(exc)}"
    if axis == "family":
        return _family_problem(target, obj)
    expected = {
        "dataset": "a function returning the data",
        "algorithm": "a function returning an Optuna sampler",
        "pruner": "a function returning an Optuna pruner",
    }[axis]
    if not callable(obj):
        return f"{axis} {target!r} is {_describe(obj)}: expected {expected}"
    if axis == "dataset" or factory_args is None:
        return None
    import optuna

    base: type = optuna.samplers.BaseSampler if axis == "algorithm" else optuna.pruners.BasePruner
    try:
        made = call_factory(obj, factory_args)
    except Exception as exc:
        return f"{axis} {target!r} failed: {_one_line(exc)}"
    if not isinstance(made, base):
        return (
            f"{axis} {target!r} returned {_describe(made)}: expected an instance of "
            f"optuna.{base.__module__.split('.')[1]}.{base.__name__}"
        )
    return None


def _family_problem(target: str, obj: Any) -> str | None:
    # A Family subclass was defined by importing hpo.families._base: when that module is not
    # loaded, nothing can be one (so this module need not import the families).
    base = sys.modules.get("hpo.families._base")
    family_cls = getattr(base, "Family", None)
    if inspect.isclass(obj):
        if family_cls is not None and issubclass(obj, family_cls):
            return None
        return f"{target!r} is a class but not a subclass of hpo.families.Family"
    if (family_cls is not None and isinstance(obj, family_cls)) or callable(obj):
        return None
    return (
        f"{target!r} is {_describe(obj)}: expected a Family subclass or a build(hp, data) function"
    )


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f"the text {value[:40]!r}"
    if value is None:
        return "None"
    return f"a {type(value).__name__}"


def unknown_names(axis: Axis, names: Iterable[str]) -> str:
    """The end of an "unknown ..." message: the known names and the ``module:attribute`` form."""
    return f"known: {', '.join(names)}, or 'module:attribute' for your own {axis}"


__all__ = [
    "ALGORITHMS",
    "ALLOWED_MODULES_ENV",
    "DATASETS",
    "FAMILIES",
    "PRUNERS",
    "AlgorithmInfo",
    "Axis",
    "ModuleNotAllowedError",
    "call_factory",
    "check_allowed",
    "first_disallowed",
    "is_user_target",
    "module_allowed",
    "user_object_problem",
]
