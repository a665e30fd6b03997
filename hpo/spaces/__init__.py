"""The search-space language: one declarative file drives both Optuna and hyperopt.

Example:
    >>> from hpo.spaces import parse_spec, suggest
    >>> import optuna
    >>> spec = parse_spec('''
    ... family: image_cnn
    ... dataset: digits
    ... objective: {metric: val_accuracy, direction: maximize}
    ... budget: {max_epochs: 2}
    ... params:
    ...   optimizer:
    ...     type: categorical
    ...     choices:
    ...       adam: {beta_1: {type: float, low: 0.8, high: 0.99}}
    ...       sgd: {momentum: {type: float, low: 0.0, high: 0.9}}
    ... ''')
    >>> sorted(suggest(optuna.trial.FixedTrial({"optimizer": "sgd",
    ...     "optimizer.sgd.momentum": 0.5}), spec.space))
    ['optimizer', 'optimizer.sgd.momentum']
"""

from hpo.spaces._constraints import ConstraintSpec
from hpo.spaces._errors import SpaceError, SpaceIssue
from hpo.spaces._hyperopt import to_hyperopt
from hpo.spaces._optuna import distributions, suggest
from hpo.spaces._params import (
    CategoricalParam,
    Choice,
    ConstantParam,
    FloatParam,
    IntParam,
    Param,
    ParamNode,
    Params,
    SearchSpace,
)
from hpo.spaces._parse import parse_params
from hpo.spaces._run_options import check_run_options
from hpo.spaces._sections import (
    BudgetSpec,
    DatasetSpec,
    DefaultsSpec,
    ObjectiveSpec,
    RetentionSpec,
)
from hpo.spaces._spec import StudySpec, load_spec, parse_spec

__all__ = [
    "BudgetSpec",
    "CategoricalParam",
    "Choice",
    "ConstantParam",
    "ConstraintSpec",
    "DatasetSpec",
    "DefaultsSpec",
    "FloatParam",
    "IntParam",
    "ObjectiveSpec",
    "Param",
    "ParamNode",
    "Params",
    "RetentionSpec",
    "SearchSpace",
    "SpaceError",
    "SpaceIssue",
    "StudySpec",
    "check_run_options",
    "distributions",
    "load_spec",
    "parse_params",
    "parse_spec",
    "suggest",
    "to_hyperopt",
]
