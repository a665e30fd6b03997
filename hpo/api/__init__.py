"""hpo's Python API, re-exported from :mod:`hpo` (``hpo.create_study``...).

Importing it is cheap: TensorFlow, MLflow and Optuna are imported when a function needs them.

* studies: :func:`create_study` (:class:`StudyOptions`), :func:`load_study`,
  :func:`list_studies`, :class:`Study` (``run``, ``status``,
  ``trials``, ``best_trial``, ``report``, ``pause``, ``reap``), :class:`Trial` (``load_model``),
  :class:`LocalWorkers` (worker processes started while a study is created);
* ensembles: :func:`build_ensemble`, :func:`load_ensemble`, :class:`Ensemble` (``predict``),
  :func:`export_ensemble`, :func:`list_ensembles`, :func:`show_ensemble`;
* refits: :func:`refit` (:class:`RefitResult`), registered and used like ensembles;
* errors: :class:`HpoError` (``exit_code``), :class:`UsageError`.
"""

from hpo.api._ensembles import (
    Ensemble,
    Prediction,
    RefitResult,
    build_ensemble,
    export_ensemble,
    list_ensembles,
    load_ensemble,
    refit,
    show_ensemble,
)
from hpo.api._setup import StudyOptions, load_space
from hpo.api._study import Study, Trial, create_study, list_studies, load_study
from hpo.api._workers import LocalWorkers, WorkersFailedError
from hpo.errors import HpoError, UsageError

__all__ = [
    "Ensemble",
    "HpoError",
    "LocalWorkers",
    "Prediction",
    "RefitResult",
    "Study",
    "StudyOptions",
    "Trial",
    "UsageError",
    "WorkersFailedError",
    "build_ensemble",
    "create_study",
    "export_ensemble",
    "list_ensembles",
    "list_studies",
    "load_ensemble",
    "load_space",
    "load_study",
    "refit",
    "show_ensemble",
]
