"""Find and load a trial's trained model: from a file, a folder, or a study in the store.

Models are always loaded with Keras' safe mode on: a file holding a ``Lambda`` layer or other
arbitrary code is refused, and so are legacy HDF5 (``.h5``) files.

Example:
    >>> parse_model_ref("image_cnn:7")
    ('image_cnn', 7)
    >>> parse_model_ref("image_cnn")
    ('image_cnn', None)
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo.errors import UsageError
from hpo.tracking.artifacts import MODEL_FILE, PARAMS_FILE

if TYPE_CHECKING:
    import keras


_TEMP_DIRS: list[Path] = []


def _temp_dir(prefix: str) -> Path:
    """A temporary folder that is removed when the process exits (downloads, links)."""
    if not _TEMP_DIRS:
        atexit.register(remove_temp_dirs)
    path = Path(tempfile.mkdtemp(prefix=prefix))
    _TEMP_DIRS.append(path)
    return path


def remove_temp_dirs() -> None:
    """Remove the temporary folders made so far (also run at exit)."""
    while _TEMP_DIRS:
        shutil.rmtree(_TEMP_DIRS.pop(), ignore_errors=True)


class ModelError(UsageError, ValueError):
    """A model cannot be found, or is refused (unsafe or legacy format)."""


@dataclass
class TrialModel:
    """A trained model with the files its trial stored beside it."""

    directory: Path
    family: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    study: str | None = None
    trial_number: int | None = None
    run_id: str | None = None

    @property
    def model_path(self) -> Path:
        return self.directory / MODEL_FILE

    def load(self) -> keras.Model:
        """The trained model, reading the arrays the trial trained on (not raw inputs)."""
        from hpo.inputs import core_model

        return core_model(load_keras_model(self.model_path))

    def read_json(self, name: str) -> Any:
        path = self.directory / name
        if not path.exists():
            raise ModelError(f"{name} is not stored with this model ({self.directory})")
        return json.loads(path.read_text())

    def has(self, name: str) -> bool:
        return (self.directory / name).exists()


def load_keras_model(path: str | Path) -> keras.Model:
    """Load a ``.keras`` file with safe mode on; refuse legacy and unsafe files clearly."""
    path = Path(path)
    if path.suffix.lower() in {".h5", ".hdf5"}:
        raise ModelError(f"{path}: legacy HDF5 model files are refused; save as .keras")
    if not path.exists():
        raise ModelError(f"{path}: no such model file")
    import keras

    # Importing the families registers their custom layers as serializable (e.g. VAE sampling).
    _register_family_layers()
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except ValueError as exc:
        if "safe_mode" in str(exc) or "Lambda" in str(exc):
            raise ModelError(
                f"{path}: refused: it holds code that Keras can only load unsafely (for "
                "example a Lambda layer); hpo loads models in safe mode only"
            ) from None
        raise


def _register_family_layers() -> None:
    import importlib

    for module in ("hpo.families.vae", "hpo.families.style_transfer"):
        with contextlib.suppress(ImportError):
            importlib.import_module(module)


def parse_model_ref(ref: str) -> tuple[str, int | None]:
    """``STUDY`` (its best trial) or ``STUDY:TRIAL_NUMBER``."""
    study, sep, number = ref.rpartition(":")
    if sep and number.isdigit():
        return study, int(number)
    return ref, None


def resolve_trial_model(
    ref: str, storage: str | None = None, tracking_uri: str | None = None
) -> TrialModel:
    """A model by file or folder path, or ``STUDY`` / ``STUDY:TRIAL`` from the study store.

    Artifacts of a stored trial are downloaded from MLflow into a temporary folder.
    """
    path = Path(ref)
    if path.exists():
        directory = path if path.is_dir() else path.parent
        if path.is_file() and path.name != MODEL_FILE:
            # A lone .keras file: give it the folder layout the rest expects.
            tmp = _temp_dir("hpo-model-")
            (tmp / MODEL_FILE).symlink_to(path.resolve())
            directory = tmp
        params = (
            json.loads((directory / PARAMS_FILE).read_text())
            if (directory / PARAMS_FILE).exists()
            else {}
        )
        return TrialModel(directory=directory, params=params)
    return _from_store(ref, storage, tracking_uri)


def _from_store(ref: str, storage: str | None, tracking_uri: str | None) -> TrialModel:
    import optuna
    from optuna.trial import TrialState

    from hpo import tracking
    from hpo.storage import open_storage, resolve_storage, store_exists
    from hpo.storage.studies import RUN_ID_ATTR, StudyError, load_config

    study_name, number = parse_model_ref(ref)
    url = resolve_storage(storage)
    if not store_exists(url):  # not created just to look
        raise ModelError(
            f"{ref!r} is neither a model file nor a study: the study store {url} does not exist"
        )
    store = open_storage(url)
    try:
        config = load_config(store, study_name)
    except StudyError as exc:
        raise ModelError(f"{ref!r} is neither a model file nor a study: {exc}") from None
    study = optuna.load_study(study_name=study_name, storage=store)
    if number is None:
        from hpo.storage.feasibility import best_trials

        best = best_trials(study)  # feasible ones only, when the space has constraints
        if not best:
            meets = " that meets its constraints" if config.spec().constraints else ""
            raise ModelError(f"study {study_name!r} has no complete trial{meets}")
        trial = best[0]
    else:
        matches = [t for t in study.get_trials(deepcopy=False) if t.number == number]
        if not matches:
            raise ModelError(f"study {study_name!r} has no trial {number}")
        trial = matches[0]
        if trial.state != TrialState.COMPLETE:
            raise ModelError(
                f"trial {number} of {study_name!r} is {trial.state.name}, "
                "not COMPLETE: it stored no model"
            )
    run_id = trial.user_attrs.get(RUN_ID_ATTR)
    uri = tracking_uri or config.tracking_uri
    if not run_id or not uri:
        raise ModelError(f"trial {trial.number} of {study_name!r} has no MLflow run")
    directory = _temp_dir(f"hpo-{trial.number}-")
    # One progress bar per artifact is noise on a terminal; the user asked for a model.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = tracking.client(uri)
    for artifact in client.list_artifacts(run_id):
        if not artifact.is_dir:
            client.download_artifacts(run_id, artifact.path, str(directory))
    if not (directory / MODEL_FILE).exists():
        from hpo.tracking.retention import removal_note

        why = removal_note(client.get_run(run_id).data.tags)
        if why:
            raise ModelError(
                f"trial {trial.number} of {study_name!r}: {why}; its metrics, parameters and "
                f"curves remain in MLflow run {run_id}"
            )
        raise ModelError(f"trial {trial.number} of {study_name!r}: no {MODEL_FILE} in its run")
    return TrialModel(
        directory=directory,
        family=config.spec().family,
        params=trial.params,
        study=study_name,
        trial_number=trial.number,
        run_id=run_id,
    )
