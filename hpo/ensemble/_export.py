"""The ensemble as one Keras model, and its export to ``.keras``, SavedModel or MLflow.

The ensemble model is built only from standard Keras layers, so that ``keras.models.load_model``
loads it in safe mode where ``hpo`` is not installed: every member model is a sub-model on one
shared ``Input``; each member's output gets a trailing axis (``Reshape``), the outputs are
concatenated along it (``Concatenate``) and a ``Dense(1, use_bias=False)`` layer whose frozen
kernel holds the weights computes the weighted average, which a last ``Reshape`` brings back to
the members' output shape. No ``Lambda`` layer and no custom class is involved.

Example:
    >>> import keras, numpy as np
    >>> def member(bias):
    ...     inp = keras.Input((2,))
    ...     dense = keras.layers.Dense(2, activation="softmax")
    ...     model = keras.Model(inp, dense(inp))
    ...     dense.set_weights([np.zeros((2, 2)), np.array([0.0, bias])])
    ...     return model
    >>> ens = ensemble_model([member(0.0), member(1.0)], [0.75, 0.25])
    >>> ens.predict(np.zeros((1, 2)), verbose=0).astype(float).round(3).tolist()
    [[0.442, 0.558]]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

# MLflow's per-download progress bars would bury the command's own output.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from hpo.ensemble._errors import EnsembleError

if TYPE_CHECKING:
    import keras

FORMATS = ("keras", "savedmodel", "mlflow")
MODEL_ARTIFACT = "model"  # the MLflow model folder logged in an ensemble's run
KERAS_IN_MLFLOW_MODEL = Path("artifacts") / "model.keras"
LEGACY_KERAS_IN_MLFLOW_MODEL = Path("data") / "model.keras"  # the Keras flavour's place
INFO_FILE = "hpo.json"  # inputs, class names and task of an exported model
INFO_IN_MLFLOW_MODEL = Path("artifacts") / INFO_FILE
TEXT_VOCABULARY = "text_vocabulary.json"  # text classifiers' shared vocabulary, if any


def ensemble_model(
    models: Sequence[keras.Model],
    weights: Sequence[float],
    names: Sequence[str] | None = None,
    name: str = "ensemble",
) -> keras.Model:
    """One Keras model whose output is the weighted average of ``models``' outputs.

    Args:
        models: the members; each takes one input and gives one output, all of the same
            shapes. They are renamed (``names``, default ``member_0``, ...) so that their
            layer names cannot clash.
        weights: one weight per member (non-negative, summing to 1).
        names: names of the members inside the ensemble.
        name: the ensemble model's name.

    Raises:
        EnsembleError: members with several inputs or outputs, or of different shapes.
    """
    import keras

    if len(models) != len(weights) or not models:
        raise EnsembleError(f"{len(models)} member models for {len(weights)} weights")
    names = list(names or [f"member_{i}" for i in range(len(models))])
    first = models[0]
    for model, label in zip(models, names, strict=True):
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise EnsembleError(
                f"member {label} has {len(model.inputs)} inputs and {len(model.outputs)} "
                "outputs; an exported ensemble needs members with one of each"
            )
        for what, a, b in (
            ("input", model.inputs[0].shape, first.inputs[0].shape),
            ("output", model.outputs[0].shape, first.outputs[0].shape),
        ):
            if tuple(a[1:]) != tuple(b[1:]):
                raise EnsembleError(
                    f"member {label} has {what} shape {tuple(a)} but member {names[0]} has "
                    f"{tuple(b)}; one exported model needs members that read the same inputs "
                    "and give outputs of the same shape"
                )
    out_shape = tuple(int(d) for d in first.outputs[0].shape[1:])
    inputs = keras.Input(
        tuple(first.inputs[0].shape[1:]), dtype=first.inputs[0].dtype, name="inputs"
    )
    expanded = []
    for i, (model, label) in enumerate(zip(models, names, strict=True)):
        model.name = _layer_name(label)
        model.trainable = False
        expanded.append(keras.layers.Reshape((*out_shape, 1), name=f"expand_{i}")(model(inputs)))
    stacked = (
        keras.layers.Concatenate(axis=-1, name="stack")(expanded)
        if len(expanded) > 1
        else expanded[0]
    )
    combine = keras.layers.Dense(1, use_bias=False, trainable=False, name="weighted_average")
    averaged = combine(stacked)
    combine.set_weights([np.asarray(weights, dtype=np.float32).reshape(-1, 1)])
    outputs = keras.layers.Reshape(out_shape, name="probabilities")(averaged)
    return keras.Model(inputs, outputs, name=name)


def _layer_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "member"


def nonstandard_classes(model: keras.Model) -> list[str]:
    """Classes in ``model``'s saved configuration that are not part of Keras itself.

    A file holding such a class (a custom layer registered by a family, as the VAE's
    sampling layer) loads only where the code defining it is importable.
    """
    import keras

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "check.keras"
        keras.saving.save_model(model, path)
        config = json.loads(zipfile.ZipFile(path).read("config.json"))
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            module = node.get("module")
            # Keras' own classes live in keras.*; anything else needs its code installed.
            if isinstance(module, str) and "class_name" in node and module.split(".")[0] != "keras":
                found.add(f"{module}.{node['class_name']}")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return sorted(found)


def check_standard(model: keras.Model) -> None:
    """Raise :class:`EnsembleError` if ``model`` needs code outside Keras to load."""
    custom = nonstandard_classes(model)
    if custom:
        raise EnsembleError(
            "the ensemble cannot be one standard Keras file: members use custom classes "
            f"({', '.join(custom)}), which load only where their code is installed; VAE "
            "members and other custom-layer models cannot be exported this way"
        )


def model_info(inputs: Any, class_names: Sequence[str] | None, task: str) -> dict[str, Any]:
    """What ``hpo.json`` says beside an exported model: its raw inputs (kind, shape, dtype,
    in words, feature names; not the transformation, which is inside the model), its class
    names and task."""
    doc = inputs.to_json()
    doc.pop("steps", None)
    return {"inputs": doc, "class_names": list(class_names or []) or None, "task": task}


def input_example(inputs: Any) -> Any:
    """A small valid input for the MLflow signature: a row of training means for tables."""
    import pandas as pd

    steps = {s["op"]: s for s in inputs.steps}
    shape = tuple(int(d) for d in inputs.shape)
    if inputs.kind == "tabular":
        mean = steps.get("normalize", {}).get("mean")
        values = np.asarray(mean if mean is not None else np.zeros(int(np.prod(shape))))
        names = list(inputs.feature_names) or [f"f{i}" for i in range(values.size)]
        return pd.DataFrame([values.reshape(-1).tolist()], columns=names)
    if inputs.kind == "text":
        return pd.DataFrame({"text": ["an example document"]})
    if inputs.kind == "tokens":
        vocabulary = steps["string_lookup"]["vocabulary"]
        return np.asarray([[vocabulary[i % len(vocabulary)] for i in range(shape[0])]], dtype=str)
    if inputs.kind == "sequence":
        low = 1.0 - float(steps["rescale"]["offset"])
        return np.full((1, *shape), low, dtype=np.float32)
    # Images of 0-255 pixel values are held as bytes (uint8): MLflow's schema enforcement would
    # refuse them against a float32 example, so the example (and signature) is uint8 then.
    scale = steps.get("rescale", {}).get("scale")
    pixels = inputs.kind == "image" and scale is not None and round(1 / float(scale)) == 255
    return np.zeros((1, *shape), dtype=np.uint8 if pixels else np.float32)


def save_mlflow_model(
    model: keras.Model,
    path: Path,
    inputs: Any,
    class_names: Sequence[str] | None,
    task: str,
) -> None:
    """Save ``model`` as an MLflow pyfunc model folder that takes raw inputs.

    ``inputs`` is the members' :class:`hpo.inputs.InputSpec`. The folder holds the ``.keras``
    file and ``hpo.json`` (:func:`model_info`) under
    ``artifacts/``, and ``pyfunc_model.py``, which MLflow runs to load them (models from code:
    no hpo needed to serve it), with a signature and an input example for the raw inputs.
    """
    import keras
    import mlflow
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    from hpo.ensemble import pyfunc_model

    info = model_info(inputs, class_names, task)
    example = input_example(inputs)
    loaded = pyfunc_model.RawInputsModel()
    loaded.model, loaded.inputs, loaded.class_names = model, info["inputs"], info["class_names"]
    signature = infer_signature(example, loaded.predict(None, example))
    with tempfile.TemporaryDirectory(prefix="hpo-mlflow-model-") as tmp:
        keras_path, info_path = Path(tmp) / "model.keras", Path(tmp) / INFO_FILE
        keras.saving.save_model(model, keras_path)
        info_path.write_text(json.dumps(info, ensure_ascii=False), encoding="utf-8")
        # Explicit requirements: inferring them would load the model again in a subprocess.
        mlflow.pyfunc.save_model(
            str(path),
            python_model=str(Path(pyfunc_model.__file__)),
            artifacts={"keras_model": str(keras_path), "info": str(info_path)},
            signature=signature,
            input_example=example,
            pip_requirements=[
                f"keras=={keras.__version__}",
                f"mlflow=={mlflow.__version__}",
                *_backend_requirements(),
                "numpy",
                "pandas",
            ],
        )


def _backend_requirements() -> list[str]:
    from importlib import metadata

    for dist in ("tensorflow-cpu", "tensorflow"):
        try:
            return [f"{dist}=={metadata.version(dist)}"]
        except metadata.PackageNotFoundError:
            continue
    return []


def keras_file(model_dir: Path) -> Path:
    """The ``.keras`` file of an exported MLflow model folder (pyfunc, or the Keras flavour
    of versions registered before ensembles took raw inputs)."""
    for candidate in (KERAS_IN_MLFLOW_MODEL, LEGACY_KERAS_IN_MLFLOW_MODEL):
        if (model_dir / candidate).is_file():
            return model_dir / candidate
    raise EnsembleError(f"{model_dir}: the MLflow model folder holds no .keras file")


# -- registered ensembles --------------------------------------------------------------------


def registry_client(name: str, tracking_uri: str | None) -> Any:
    """The MLflow client of the tracking store that should hold registered ensemble ``name``.

    A local tracking file that does not exist is not created just to look: no ensemble is there.
    """
    from hpo import tracking
    from hpo.storage import store_exists

    uri = tracking.resolve_tracking_uri(tracking_uri)
    if not store_exists(uri):
        raise EnsembleError(f"no ensemble named {name!r}: the tracking store {uri} does not exist")
    return tracking.client(uri)


def registered_version(client: Any, name: str, version: int | None = None) -> Any:
    """The registered version ``version`` of ensemble ``name`` (the latest when None)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{_quote(name)}'")
    except MlflowException as exc:
        raise EnsembleError(f"cannot read the model registry: {exc.message}") from None
    if not versions:
        raise EnsembleError(f"no registered ensemble named {name!r}")
    if version is None:
        return max(versions, key=lambda v: int(v.version))
    for v in versions:
        if int(v.version) == version:
            return v
    known = ", ".join(sorted((str(v.version) for v in versions), key=int))
    raise EnsembleError(f"ensemble {name!r} has no version {version}; it has {known}")


def _quote(name: str) -> str:
    return name.replace("'", "\\'")


def download_model_dir(client: Any, mv: Any, dest: Path) -> Path:
    """Download the MLflow model folder of a registered version into ``dest``."""
    if not mv.run_id:
        raise EnsembleError(f"version {mv.version} of {mv.name!r} has no run")
    if mv.tags.get("hpo.exportable") == "false":
        raise EnsembleError(
            f"version {mv.version} of {mv.name!r} was registered without a model: "
            f"{mv.tags.get('hpo.export_problem', 'its members cannot be combined into one')}"
        )
    local = Path(client.download_artifacts(mv.run_id, MODEL_ARTIFACT, str(dest)))
    try:
        keras_file(local)
    except EnsembleError:
        raise EnsembleError(
            f"version {mv.version} of {mv.name!r}: its run holds no model"
        ) from None
    return local


def parse_registered_ref(ref: str) -> tuple[str, int | None]:
    """``NAME``, ``NAME:VERSION`` or ``models:/NAME/VERSION``.

    Example:
        >>> parse_registered_ref("digits-ens:3"), parse_registered_ref("models:/digits-ens/2")
        (('digits-ens', 3), ('digits-ens', 2))
    """
    if ref.startswith("models:/"):
        name, _, version = ref[len("models:/") :].partition("/")
        return name, int(version) if version.isdigit() else None
    name, sep, version = ref.rpartition(":")
    if sep and version.isdigit() and name:
        return name, int(version)
    return ref, None


def export_ensemble(
    name: str,
    output: str | Path,
    fmt: str = "keras",
    version: int | None = None,
    tracking_uri: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write registered ensemble ``name`` (its latest version, or ``version``) to ``output``.

    Formats: ``keras``, one ``.keras`` file that loads with ``keras.models.load_model`` in safe
    mode without hpo, with ``NAME.hpo.json`` beside it (its inputs and class names);
    ``savedmodel``, a TensorFlow SavedModel for serving (``model.export``), ``hpo.json``
    inside; ``mlflow``, an MLflow model folder (``mlflow.pyfunc.load_model``,
    ``mlflow models serve``). All of them take raw inputs.

    Nothing is replaced before everything was checked and the new export is complete: it is
    written next to ``output`` and then moved into place. ``overwrite`` replaces an earlier
    export only (a ``.keras`` file, or a folder holding an MLflow model or a SavedModel).

    Example:
        >>> export_ensemble("digits-ens", "ens.keras")  # doctest: +SKIP
        PosixPath('ens.keras')
    """

    if fmt not in FORMATS:
        raise EnsembleError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    output = Path(output)
    if fmt == "keras" and output.suffix != ".keras":
        raise EnsembleError(f"{output}: a Keras model file must end in .keras")
    sidecar = info_sidecar(output) if fmt == "keras" else None
    for target in (output, sidecar):
        if target is not None and (target.exists() or target.is_symlink()):
            if not overwrite:
                raise EnsembleError(f"{target} exists; remove it or pass --overwrite")
            if not _is_earlier_export(target):
                raise EnsembleError(
                    f"{target} exists and is not an earlier export (no .keras file, MLflow "
                    "model or SavedModel): refusing to replace it"
                )
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise EnsembleError(f"{output}: the folder {parent} does not exist")
    client = registry_client(name, tracking_uri)
    mv = registered_version(client, name, version)
    with tempfile.TemporaryDirectory(prefix="hpo-export-") as tmp:
        model_dir = download_model_dir(client, mv, Path(tmp) / "download")
        info = _read_info(model_dir)
        staged = Path(tmp) / "staged"
        if fmt == "mlflow":
            shutil.copytree(model_dir, staged)
        elif fmt == "keras":
            shutil.copyfile(keras_file(model_dir), staged)
        else:
            from hpo.tracking.models import load_keras_model

            model = load_keras_model(keras_file(model_dir))
            try:
                model.export(str(staged), format="tf_saved_model", verbose=False)
            except (ImportError, ValueError, NotImplementedError) as exc:
                raise EnsembleError(f"cannot write a SavedModel: {exc}") from None
            if info is not None:
                (staged / INFO_FILE).write_text(json.dumps(info, ensure_ascii=False))
        try:
            # Stage beside the target (same file system), then move into place.
            with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=parent) as near:
                _replace(Path(shutil.move(str(staged), Path(near) / "new")), output)
                if sidecar is not None and info is not None:
                    side = Path(near) / "info.json"
                    side.write_text(json.dumps(info, ensure_ascii=False, indent=1))
                    _replace(side, sidecar)
        except OSError as exc:
            raise EnsembleError(f"cannot write {output}: {exc.strerror or exc}") from None
    return output


def info_sidecar(path: Path) -> Path:
    """``NAME.hpo.json`` beside ``NAME.keras``: the file's inputs and class names."""
    return path.with_suffix(".hpo.json")


def _read_info(model_dir: Path) -> dict[str, Any] | None:
    path = model_dir / INFO_IN_MLFLOW_MODEL
    if not path.is_file():
        return None
    return dict(json.loads(path.read_text(encoding="utf-8")))


def _is_earlier_export(path: Path) -> bool:
    if path.is_symlink():
        return False
    if path.is_file():
        return path.suffix in (".keras", ".json")
    return (path / "MLmodel").is_file() or (path / "saved_model.pb").is_file()


def _replace(new: Path, target: Path) -> None:
    """Put ``new`` where ``target`` is; an old folder is removed only once ``new`` is there."""
    if target.is_dir():
        old = new.with_name(new.name + ".old")
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)


# -- predictions -------------------------------------------------------------------------------
