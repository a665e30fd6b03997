"""A study specification: one search-space file (family, data, objective, budget, params)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hpo.spaces._errors import SpaceError, SpaceIssue
from hpo.spaces._params import SearchSpace, parse_params
from hpo.spaces._yaml import KeyPath, YamlDocument


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(_Section):
    """Which data a study trains on, and how it is split (fixed and seeded)."""

    name: str
    subset: int | None = Field(default=None, gt=0, description="cap on training examples")
    validation_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.2, gt=0, lt=0.5)
    seed: int = 0
    options: dict[str, Any] = Field(default_factory=dict)


class ObjectiveSpec(_Section):
    """A metric reported after every epoch, and whether to minimize or maximize it."""

    metric: str = Field(min_length=1)
    direction: Literal["minimize", "maximize"]


class BudgetSpec(_Section):
    """Epochs per trial: the fidelity that pruners use."""

    max_epochs: int = Field(gt=0)
    min_epochs: int = Field(default=1, gt=0)
    trial_timeout: float | None = Field(default=None, gt=0, description="seconds")

    @model_validator(mode="after")
    def _check(self) -> BudgetSpec:
        if self.min_epochs > self.max_epochs:
            raise ValueError("min_epochs must not exceed max_epochs")
        return self


class DefaultsSpec(_Section):
    """Defaults for the CLI's flags; a flag given on the command line wins."""

    algorithm: str = "optuna-tpe"
    pruner: str = "median"
    trials: int = Field(default=20, gt=0)
    workers: int = Field(default=1, gt=0)
    seed: int | None = None


class _Top(_Section):
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    family: str
    dataset: DatasetSpec
    objective: list[ObjectiveSpec] = Field(min_length=1)
    budget: BudgetSpec
    defaults: DefaultsSpec = Field(default_factory=DefaultsSpec)

    @field_validator("dataset", mode="before")
    @classmethod
    def _dataset_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("objective", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, Mapping) else v


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
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpaceError([SpaceIssue(str(path), "", None, f"cannot read: {exc.strerror}")]) \
            from None
    return parse_spec(text, str(path))


def parse_spec(text: str, filename: str = "<string>") -> StudySpec:
    """Validate the text of a search-space file (see :func:`load_spec`)."""
    issues: list[tuple[KeyPath, str]] = []
    try:
        doc = YamlDocument.parse(text, filename)
    except Exception as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpaceError([SpaceIssue(filename, "", line, f"not valid YAML: {problem}")]) from None
    for path, _line in doc.duplicates:
        issues.append((path, "duplicate key"))
    raw = doc.data
    if not isinstance(raw, Mapping):
        _raise(filename, doc, [((), "expected a mapping with family, dataset, objective, budget "
                                "and params")])
    raw = dict(raw)
    params, param_issues = parse_params(raw.pop("params", None), ("params",))
    if "params" not in doc.data:
        param_issues = [(("params",), "missing: the parameters to search")]
    issues.extend(param_issues)
    top: _Top | None = None
    try:
        top = _Top.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif err["type"] == "missing":
                msg = "missing"
            issues.append((tuple(err["loc"]), msg))
    if top is not None:
        issues.extend(_cross_checks(top, SearchSpace(params) if not param_issues else None))
    if issues:
        _raise(filename, doc, issues)
    assert top is not None
    return StudySpec(
        name=top.name or Path(filename).stem,
        description=top.description,
        family=top.family,
        dataset=top.dataset,
        objectives=top.objective,
        budget=top.budget,
        defaults=top.defaults,
        space=SearchSpace(params),
        source=text,
        filename=filename,
    )


def check_run_options(spec: StudySpec, algorithm: str, pruner: str) -> list[str]:
    """Problems with running ``spec`` under ``algorithm`` and ``pruner`` (empty when fine)."""
    from hpo.engines._names import ALGORITHMS, PRUNERS

    problems = []
    info = ALGORITHMS.get(algorithm)
    if info is None:
        problems.append(f"unknown algorithm {algorithm!r}; known: {', '.join(ALGORITHMS)}")
    if pruner not in PRUNERS:
        problems.append(f"unknown pruner {pruner!r}; known: {', '.join(PRUNERS)}")
    if info is not None:
        if spec.multi_objective and not info.multi_objective:
            problems.append(f"{algorithm} optimizes one objective; this study has "
                            f"{len(spec.objectives)} (use optuna-nsga2, optuna-tpe or "
                            "optuna-random)")
        if info.needs_discrete_space and not spec.space.is_discrete():
            problems.append(f"{algorithm} needs a discrete space: give every float a step")
    if spec.multi_objective and pruner != "none":
        problems.append("pruning works with one objective only: use pruner none")
    return problems


def _cross_checks(top: _Top, space: SearchSpace | None) -> list[tuple[KeyPath, str]]:
    from hpo._registry import module_exists
    from hpo.datasets import DATASETS
    from hpo.engines._names import ALGORITHMS, PRUNERS
    from hpo.families import FAMILIES

    issues: list[tuple[KeyPath, str]] = []
    if top.family not in FAMILIES:
        if ":" in top.family:
            if not module_exists(top.family):
                issues.append((("family",), f"cannot find module of {top.family!r}"))
        else:
            issues.append((("family",), f"unknown family {top.family!r}; known: "
                           f"{', '.join(FAMILIES.names())}, or 'module:builder' for your own"))
    if top.dataset.name not in DATASETS:
        issues.append((("dataset", "name"), f"unknown dataset {top.dataset.name!r}; known: "
                       f"{', '.join(DATASETS.names())}"))
    names = [o.metric for o in top.objective]
    if len(set(names)) != len(names):
        issues.append((("objective",), "the same metric appears twice"))
    d = top.defaults
    if d.algorithm not in ALGORITHMS:
        issues.append((("defaults", "algorithm"), f"unknown algorithm {d.algorithm!r}; known: "
                       f"{', '.join(ALGORITHMS)}"))
    if d.pruner not in PRUNERS:
        issues.append((("defaults", "pruner"), f"unknown pruner {d.pruner!r}; known: "
                       f"{', '.join(PRUNERS)}"))
    if space is not None and not issues:
        probe = StudySpec("", "", top.family, top.dataset, top.objective, top.budget, d, space,
                          "", "")
        for problem in check_run_options(probe, d.algorithm, d.pruner):
            issues.append((("defaults",), problem))
    return issues


def _raise(filename: str, doc: YamlDocument, issues: list[tuple[KeyPath, str]]) -> None:
    raise SpaceError([
        SpaceIssue(filename, ".".join(str(p) for p in path), doc.line_of(path), msg)
        for path, msg in issues
    ])
