"""Feasibility constraints: bounds on metrics a trial records (``constraints:`` in a space).

A trial is feasible when every constrained metric lies within its bounds. Each constraint gives
one number, its violation: how far the metric lies outside its bounds, 0 or less when inside.
That is the convention of Optuna's constrained samplers, which read these numbers from the
trial's ``constraints`` system attribute (see :mod:`hpo.workers.runner`).

Example:
    >>> c = ConstraintSpec(metric="params_count", max=50_000)
    >>> c.violation(60_000), c.violation(40_000), c.describe(60_000)
    (10000.0, -10000.0, 'params_count = 60000 > max 50000')
    >>> c.bounds(), ConstraintSpec(metric="val_loss", min=0, max=1.5).bounds()
    ('params_count <= 50000', '0 <= val_loss <= 1.5')
    >>> violations([c, ConstraintSpec(metric="val_loss", min=0.1, max=1.0)],
    ...            {"params_count": 10_000, "val_loss": 0.05})
    [-40000.0, 0.05]
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hpo.catalog import RECORDED_METRICS
from hpo.spaces._errors import FieldError, RawIssue, describe_value, pydantic_issues


class ConstraintSpec(BaseModel):
    """``{metric: NAME, max: X}``, ``{metric: NAME, min: X}`` or both bounds: inclusive."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    metric: str = Field(min_length=1)
    min: float | None = Field(default=None, allow_inf_nan=False)
    max: float | None = Field(default=None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _check(self) -> ConstraintSpec:
        if self.min is None and self.max is None:
            raise FieldError("max", f"give max, min or both for metric {self.metric!r}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise FieldError("min", f"min ({self.min:g}) must not exceed max ({self.max:g})")
        return self

    def violation(self, value: float) -> float:
        """How far ``value`` lies outside the bounds; 0 or less inside, NaN counts as outside."""
        if math.isnan(value):
            return math.inf
        worst = -math.inf
        if self.max is not None:
            worst = max(worst, value - self.max)
        if self.min is not None:
            worst = max(worst, self.min - value)
        return float(worst)

    def bounds(self) -> str:
        """The constraint as it reads, e.g. ``0 <= val_loss <= 1``."""
        low = f"{self.min:g} <= " if self.min is not None else ""
        high = f" <= {self.max:g}" if self.max is not None else ""
        return f"{low}{self.metric}{high}"

    def describe(self, value: float) -> str:
        """The violated bound, e.g. ``params_count = 60000 > max 50000``."""
        if self.max is not None and not value <= self.max:
            return f"{self.metric} = {value:g} > max {self.max:g}"
        assert self.min is not None
        return f"{self.metric} = {value:g} < min {self.min:g}"


def violations(constraints: Sequence[ConstraintSpec], metrics: Mapping[str, float]) -> list[float]:
    """One violation per constraint, in order; a metric not in ``metrics`` gives 0 (unknown,
    not counted against the trial: a trial stopped before training has only ``params_count``)."""
    return [
        c.violation(float(metrics[c.metric])) if c.metric in metrics else 0.0 for c in constraints
    ]


def violated(constraints: Sequence[ConstraintSpec], metrics: Mapping[str, float]) -> list[str]:
    """The violated constraints, described (empty: feasible as far as ``metrics`` tell)."""
    return [
        c.describe(float(metrics[c.metric]))
        for c in constraints
        if c.metric in metrics and c.violation(float(metrics[c.metric])) > 0
    ]


def parse_constraints(raw: Any) -> tuple[list[ConstraintSpec] | None, list[RawIssue]]:
    """Validate the ``constraints`` section: a list of constraints, each metric once."""
    if raw is None:
        return [], []
    if not isinstance(raw, list):
        return None, [
            (
                ("constraints",),
                f"expected a list of {{metric: ..., max: ...}} (or min), got {describe_value(raw)}",
            )
        ]
    issues: list[RawIssue] = []
    out: list[ConstraintSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        path = ("constraints", i)
        if not isinstance(item, Mapping):
            issues.append(
                (path, f"expected {{metric: ..., max: ...}} (or min), got {describe_value(item)}")
            )
            continue
        try:
            constraint = ConstraintSpec.model_validate(item)
        except ValidationError as exc:
            issues.extend(
                pydantic_issues(exc, path, list(ConstraintSpec.model_fields), "in a constraint")
            )
            continue
        typo = _near_recorded(constraint.metric)
        if typo:
            issues.append(
                (
                    (*path, "metric"),
                    f"unknown metric {constraint.metric!r} (did you mean {typo!r}?); a "
                    f"constraint names a metric Keras logs or one of {', '.join(RECORDED_METRICS)}",
                )
            )
            continue
        if constraint.metric in seen:
            issues.append(
                (
                    (*path, "metric"),
                    f"metric {constraint.metric!r} is constrained twice: give both bounds in one "
                    "entry",
                )
            )
            continue
        seen.add(constraint.metric)
        out.append(constraint)
    return (out if not issues else None), issues


def _near_recorded(metric: str) -> str | None:
    """The metric of hpo's own that ``metric`` misspells (``param_count``), if any.

    Keras's metrics depend on the model, so only names this close to one of
    :data:`~hpo.catalog.RECORDED_METRICS` are refused here; any other name is checked, as an
    objective's is, against what the model reports before its first trial trains.
    """
    if metric in RECORDED_METRICS:
        return None
    close = difflib.get_close_matches(metric, RECORDED_METRICS, n=1, cutoff=0.8)
    return close[0] if close else None
