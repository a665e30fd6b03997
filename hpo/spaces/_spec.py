"""A study specification: one search-space file (family, data, objective, budget, params)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeAlias

import yaml
from pydantic import BaseModel, ValidationError

from hpo.catalog import (
    DATASETS,
    FAMILIES,
    is_user_target,
    unknown_names,
    user_object_problem,
)
from hpo.names import name_problem
from hpo.spaces._constraints import ConstraintSpec, parse_constraints
from hpo.spaces._errors import (
    KeyPath,
    RawIssue,
    SpaceError,
    SpaceIssue,
    describe_value,
    pydantic_issues,
    unknown_message,
)
from hpo.spaces._params import SearchSpace
from hpo.spaces._parse import parse_params
from hpo.spaces._run_options import run_problems, sampler_args
from hpo.spaces._sections import (
    BudgetSpec,
    DatasetSpec,
    DefaultsSpec,
    ObjectiveSpec,
    RetentionSpec,
)
from hpo.spaces._yaml import YamlDocument, YamlLimitError

# A space file is a page or two of YAML; 1 MB leaves room for long descriptions and lists.
MAX_FILE_BYTES = 1_000_000
_TOO_LARGE = f"the file is larger than {MAX_FILE_BYTES:,} bytes: not a search space"


_REQUIRED = {
    "family": "the model family, e.g. `family: image_cnn`",
    "dataset": "the data to train on, e.g. `dataset: digits`",
    "objective": "the metric to optimize, e.g. `objective: {metric: val_accuracy, "
    "direction: maximize}`",
    "budget": "epochs per trial, e.g. `budget: {max_epochs: 10}`",
    "params": "the parameters to search, e.g. `params: {lr: {type: float, low: 1.0e-4, "
    "high: 0.1, log: true}}`",
}
_TOP_KEYS = (
    "name",
    "description",
    "family",
    "dataset",
    "objective",
    "budget",
    "defaults",
    "retention",
    "constraints",
    "params",
)


@dataclass(frozen=True)
class StudySpec:
    """A validated search-space file.

    Example:
        >>> spec = parse_spec('''
        ... family: image_cnn
        ... dataset: digits
        ... objective: {metric: val_accuracy, direction: maximize}
        ... budget: {max_epochs: 2}
        ... params:
        ...   learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
        ... ''', "example.yaml")
        >>> spec.name, spec.space.names(), spec.directions
        ('example', ['learning_rate'], ['maximize'])
    """

    name: str
    description: str
    family: str
    dataset: DatasetSpec
    objectives: list[ObjectiveSpec]
    budget: BudgetSpec
    defaults: DefaultsSpec
    space: SearchSpace
    source: str
    filename: str
    retention: RetentionSpec | None = None  # None: every trial keeps its files
    #: Bounds on recorded metrics that a feasible trial meets (``constraints:``; none: all are).
    constraints: list[ConstraintSpec] = field(default_factory=list)

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def metrics(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a search-space file; raises :class:`SpaceError` naming every problem."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)  # bounded: a huge file or /dev/zero is refused
        if len(data) > MAX_FILE_BYTES:
            raise SpaceError([SpaceIssue(str(path), "", None, _TOO_LARGE)])
        text = data.decode("utf-8")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise SpaceError([SpaceIssue(str(path), "", None, f"cannot read: {reason}")]) from None
    except UnicodeDecodeError as exc:
        raise SpaceError(
            [
                SpaceIssue(
                    str(path),
                    "",
                    None,
                    f"cannot read: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                    f"{exc.start})",
                )
            ]
        ) from None
    return parse_spec(text, str(path))


# A problem: key path, message, and the line when it is not the line of the key path.
_Issue: TypeAlias = tuple[KeyPath, str, int | None]


def parse_spec(text: str, filename: str = "<string>") -> StudySpec:
    """Validate the text of a search-space file (see :func:`load_spec`).

    Every problem is collected, each section on its own, so that one bad section does not hide
    another's; :class:`SpaceError` lists them with file, key path and line.

    Example:
        >>> try:
        ...     parse_spec("family: image_cnn\\nbudget: {max_epochs: 0}\\n", "s.yaml")
        ... except SpaceError as exc:
        ...     print(exc.issues[-1])
        s.yaml:2: budget.max_epochs: Input should be greater than 0, got 0
    """
    if len(text) > MAX_FILE_BYTES:
        raise SpaceError([SpaceIssue(filename, "", None, _TOO_LARGE)])
    try:
        doc = YamlDocument.parse(text, filename)
    except YamlLimitError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else None
        raise SpaceError([SpaceIssue(filename, "", line, exc.problem)]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        if context:
            problem = f"{problem} ({context})"
        raise SpaceError([SpaceIssue(filename, "", line, f"not valid YAML: {problem}")]) from None
    except RecursionError:
        raise SpaceError(
            [SpaceIssue(filename, "", None, "not valid YAML: nested too deeply")]
        ) from None
    issues: list[_Issue] = [
        (path, f"duplicate key: {path[-1]!r} is already given on line {first}", line)
        for path, line, first in doc.duplicates
    ]
    issues.extend((path, msg, None) for path, msg in doc.problems)
    raw = doc.data
    if not isinstance(raw, Mapping):
        _raise(
            filename,
            doc,
            [
                *issues,
                (
                    (),
                    "expected a mapping with family, dataset, objective, budget and params, got "
                    f"{describe_value(raw)}",
                    None,
                ),
            ],
        )
    values, section_issues = _parse_sections(raw)
    issues.extend((path, msg, None) for path, msg in section_issues)
    space: SearchSpace | None = None
    if "params" in raw:
        params, param_issues = parse_params(raw["params"], ("params",))
        issues.extend((path, msg, None) for path, msg in param_issues)
        space = SearchSpace(params) if not param_issues else None
    defaults = values.get("defaults")
    objectives = values.get("objective")
    given = raw.get("defaults")
    pruner_given = isinstance(given, Mapping) and "pruner" in given
    if (
        isinstance(defaults, DefaultsSpec)
        and objectives
        and len(objectives) > 1
        and not pruner_given
    ):
        # Pruning needs one objective: no pruner named means none, not the usual median.
        values["defaults"] = defaults.model_copy(update={"pruner": "none"})
    issues.extend((path, msg, None) for path, msg in _cross_checks(raw, values, space))
    if issues:
        _raise(filename, doc, issues)
    assert space is not None
    return StudySpec(
        name=values.get("name") or Path(filename).stem,
        description=values.get("description") or "",
        family=values["family"],
        dataset=values["dataset"],
        objectives=values["objective"],
        budget=values["budget"],
        defaults=values.get("defaults") or DefaultsSpec(),
        space=space,
        source=text,
        filename=filename,
        retention=values.get("retention"),
        constraints=values.get("constraints") or [],
    )


def _parse_sections(raw: Mapping[Any, Any]) -> tuple[dict[str, Any], list[RawIssue]]:
    """Validate every top-level section except ``params``, each on its own.

    Returns the valid sections by key and the problems; a section with problems is left out.
    """
    issues: list[RawIssue] = []
    values: dict[str, Any] = {}
    for key in raw:
        if key not in _TOP_KEYS:
            issues.append(((key,), unknown_message("section", key, _TOP_KEYS)))
    for key, what in _REQUIRED.items():
        if key not in raw:
            issues.append(((key,), f"required section is missing: {what}"))

    def model(key: str, cls: type[BaseModel], value: Any, path: KeyPath) -> Any:
        try:
            return cls.model_validate(value)
        except ValidationError as exc:
            issues.extend(pydantic_issues(exc, path, list(cls.model_fields), f"in {key}"))
            return None

    if "name" in raw and raw["name"] is not None:
        name = raw["name"]
        problem = name_problem(name, "study")
        if problem is None:
            values["name"] = name
        else:
            issues.append((("name",), problem))
    if "description" in raw and raw["description"] is not None:
        if isinstance(raw["description"], str):
            values["description"] = raw["description"]
        else:
            issues.append(
                (("description",), f"expected text, got {describe_value(raw['description'])}")
            )
    if "family" in raw:
        family = raw["family"]
        if isinstance(family, str) and family:
            values["family"] = family
        else:
            issues.append(
                (("family",), f"expected the name of a model family, got {describe_value(family)}")
            )
    if "dataset" in raw:
        dataset = raw["dataset"]
        if isinstance(dataset, str):  # shorthand: `dataset: digits`
            dataset = {"name": dataset}
        if isinstance(dataset, Mapping):
            values["dataset"] = model("dataset", DatasetSpec, dataset, ("dataset",))
        else:
            issues.append(
                (
                    ("dataset",),
                    "expected a dataset name or a mapping with its name "
                    f"and options, got {describe_value(dataset)}",
                )
            )
    if "objective" in raw:
        objective = raw["objective"]
        parsed: list[Any] = []
        if isinstance(objective, Mapping):  # one objective, written without a list
            parsed = [model("objective", ObjectiveSpec, objective, ("objective",))]
        elif isinstance(objective, list) and objective:
            parsed = [
                model("objective", ObjectiveSpec, item, ("objective", i))
                for i, item in enumerate(objective)
            ]
        else:
            issues.append(
                (
                    ("objective",),
                    "expected {metric: ..., direction: ...} or a list "
                    f"of them, got {describe_value(objective)}",
                )
            )
        if parsed and all(o is not None for o in parsed):
            values["objective"] = parsed
    if "budget" in raw:
        values["budget"] = model("budget", BudgetSpec, raw["budget"], ("budget",))
    if raw.get("retention") is not None:
        values["retention"] = model("retention", RetentionSpec, raw["retention"], ("retention",))
    elif "retention" in raw:
        issues.append(
            (("retention",), "expected a mapping such as `retention: {keep_best: 10}`, got null")
        )
    constraints, constraint_issues = parse_constraints(raw.get("constraints"))
    issues.extend(constraint_issues)
    values["constraints"] = constraints
    if raw.get("defaults") is None:  # absent, or `defaults:` with nothing under it
        values["defaults"] = DefaultsSpec()
    else:
        values["defaults"] = model("defaults", DefaultsSpec, raw["defaults"], ("defaults",))
    return {k: v for k, v in values.items() if v is not None}, issues


def _cross_checks(
    raw: Mapping[Any, Any], values: Mapping[str, Any], space: SearchSpace | None
) -> list[RawIssue]:
    """Checks against the names of :mod:`hpo.catalog` and between sections.

    Names are read from the raw data where they are text, so that an unknown dataset or
    algorithm is reported even when another key of its section is wrong. A ``module:attribute``
    is imported (after the allow-list) and checked for what its axis needs.
    """
    issues: list[RawIssue] = []
    family = values.get("family")
    if isinstance(family, str) and family not in FAMILIES:
        if is_user_target(family):
            problem = user_object_problem("family", family)
            if problem:
                issues.append((("family",), problem))
        else:
            issues.append(
                (
                    ("family",),
                    f"unknown family {family!r}; {unknown_names('family', FAMILIES.names())}",
                )
            )
    dataset = raw.get("dataset")
    where: KeyPath = ("dataset",)
    name = dataset if isinstance(dataset, str) else None
    if isinstance(dataset, Mapping) and isinstance(dataset.get("name"), str):
        name, where = dataset["name"], ("dataset", "name")
    if name is not None and name not in DATASETS:
        if is_user_target(name):
            problem = user_object_problem("dataset", name)
            if problem:
                issues.append((where, problem))
        else:
            issues.append(
                (
                    where,
                    f"unknown dataset {name!r}; {unknown_names('dataset', DATASETS.names())}",
                )
            )
    objective = raw.get("objective")
    items = objective if isinstance(objective, list) else []
    metrics = [o.get("metric") if isinstance(o, Mapping) else None for o in items]
    for i, metric in enumerate(metrics):
        if isinstance(metric, str) and metric in metrics[:i]:
            issues.append((("objective", i, "metric"), f"metric {metric!r} appears twice"))
    defaults = values.get("defaults")
    if isinstance(defaults, DefaultsSpec):
        algorithm: Any = defaults.algorithm
        pruner: Any = defaults.pruner
    else:  # the section has another problem: still check the names it gives
        given = raw.get("defaults")
        given = given if isinstance(given, Mapping) else {}
        algorithm, pruner = given.get("algorithm"), given.get("pruner")
    objectives = values.get("objective")
    n_objectives = len(objectives) if objectives else 1
    budget = values.get("budget")
    for key, problem in run_problems(
        n_objectives,
        space,
        algorithm if isinstance(algorithm, str) else None,
        pruner if isinstance(pruner, str) else None,
        sampler_args(space, [o.direction for o in objectives], defaults)
        if objectives and isinstance(defaults, DefaultsSpec)
        else None,
        {"budget": budget} if isinstance(budget, BudgetSpec) else None,
    ):
        issues.append((("defaults", key), problem))
    return issues


def _raise(filename: str, doc: YamlDocument, issues: list[_Issue]) -> NoReturn:
    raise SpaceError(
        [
            SpaceIssue(
                filename,
                ".".join(str(p) for p in path),
                line if line is not None else doc.line_of(path),
                msg,
            )
            for path, msg, line in issues
        ]
    )
