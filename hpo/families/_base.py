"""The model-family contract: build a compiled Keras model from one trial's parameters.

A family is what Keras Tuner calls a HyperModel: ``build(hp, data)`` reads the sampled
parameters and returns a compiled model. Training and prediction have defaults that suit
``model.fit``-style models; families with other needs override them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from hpo.datasets import DataError, Dataset, Split, Task

if TYPE_CHECKING:
    import keras

    from hpo.spaces import Params, StudySpec

# The smallest batch for evaluation and prediction: no gradients are kept, so a larger batch
# costs little memory, and each step's fixed cost is paid fewer times (validation after every
# epoch at batch 32 was about a fifth of a small dense net's training time, bench/trial_steps.py).
EVAL_BATCH_SIZE = 256


class Family(ABC):
    """A model family. Subclass it, or give a plain ``build(hp, data)`` function.

    Example:
        >>> class Tiny(Family):
        ...     name = "tiny"
        ...     tasks = ("classification",)
        ...     def build(self, hp, data):
        ...         import keras
        ...         model = keras.Sequential([keras.Input(data.input_shape),
        ...                                   keras.layers.Flatten(),
        ...                                   keras.layers.Dense(data.num_classes,
        ...                                                      activation="softmax")])
        ...         model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
        ...                       metrics=["accuracy"])
        ...         return model
        >>> Tiny().name
        'tiny'
    """

    name: str = ""
    tasks: ClassVar[tuple[Task, ...]] = ("classification",)
    default_batch_size: ClassVar[int] = 32
    # Whether the model a trial saves takes raw inputs (the dataset's transformation in front
    # of it, hpo.inputs). Off for models whose use is not model.predict on the inputs (a VAE).
    raw_inputs: ClassVar[bool] = True
    # Whether `hpo ensemble build` may combine this family's trials (a generator's outputs
    # are not predictions to average: a GAN).
    ensembles: ClassVar[bool] = True
    # Whether a retry may resume this family's trial from a checkpoint: its ``fit`` honours
    # ``initial_epoch`` and all of its training state is in the model's and optimizer's
    # weights (see hpo.workers.checkpoints).
    resumable: ClassVar[bool] = True

    @abstractmethod
    def build(self, hp: Params, data: Dataset) -> keras.Model:
        """Return a compiled Keras model for these parameters and this data."""

    def check_data(self, data: Dataset) -> None:
        """Raise :class:`DataError` when ``data`` does not suit this family."""
        if data.task not in self.tasks:
            raise DataError(
                f"family {self.name!r} works on {' or '.join(self.tasks)} data, but dataset "
                f"{data.name!r} is {data.task} data"
            )

    def check_spec(self, spec: StudySpec) -> None:
        """Raise a :class:`~hpo.errors.UsageError` when ``spec`` sets this family's own options
        wrongly (before the study is written: no data loaded, no Keras)."""
        return None

    def batch_size(self, hp: Params) -> int:
        return int(hp.get("batch_size", self.default_batch_size))

    def fit(
        self,
        model: keras.Model,
        hp: Params,
        data: Dataset,
        epochs: int,
        callbacks: Sequence[keras.callbacks.Callback],
        initial_epoch: int = 0,
    ) -> None:
        """Train up to ``epochs``; callbacks see validation metrics in ``logs`` every epoch.

        ``initial_epoch``: the epochs a checkpoint restored, not trained again. A family whose
        ``fit`` has no such argument, or that sets ``resumable = False``, is not resumed: its
        retries train from epoch 0.
        """
        batch_size = self.batch_size(hp)
        x, y = data.train.x, self.fit_targets(data.train)
        prebuild(model, x, y)
        model.fit(
            x,
            y,
            validation_data=(data.validation.x, self.fit_targets(data.validation)),
            batch_size=batch_size,
            validation_batch_size=max(EVAL_BATCH_SIZE, batch_size),
            epochs=epochs,
            initial_epoch=initial_epoch,
            callbacks=list(callbacks),
            verbose=0,
        )

    def fit_targets(self, split: Split) -> Any:
        """What :meth:`fit` trains the model to output for ``split.x``: ``split.y``."""
        return split.y

    def extra_artifacts(self, model: keras.Model, hp: Params, data: Dataset) -> dict[str, bytes]:
        """Files a trial stores beside its model (e.g. a vocabulary that generation needs)."""
        return {}

    def epoch_artifacts(
        self, model: keras.Model, hp: Params, data: Dataset, epoch: int, max_epochs: int
    ) -> dict[str, bytes]:
        """Files to store in the trial's run after ``epoch`` (from 1) of at most ``max_epochs``
        (e.g. text samples; a ``/`` in a name is a folder). Runs in the training loop: keep it
        cheap."""
        return {}

    def saved_model(self, model: keras.Model, data: Dataset) -> keras.Model:
        """The model a trial saves: ``model`` behind ``data``'s input transformation, so that
        it takes what users hold (:func:`hpo.inputs.raw_model`), or ``model`` itself when the
        data records none or the family keeps its own inputs (``raw_inputs = False``)."""
        if not self.raw_inputs or data.inputs is None:
            return model
        from hpo.inputs import raw_model

        return raw_model(model, data.inputs)

    def predict(self, model: keras.Model, hp: Params, x: np.ndarray) -> np.ndarray:
        """Model outputs for ``x`` (class probabilities for classifiers)."""
        batch_size = max(EVAL_BATCH_SIZE, self.batch_size(hp))
        return np.asarray(model.predict(x, batch_size=batch_size, verbose=0))


def prebuild(model: keras.Model, x: Any, y: Any) -> None:
    """Create ``model``'s optimizer and metric variables before ``model.fit(x, y)`` does.

    Keras' TensorFlow trainer creates them while tracing the first training step, and
    TensorFlow traces a function that created variables a second time: on a small dense net
    that second trace was a third of the first epoch's time (bench/trial_steps.py). Building
    them first, as Keras itself does under a distribution strategy and on the other backends,
    leaves one trace; the training is the same (the variables start at zero either way).

    Only for a compiled model with Keras' own ``train_step``: a custom step may use other
    optimizers or metrics. Anything unexpected leaves the model to Keras, as without this.
    """
    import keras

    if not getattr(model, "compiled", False) or model.optimizer is None:
        return
    if type(model).train_step is not keras.Model.train_step:
        return
    build = getattr(model, "_symbolic_build", None)  # Keras' own pre-build, a private method
    if build is None:
        return
    try:
        batch = keras.tree.map_structure(lambda a: a[:1], (x, y))
        build(data_batch=(*batch, None))
    except Exception:  # fit builds them itself, as it would have
        return


class FunctionFamily(Family):
    """A family given as a function ``build(hp, data) -> compiled keras.Model``."""

    tasks = ("classification", "binary", "language_model", "reconstruction")

    def __init__(self, name: str, build: Callable[[Any, Dataset], Any]) -> None:
        self._build = build
        self.name = name

    def build(self, hp: Params, data: Dataset) -> keras.Model:
        return self._build(hp, data)
