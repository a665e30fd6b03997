"""hpo: hyperparameter optimization for Keras models.

One search-space file drives Optuna and hyperopt; workers train trials from a shared study
store and log them to MLflow; the best models end as one exported weighted ensemble.
Heavy libraries (TensorFlow, MLflow) are imported only where they are used: ``import hpo``
imports none of them, and the Python API (:mod:`hpo.api`) is loaded on first use.

Example:
    >>> import hpo
    >>> sorted(name for name in hpo.__all__ if "study" in name)
    ['create_study', 'load_study']
    >>> study = hpo.create_study("search_spaces/image_cnn_digits.yaml", trials=2)  # doctest: +SKIP
    >>> study.run()  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpo.errors import HpoError, UsageError

__version__ = "0.1.0"

__all__ = [  # noqa: RUF022 (the API's names, then the eager ones)
    "Ensemble",
    "LocalWorkers",
    "Prediction",
    "RefitResult",
    "Study",
    "StudyOptions",
    "Trial",
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
    "HpoError",
    "UsageError",
    "__version__",
]
# The names loaded from hpo.api on first use (the rest are imported above).
_API = frozenset(__all__) - {"HpoError", "UsageError", "__version__"}

if TYPE_CHECKING:
    from hpo.api import (
        Ensemble,
        LocalWorkers,
        Prediction,
        RefitResult,
        Study,
        StudyOptions,
        Trial,
        WorkersFailedError,
        build_ensemble,
        create_study,
        export_ensemble,
        list_ensembles,
        list_studies,
        load_ensemble,
        load_space,
        load_study,
        refit,
        show_ensemble,
    )


def __getattr__(name: str) -> Any:
    """The API's names, imported from :mod:`hpo.api` on first use (module ``__getattr__``)."""
    if name in _API:
        import hpo.api

        value = getattr(hpo.api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hpo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
