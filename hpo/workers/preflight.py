"""Checks made before a study is written: its family's options, its dataset loads and suits
its family.

Without them a missing file or images given to a text family would only surface inside the
first trial of every worker, as a FAIL per trial; with them ``hpo run`` and
``hpo study create`` stop at once with the loader's message (where it looked, what to do) and
exit status 2, before anything reaches the study store or MLflow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpo.datasets import DataError, load_dataset

if TYPE_CHECKING:
    from hpo.spaces import StudySpec


def check_study_data(spec: StudySpec) -> dict[str, Any]:
    """Load the study's dataset once and ask its family whether it suits it.

    Returns the dataset's summary (sizes, input shape, classes). Raises :class:`DataError`
    with the loader's or the family's message otherwise.

    Example:
        >>> from hpo.spaces import parse_spec
        >>> spec = parse_spec('''
        ... family: dense_bn
        ... dataset: {name: digits}
        ... objective: {metric: val_accuracy, direction: maximize}
        ... budget: {max_epochs: 1}
        ... params: {units: 8}
        ... ''', "digits.yaml")
        >>> check_study_data(spec)["train_size"]
        1259
    """
    from hpo.families import get_family

    family = get_family(spec.family)
    family.check_spec(spec)  # the family's own options (e.g. sample_epochs), before the data
    try:
        data = load_dataset(spec.dataset)
    except DataError:
        raise
    except (OSError, ValueError, KeyError, IndexError) as exc:
        # A loader tripping over a user's file is still bad input, not a crash of hpo.
        raise DataError(
            f"dataset {spec.dataset.name!r} could not be loaded: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        family.check_data(data)
    except DataError as exc:
        raise DataError(f"family {spec.family!r} cannot train on this data: {exc}") from None
    summary = data.summary()
    if not len(data.train) or not len(data.validation):
        raise DataError(
            f"dataset {spec.dataset.name!r} has {len(data.train)} training and "
            f"{len(data.validation)} validation examples: trials need both"
        )
    return summary


def describe(summary: dict[str, Any]) -> str:
    """One line for the terminal: sizes, input shape, classes.

    Example:
        >>> describe({"dataset": "digits", "task": "classification", "train_size": 10,
        ...           "validation_size": 2, "test_size": 3, "input_shape": [8, 8, 1],
        ...           "num_classes": 10})
        'data: digits (classification): 10 train / 2 validation / 3 test, input 8x8x1, 10 classes'
    """
    shape = "x".join(str(d) for d in summary["input_shape"]) or "scalar"
    unit = "tokens" if summary["task"] == "language_model" else "classes"
    classes = f", {summary['num_classes']} {unit}" if summary.get("num_classes") else ""
    return (
        f"data: {summary['dataset']} ({summary['task']}): {summary['train_size']} train / "
        f"{summary['validation_size']} validation / {summary['test_size']} test, "
        f"input {shape}{classes}"
    )
