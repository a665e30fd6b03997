"""Text samples of a language model in different phases of training, stored with its trial.

After chosen epochs a ``char_lstm`` or ``word_lstm`` trial writes a short sample per
temperature and stores it in its MLflow run as ``samples/epoch_003_t0.5.txt`` (epoch 3,
temperature 0.5): the text alone, UTF-8, readable in the MLflow UI. Early samples repeat the
most frequent tokens; later ones take on the corpus's words, layout and grammar.

Three parameters, constants of the space's ``params`` (searching them would make no sense), set
what is sampled; a missing one takes the default in brackets:

* ``sample_epochs`` [``"first, middle, last"``]: the epochs (counted from 1) after which samples
  are written: epoch numbers and the words ``first``, ``middle`` (epoch ``(max_epochs + 1) //
  2``) and ``last`` (``budget.max_epochs``), comma-separated, or a single number, or ``all``,
  or ``none`` (no samples);
* ``sample_temperatures`` [``"0.2, 0.5, 1.0, 1.2"``, the course's]: one sample per temperature
  (above 0), a number or comma-separated numbers;
* ``sample_length`` [200 characters for ``char_lstm``, 50 tokens for ``word_lstm``]: tokens per
  sample, at most :data:`MAX_LENGTH`.

Each sample continues the vocabulary's context (training text that ends a paragraph, see
:mod:`hpo.families.generation`), with the same random draws every epoch, so that two epochs'
samples differ by the model alone. All temperatures are generated in one batch: ``length``
predictions per sampled epoch (four 200-character samples of a 64-unit LSTM took 1.2 to 4 s on a
shared 2-core CPU, TensorFlow or JAX).
A pruned trial has the samples of the epochs it reached.

Example:
    >>> plan = sample_plan({"sample_epochs": "first, 3, last", "sample_temperatures": 0.5}, "char")
    >>> sorted(plan.epochs_of(10)), plan.temperatures, plan.length
    ([1, 3, 10], (0.5,), 200)
    >>> sample_file_name(3, 0.5)
    'samples/epoch_003_t0.5.txt'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hpo.errors import UsageError
from hpo.families.generation import Vocabulary, generate_texts, model_predictor

if TYPE_CHECKING:
    import keras

    from hpo.datasets import Dataset
    from hpo.spaces import StudySpec

SAMPLES_DIR = "samples"
SAMPLE_PARAMS = ("sample_epochs", "sample_temperatures", "sample_length")
DEFAULT_EPOCHS = "first, middle, last"
DEFAULT_TEMPERATURES = (0.2, 0.5, 1.0, 1.2)
DEFAULT_LENGTH = {"char": 200, "word": 50}
MAX_LENGTH = 1000
MAX_TEMPERATURES = 10
# The draws of every sampled epoch: the same, so that samples differ by the model alone.
SAMPLE_SEED = 0
_EPOCH_WORDS = ("first", "middle", "last")


class SampleOptionError(UsageError, ValueError):
    """A ``sample_*`` parameter that cannot be used; the message names it and says why."""


@dataclass(frozen=True)
class SamplePlan:
    """Which epochs end with samples, at which temperatures, how long."""

    epochs: tuple[int | str, ...]  # epoch numbers and "first", "middle", "last"; or ("all",)
    temperatures: tuple[float, ...]
    length: int

    def epochs_of(self, max_epochs: int) -> set[int]:
        """The epoch numbers sampled in a trial of ``max_epochs`` epochs (later ones never are).

        Example:
            >>> sorted(SamplePlan(("first", "middle", "last"), (1.0,), 10).epochs_of(3))
            [1, 2, 3]
        """
        every = set(range(1, max_epochs + 1))
        if "all" in self.epochs:
            return every
        named = {"first": 1, "middle": (max_epochs + 1) // 2, "last": max_epochs}
        return {named[e] if isinstance(e, str) else e for e in self.epochs} & every


def sample_plan(hp: Mapping[str, Any], level: str) -> SamplePlan:
    """The sampling parameters of ``hp`` checked, with defaults; :class:`SampleOptionError`.

    Example:
        >>> sample_plan({"sample_epochs": "none"}, "word").epochs
        ()
        >>> sample_plan({"sample_temperatures": "0.5, 0"}, "char")
        Traceback (most recent call last):
        ...
        hpo.families.lm_samples.SampleOptionError: sample_temperatures: temperatures must be \
numbers above 0, e.g. "0.2, 0.5, 1.0", got '0.5, 0'
    """
    return SamplePlan(
        epochs=_epochs(hp.get("sample_epochs", DEFAULT_EPOCHS)),
        temperatures=_temperatures(hp.get("sample_temperatures", DEFAULT_TEMPERATURES)),
        length=_length(hp.get("sample_length", DEFAULT_LENGTH[level])),
    )


def check_sample_params(spec: StudySpec, level: str) -> None:
    """Check a study's ``sample_*`` parameters before it is written (no data, no Keras).

    Each must be a constant at the top level of ``params``, valid, and name no epoch after
    ``budget.max_epochs``.
    """
    values: dict[str, Any] = {}
    for node in spec.space.nodes():
        if node.key not in SAMPLE_PARAMS:
            continue
        if node.searched or node.conditions:
            raise SampleOptionError(
                f"{spec.filename}: params.{node.name}: give {node.key} one value at the top "
                f'level of params (e.g. {node.key}: "{_example(node.key)}"); it says what '
                "is sampled, it is not searched"
            )
        values[node.key] = getattr(node.param, "value", None)
    try:
        plan = sample_plan(values, level)
    except SampleOptionError as exc:
        raise SampleOptionError(f"{spec.filename}: params.{exc}") from None
    late = sorted(e for e in plan.epochs if isinstance(e, int) and e > spec.budget.max_epochs)
    if late:
        raise SampleOptionError(
            f"{spec.filename}: params.sample_epochs: epoch {late[0]} comes after the last one "
            f"(budget.max_epochs is {spec.budget.max_epochs}); use 'last' for the last epoch"
        )


def sample_file_name(epoch: int, temperature: float) -> str:
    return f"{SAMPLES_DIR}/epoch_{epoch:03d}_t{float(temperature)}.txt"


def epoch_samples(
    model: keras.Model, data: Dataset, plan: SamplePlan, epoch: int, max_epochs: int
) -> dict[str, bytes]:
    """The sample files of ``epoch`` (empty unless the plan samples it)."""
    if epoch not in plan.epochs_of(max_epochs) or not plan.temperatures:
        return {}
    vocabulary = Vocabulary.from_dataset(data)
    texts = generate_texts(
        model_predictor(model),
        vocabulary,
        vocabulary.level,
        "",
        plan.length,
        plan.temperatures,
        np.random.default_rng(SAMPLE_SEED),
        maxlen=vocabulary.maxlen,
    )
    return {
        sample_file_name(epoch, t): text.encode("utf-8")
        for t, text in zip(plan.temperatures, texts, strict=True)
    }


def _epochs(value: Any) -> tuple[int | str, ...]:
    if isinstance(value, str) and value.strip().lower() == "none":
        return ()
    if isinstance(value, str) and value.strip().lower() == "all":
        return ("all",)
    items = _items(value)
    out: list[int | str] = []
    for item in items:
        word = item.strip().lower() if isinstance(item, str) else None
        if word in _EPOCH_WORDS:
            out.append(word)
            continue
        number = _whole(item)
        if number is None or number < 1:
            raise SampleOptionError(
                f"sample_epochs: expected epoch numbers (from 1) and the words first, middle, "
                f'last, comma-separated, or all or none (e.g. "{DEFAULT_EPOCHS}"), got {value!r}'
            )
        out.append(number)
    if not out:
        raise SampleOptionError(f"sample_epochs: no epoch given ({value!r}); write none for none")
    return tuple(dict.fromkeys(out))


def _temperatures(value: Any) -> tuple[float, ...]:
    out = []
    for item in _items(value):
        try:
            t = float(item.strip() if isinstance(item, str) else item)
        except (TypeError, ValueError):
            t = math.nan
        if isinstance(item, bool) or not math.isfinite(t) or t <= 0:
            raise SampleOptionError(
                'sample_temperatures: temperatures must be numbers above 0, e.g. "0.2, 0.5, '
                f'1.0", got {value!r}'
            )
        out.append(t)
    if not out or len(out) > MAX_TEMPERATURES:
        raise SampleOptionError(
            f"sample_temperatures: give 1 to {MAX_TEMPERATURES} temperatures, got {value!r}"
        )
    return tuple(dict.fromkeys(out))


def _length(value: Any) -> int:
    number = _whole(value)
    if number is None or not 1 <= number <= MAX_LENGTH:
        raise SampleOptionError(
            f"sample_length: expected a whole number of tokens from 1 to {MAX_LENGTH}, "
            f"got {value!r}"
        )
    return number


def _items(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [part for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def _whole(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _example(key: str) -> str:
    return {"sample_epochs": DEFAULT_EPOCHS, "sample_temperatures": "0.2, 0.5, 1.0, 1.2"}.get(
        key, "200"
    )
