"""Registered ensembles member by member: predictions from raw text, generation from LMs.

One exported model needs members that read the same inputs. Text classifiers that encode text
differently (``text_dense``'s multi-hot bag of words beside ``text_conv1d``'s token sequences,
or two vocabularies) cannot share one ``Input``, so such an ensemble is registered without a
model; :class:`Predictor` loads its members from their trial runs instead, encodes the text for
each with the vocabulary that member's trial stored (``text_vocabulary.json``) and averages
their probabilities with the ensemble's weights. Language-model ensembles are used the same
way for generation (:mod:`hpo.ensemble._language`).

Example:
    >>> predictor = open_predictor("reuters-ens", want_text=True)  # doctest: +SKIP
    >>> predictor.predict_texts(["oil prices rose"]).argmax(axis=1)  # doctest: +SKIP
    array([19])
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpo.datasets._text import VOCABULARY_ARTIFACT, TextEncoder
from hpo.ensemble._errors import EnsembleError
from hpo.tracking.artifacts import DATASET_FILE, MODEL_FILE

LM_VOCABULARY_FILE = (
    "vocabulary.json"  # hpo.families.generation.VOCABULARY_FILE, without the import
)
CLASSES_FILE = "classes.json"  # class names, in a registered ensemble's model folder
MEMBER_FILES = (MODEL_FILE, VOCABULARY_ARTIFACT, LM_VOCABULARY_FILE, DATASET_FILE)


# -- members of a registered version ---------------------------------------------------------


@dataclass
class MemberFiles:
    """One member of a registered ensemble: its weight and the files its trial stored."""

    study: str
    trial: int
    run_id: str
    weight: float
    directory: Path

    @property
    def label(self) -> str:
        return f"study {self.study!r} trial {self.trial}"

    def has(self, name: str) -> bool:
        return (self.directory / name).is_file()

    def read_json(self, name: str) -> Any:
        return json.loads((self.directory / name).read_text(encoding="utf-8"))


def member_list(client: Any, mv: Any) -> list[tuple[str, int, str, float]]:
    """``(study, trial, run_id, weight)`` of each member, from the ensemble run's parameters."""
    if not mv.run_id:
        raise EnsembleError(f"version {mv.version} of {mv.name!r} has no run")
    params = client.get_run(mv.run_id).data.params
    try:
        members = json.loads(params["members"])
        return [(str(s), int(t), str(r), float(w)) for s, t, r, w in members]
    except (KeyError, ValueError, TypeError):
        raise EnsembleError(
            f"version {mv.version} of {mv.name!r}: its run does not list its members"
        ) from None


def download_members(
    client: Any, mv: Any, dest: Path, files: Sequence[str] = MEMBER_FILES
) -> list[MemberFiles]:
    """Download ``files`` (those each member's run has) of every member into ``dest``.

    Raises:
        EnsembleError: a member's run is gone or holds no model.
    """
    out = []
    for study, trial, run_id, weight in member_list(client, mv):
        where = dest / run_id
        where.mkdir(parents=True, exist_ok=True)
        try:
            names = {a.path for a in client.list_artifacts(run_id)}
        except Exception as exc:
            raise EnsembleError(
                f"member study {study!r} trial {trial} (run {run_id}) cannot be read: {exc}"
            ) from None
        if MODEL_FILE not in names:
            from hpo.tracking.retention import removal_note

            why = removal_note(client.get_run(run_id).data.tags)
            raise EnsembleError(
                f"member study {study!r} trial {trial} (run {run_id}) has no {MODEL_FILE}"
                + (f": {why}" if why else "")
            )
        for name in files:
            if name in names:
                client.download_artifacts(run_id, name, str(where))
        out.append(MemberFiles(study, trial, run_id, weight, where))
    return out


def text_vocabularies(client: Any, run_ids: Sequence[str], dest: Path) -> list[Any]:
    """The ``text_vocabulary.json`` of each run (parsed), or None where it stored none."""
    out: list[Any] = []
    for run_id in run_ids:
        if VOCABULARY_ARTIFACT not in {a.path for a in client.list_artifacts(run_id)}:
            out.append(None)
            continue
        local = client.download_artifacts(run_id, VOCABULARY_ARTIFACT, str(dest / run_id))
        out.append(json.loads(Path(local).read_text(encoding="utf-8")))
    return out


def shared_text_vocabulary(docs: Sequence[Any], labels: Sequence[str]) -> Any:
    """The one text vocabulary every member uses (None when no member reads text).

    Raises:
        EnsembleError: members encode text differently, or only some read text: one exported
            model would feed them all the same inputs.
    """
    if all(d is None for d in docs):
        return None
    first = next(i for i, d in enumerate(docs) if d is not None)
    for doc, label in zip(docs, labels, strict=True):
        if doc is None:
            raise EnsembleError(
                f"member {label} stored no {VOCABULARY_ARTIFACT} but member {labels[first]} "
                "reads text"
            )
    keys = [_encoding_key(d) for d in docs]
    if len(set(keys)) > 1:
        described = "; ".join(
            f"{label}: {_describe(doc)}" for label, doc in zip(labels, docs, strict=True)
        )
        raise EnsembleError(
            f"members encode text differently ({described}); one exported model has one "
            "input, so `hpo predict NAME --input docs.txt` encodes the text for each member "
            "instead"
        )
    return docs[first]


def write_predict_files(model_dir: Path, vocabulary: Any, class_names: Any) -> None:
    """Put what ``hpo predict`` needs beside an ensemble's model: the members' shared text
    vocabulary (``text_vocabulary.json``) and the class names (``classes.json``)."""
    if vocabulary is not None:
        (model_dir / VOCABULARY_ARTIFACT).write_text(
            json.dumps(vocabulary, ensure_ascii=False), encoding="utf-8"
        )
    if class_names:
        (model_dir / CLASSES_FILE).write_text(
            json.dumps({"class_names": list(class_names)}, ensure_ascii=False), encoding="utf-8"
        )


def _encoding_key(doc: Any) -> tuple[Any, ...]:
    return (
        doc.get("encoding"),
        doc.get("maxlen"),
        json.dumps(doc.get("tokenizer"), sort_keys=True),
        tuple(doc.get("vocabulary") or ()),
    )


def _describe(doc: Any) -> str:
    try:
        return TextEncoder.from_json(doc).describe()
    except ValueError as exc:
        return f"unreadable vocabulary ({exc})"


# -- predictions ------------------------------------------------------------------------------


@dataclass
class Part:
    """One model of a predictor, with its weight and what reads its inputs: ``info`` (the
    ``hpo.json`` of a model that takes raw inputs) or, for a text classifier saved before
    models took raw inputs, its ``encoder``."""

    model: Any
    weight: float
    label: str
    encoder: TextEncoder | None = None
    info: dict[str, Any] | None = None


@dataclass
class Predictor:
    """A model, or the members of an ensemble, with what turns inputs into probabilities."""

    parts: list[Part]
    source: str
    class_names: list[str] | None = None
    members: list[MemberFiles] = field(default_factory=list)

    @property
    def takes_text(self) -> bool:
        """Whether raw text can be encoded for every part."""
        return all(
            p.encoder is not None
            or (p.info is not None and p.info["inputs"]["kind"] in ("text", "tokens"))
            for p in self.parts
        )

    def predict_path(
        self, path: Path, text_column: str = "text"
    ) -> tuple[np.ndarray, list[str] | None]:
        """``(probabilities, example names or None)`` for the inputs in ``path``: raw inputs
        as the model's ``hpo.json`` describes them, else (models saved before models took raw
        inputs) encoded arrays, or text for text classifiers with a stored vocabulary."""
        from hpo.ensemble._predict import model_probabilities
        from hpo.ensemble._user_inputs import is_text_input, read_model_inputs, read_texts

        if len(self.parts) == 1 and self.parts[0].info is not None:
            x, names = read_model_inputs(path, self.parts[0].info, text_column)
            return model_probabilities(self.parts[0].model, x), names
        text = is_text_input(path)
        if text is None:  # a CSV: text for a text model, numbers otherwise
            text = self.takes_text
        if text:
            texts, names = read_texts(path, text_column)
            return self.predict_texts(texts), names
        return self.predict_file(path), None

    def predict_inputs(self, x: Any) -> np.ndarray:
        """Probabilities for raw inputs held in memory: documents (a list of strings), or an
        array of examples (images, rows of feature values), reshaped to what the model takes
        when only the layout differs (flat 64 values for an 8x8 image)."""
        from hpo.ensemble._predict import model_probabilities

        single = self.parts[0] if len(self.parts) == 1 and self.parts[0].info else None
        if isinstance(x, str):
            raise EnsembleError("give a list of documents (or a file's Path), not one string")
        if isinstance(x, list | tuple) and x and all(isinstance(t, str) for t in x):
            if single is not None:
                return model_probabilities(single.model, np.asarray(list(x), dtype=object))
            return self.predict_texts(list(x))
        arr = np.asarray(x)
        if arr.ndim == 0 or len(arr) == 0:
            raise EnsembleError("no examples to predict")
        if arr.dtype.kind not in "biuf":
            raise EnsembleError(f"inputs of dtype {arr.dtype} are neither numbers nor documents")

        def fitted(shape: Sequence[Any]) -> np.ndarray:
            want = tuple(int(d) for d in shape)
            if arr.shape[1:] != want and arr[0].size == int(np.prod(want)):
                return arr.reshape((len(arr), *want))
            return arr

        if single is not None:
            assert single.info is not None
            return model_probabilities(single.model, fitted(single.info["inputs"]["shape"]))
        return self._combine([fitted(p.model.inputs[0].shape[1:]) for p in self.parts])

    def predict_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities for raw documents, each part fed its own encoding of them."""
        missing = [p.label for p in self.parts if p.encoder is None]
        if missing:
            raise EnsembleError(
                f"{self.source}: {', '.join(missing)} has no text vocabulary "
                f"({VOCABULARY_ARTIFACT}), so raw text cannot be turned into its inputs; "
                "give encoded inputs (.npz, .npy, CSV of numbers)"
                + ("" if len(self.parts) > 1 else " or the vocabulary with --vocabulary")
            )
        return self._combine(
            [
                np.asarray(texts, dtype=object)
                if p.encoder is _RAW_TEXT
                else p.encoder.encode(texts)
                for p in self.parts
                if p.encoder
            ]
        )

    def predict_file(self, path: Path) -> np.ndarray:
        """Probabilities for the numeric inputs in ``path`` (see :func:`read_inputs`)."""
        from hpo.ensemble._predict import read_inputs

        return self._combine(
            [read_inputs(path, tuple(p.model.inputs[0].shape[1:])) for p in self.parts]
        )

    def _combine(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        from hpo.ensemble._predict import model_probabilities

        if len(self.parts) == 1:
            return model_probabilities(self.parts[0].model, inputs[0])
        total = np.zeros(())
        for part, x in zip(self.parts, inputs, strict=True):
            total = total + part.weight * model_probabilities(part.model, x).astype(np.float64)
        return np.asarray(total / sum(p.weight for p in self.parts), dtype=np.float32)


# A member that takes raw strings: its "encoder" passes the documents through.
_RAW_TEXT = TextEncoder(words=("<pad>", "<oov>"), encoding="sequence", maxlen=1)


def _takes_strings(model: Any) -> bool:
    return "string" in str(model.inputs[0].dtype)


def _encoder(doc: Any, where: str) -> TextEncoder:
    try:
        return TextEncoder.from_json(doc)
    except ValueError as exc:
        raise EnsembleError(f"{where}: {exc}") from None


def _read_doc(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EnsembleError(f"{path}: not a readable vocabulary file: {exc}") from None


def file_predictor(path: Path, vocabulary: Path | None = None) -> Predictor:
    """A ``.keras`` file (an exported ensemble or a trial's model) and its text vocabulary.

    The vocabulary is ``vocabulary`` when given, else ``NAME.text_vocabulary.json`` beside
    ``NAME.keras`` (what ``hpo export`` writes), else ``text_vocabulary.json`` beside it (a
    trial's model folder).
    """
    from hpo.ensemble._export import info_sidecar
    from hpo.tracking.models import load_keras_model

    model = load_keras_model(path)
    sidecar = info_sidecar(path)
    if vocabulary is None and sidecar.is_file():
        info = _read_doc(sidecar)
        return Predictor(
            [Part(model, 1.0, str(path), info=info)], str(path), info.get("class_names")
        )
    if vocabulary is None and _takes_strings(model) and len(model.inputs[0].shape) == 1:
        # A text model whose vocabulary is inside it (TextVectorization).
        info = {"inputs": {"kind": "text", "shape": [], "dtype": "string"}}
        return Predictor([Part(model, 1.0, str(path), info=info)], str(path))
    places = [vocabulary] if vocabulary else [
        path.with_suffix(".text_vocabulary.json"),
        path.parent / VOCABULARY_ARTIFACT,
    ]  # fmt: skip
    found = next((p for p in places if p is not None and p.is_file()), None)
    if vocabulary is not None and found is None:
        raise EnsembleError(f"{vocabulary}: no such vocabulary file")
    encoder = _encoder(_read_doc(found), str(found)) if found else None
    return Predictor(
        [Part(model, 1.0, str(path), encoder)],
        str(path),
        list(encoder.class_names) if encoder and encoder.class_names else None,
    )


def registered_predictor(
    name: str,
    version: int | None = None,
    tracking_uri: str | None = None,
    want_text: bool | None = None,
) -> Predictor:
    """A registered ensemble: its one exported model, or its members one by one.

    The exported model serves when there is one and, for text (``want_text``), when its
    folder holds the members' shared vocabulary; otherwise (members that read different
    inputs, or a version built before vocabularies were carried) every member is loaded from
    its trial run and averaged with its weight.
    """
    from hpo.ensemble._export import registered_version, registry_client

    client = registry_client(name, tracking_uri)
    mv = registered_version(client, name, version)
    # The models are in memory once loaded: the downloaded files go with the folder.
    with tempfile.TemporaryDirectory(prefix="hpo-predict-") as tmp:
        source = f"ensemble {name!r} version {mv.version}"
        return _registered_predictor(client, mv, source, Path(tmp), want_text)


def _registered_predictor(
    client: Any, mv: Any, source: str, tmp: Path, want_text: bool | None
) -> Predictor:
    from hpo.ensemble._export import INFO_IN_MLFLOW_MODEL, download_model_dir, keras_file
    from hpo.inputs import core_model
    from hpo.tracking.models import load_keras_model

    if mv.tags.get("hpo.exportable") != "false":
        model_dir = download_model_dir(client, mv, tmp)
        info_path = model_dir / INFO_IN_MLFLOW_MODEL
        if info_path.is_file():
            info = _read_doc(info_path)
            model = load_keras_model(keras_file(model_dir))
            return Predictor([Part(model, 1.0, source, info=info)], source, info.get("class_names"))
        vocab = model_dir / VOCABULARY_ARTIFACT
        classes = model_dir / CLASSES_FILE
        if want_text is not True or vocab.is_file():
            encoder = _encoder(_read_doc(vocab), source) if vocab.is_file() else None
            names = json.loads(classes.read_text())["class_names"] if classes.is_file() else None
            model = load_keras_model(keras_file(model_dir))
            return Predictor([Part(model, 1.0, source, encoder)], source, names)
    members = download_members(client, mv, tmp / "members")
    parts = []
    class_names = None
    for m in members:
        encoder = None
        if m.has(VOCABULARY_ARTIFACT):
            encoder = _encoder(m.read_json(VOCABULARY_ARTIFACT), f"member {m.label}")
        if m.has(DATASET_FILE) and class_names is None:
            class_names = m.read_json(DATASET_FILE).get("class_names")
        if encoder and encoder.class_names and class_names is None:
            class_names = list(encoder.class_names)
        # Members that take raw text need no encoder; older ones read the encoder's ids.
        model = load_keras_model(m.directory / MODEL_FILE)
        if _takes_strings(model):
            encoder = _RAW_TEXT
        elif encoder is not None:
            model = core_model(model)
        parts.append(Part(model, m.weight, f"member {m.label}", encoder))
    return Predictor(parts, source, class_names, members)


def open_predictor(
    ref: str | Path,
    tracking_uri: str | None = None,
    vocabulary: Path | None = None,
    want_text: bool | None = None,
) -> Predictor:
    """A predictor for a ``.keras`` file or a registered ensemble ``NAME[:VERSION]``."""
    from hpo.ensemble._export import parse_registered_ref

    path = Path(ref)
    if path.exists() or path.suffix.lower() in {".keras", ".h5", ".hdf5"}:
        return file_predictor(path, vocabulary)
    if vocabulary is not None:
        raise EnsembleError(
            "--vocabulary is for a .keras file; a registered ensemble finds its members' own"
        )
    name, version = parse_registered_ref(str(ref))
    return registered_predictor(name, version, tracking_uri, want_text)
