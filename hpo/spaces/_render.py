"""A Rich tree of a search space, conditional branches visible."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from hpo.spaces._params import (
    CategoricalParam,
    ConstantParam,
    FloatParam,
    IntParam,
    Param,
)

if TYPE_CHECKING:
    from rich.tree import Tree

    from hpo.spaces._spec import StudySpec


def describe(p: Param) -> str:
    """One line describing a parameter's kind and range."""
    if isinstance(p, FloatParam):
        scale = "log " if p.log else ""
        step = f" step {p.step}" if p.step is not None else ""
        return f"float {scale}[{p.low:g}, {p.high:g}]{step}"
    if isinstance(p, IntParam):
        scale = "log " if p.log else ""
        step = f" step {p.step}" if p.step != 1 else ""
        return f"int {scale}[{p.low}, {p.high}]{step}"
    if isinstance(p, CategoricalParam):
        return "categorical {" + ", ".join(c.label for c in p.choices) + "}"
    assert isinstance(p, ConstantParam)
    return f"constant {p.value!r}"


def space_tree(spec: StudySpec) -> Tree:
    """The study's header and parameters as a :class:`rich.tree.Tree`.

    Example:
        >>> from rich.console import Console
        >>> from hpo.spaces import parse_spec
        >>> spec = parse_spec('''
        ... family: image_cnn
        ... dataset: digits
        ... objective: {metric: val_accuracy, direction: maximize}
        ... budget: {max_epochs: 2}
        ... params:
        ...   opt: {type: categorical, choices: {sgd: {momentum: 0.9}, adam: null}}
        ... ''', "s.yaml")
        >>> console = Console(width=80, color_system=None)
        >>> with console.capture() as out:
        ...     console.print(space_tree(spec))
        >>> "if opt = sgd" in out.get()
        True
    """
    from rich.tree import Tree

    objectives = ", ".join(f"{o.direction} {_text(o.metric)}" for o in spec.objectives)
    root = Tree(
        f"[bold]{_text(spec.name)}[/]  family [cyan]{_text(spec.family)}[/]  dataset "
        f"[cyan]{_text(spec.dataset.name)}[/]  {objectives}  max {spec.budget.max_epochs} epochs"
        + (f"  keeps the models of the best {spec.retention.keep_best}" if spec.retention else "")
    )
    if spec.constraints:
        root.add("feasible: " + _text(", ".join(c.bounds() for c in spec.constraints)))
    _add(root, spec.space.params)
    return root


def _text(value: object) -> str:
    # User text may contain "[...]", which Rich would read as markup (or fail on).
    from rich.markup import escape

    return escape(str(value))


def _add(tree: Tree, params: Mapping[str, Param]) -> None:
    for key, p in params.items():
        branch = tree.add(f"[bold]{key}[/]: {_text(describe(p))}")
        if isinstance(p, CategoricalParam) and p.is_conditional:
            for c in p.choices:
                if c.params:
                    _add(branch.add(f"[magenta]if {key} = {_text(c.label)}[/]"), c.params)
