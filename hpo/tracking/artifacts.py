"""The files a trial's MLflow run holds: written by :mod:`hpo.workers.runner`, read by
:mod:`hpo.tracking.models`
and :mod:`hpo.ensemble`. One place, so writer and readers cannot drift apart.

Example:
    >>> from hpo.tracking.artifacts import MODEL_FILE, PREDICTIONS_FILE
    >>> MODEL_FILE, PREDICTIONS_FILE
    ('model.keras', 'predictions.npz')
"""

from __future__ import annotations

MODEL_FILE = "model.keras"
"""The trained model, as ``model.save`` writes it."""
PREDICTIONS_FILE = "predictions.npz"
"""Validation predictions, validation and test targets (language models: ``*_rows`` too)."""
TEST_PREDICTIONS_FILE = "test_predictions.npz"
"""Test predictions, written by the first ensemble build that scores the trial."""
PARAMS_FILE = "params.json"
"""The trial's parameters, constants included, as its family's ``build`` saw them."""
DATASET_FILE = "dataset.json"
"""The dataset summary: task, classes, split sizes and the fingerprint ensembles compare."""
HISTORY_FILE = "history.json"
"""Every epoch's logged metrics and seconds."""
GENERATED_IMAGE_FILE = "generated.png"
"""The one image a generating family made (``style_transfer``): the Pareto grid reads it."""
CURVES_FILE = "learning_curves.png"
"""A plot of the metrics against the epoch."""
CHECKPOINT_FILE = "checkpoint.json"
"""The last checkpoint: its epoch, history, RNG state and the weights file that holds it."""
CHECKPOINT_WEIGHTS_FILES = ("checkpoint-a.weights.h5", "checkpoint-b.weights.h5")
"""Weights and optimizer state, written in turn: the one :data:`CHECKPOINT_FILE` names is whole."""
CHECKPOINT_BEST_FILES = ("checkpoint-a.best.npz", "checkpoint-b.best.npz")
"""The weights of the best epoch so far when it is an earlier one, written beside the weights
file of the same letter: a resumed trial can still keep that epoch."""

RETAINABLE_FILES = (
    MODEL_FILE,
    PREDICTIONS_FILE,
    TEST_PREDICTIONS_FILE,
    CHECKPOINT_FILE,
    *CHECKPOINT_WEIGHTS_FILES,
    *CHECKPOINT_BEST_FILES,
)
"""The big files of a trial's run: what the retention policy deletes from the trials it does
not keep (:mod:`hpo.tracking.retention`); the model first. Parameters, dataset summary,
history, curves and the run's metrics always stay."""
ARTIFACTS_DELETED_TAG = "hpo.artifacts_deleted"
"""Set on a trial's run whose :data:`RETAINABLE_FILES` the retention policy deleted: why."""
ARTIFACTS_FREED_TAG = "hpo.artifacts_freed_bytes"
"""The bytes (as MLflow listed them) that deleting them freed."""
