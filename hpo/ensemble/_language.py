"""Registered ensembles of language models (``char_lstm``, ``word_lstm``), loaded to generate
text: each step draws from the weighted average of the members' next-token distributions."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo.ensemble._errors import EnsembleError
from hpo.ensemble._members import LM_VOCABULARY_FILE, MemberFiles, download_members
from hpo.tracking.artifacts import MODEL_FILE


@dataclass
class LanguageEnsemble:
    """The members of a language-model ensemble, ready to generate from (their models in
    memory; the downloaded files are gone).

    ``predict_next`` takes windows of ``vocabulary.maxlen`` ids (the longest member window) and
    feeds each member the last ``maxlen`` ids its own trial used.
    """

    source: str
    vocabulary: Any  # hpo.families.generation.Vocabulary of the longest window
    models: list[Any]
    vocabularies: list[Any]
    weights: list[float]
    members: list[MemberFiles]
    predict_next: Any


def language_model_ensemble(
    name: str, version: int | None = None, tracking_uri: str | None = None
) -> LanguageEnsemble:
    """Load the char_lstm/word_lstm members of a registered ensemble for generation.

    Raises:
        EnsembleError: a member is not a language model, or members do not share their
            vocabulary (tokens, level, lowercasing); windows may differ in length.
    """
    from hpo.ensemble._export import registered_version, registry_client
    from hpo.families.generation import average_predictors, model_predictor, window_predictor

    client = registry_client(name, tracking_uri)
    mv = registered_version(client, name, version)
    source = f"ensemble {name!r} version {mv.version}"
    task = mv.tags.get("hpo.task")
    if task and task != "language_model":
        raise EnsembleError(
            f"{source} is an ensemble of {task} models, not of language models: hpo generate text "
            "needs char_lstm or word_lstm members"
        )
    with tempfile.TemporaryDirectory(prefix="hpo-generate-") as tmp:
        members = download_members(client, mv, Path(tmp), (MODEL_FILE, LM_VOCABULARY_FILE))
        vocabularies, models = _language_models(source, members)
    longest = max(range(len(members)), key=lambda i: vocabularies[i].maxlen)
    weights = [m.weight for m in members]
    predict_next = average_predictors(
        [
            window_predictor(model_predictor(model), v.maxlen)
            for model, v in zip(models, vocabularies, strict=True)
        ],
        weights,
    )
    return LanguageEnsemble(
        source, vocabularies[longest], models, vocabularies, weights, members, predict_next
    )


def _language_models(source: str, members: list[MemberFiles]) -> tuple[list[Any], list[Any]]:
    """Each member's vocabulary and model, checked to share tokens and to fit them."""
    from hpo.families.generation import Vocabulary
    from hpo.tracking.models import load_keras_model

    vocabularies = []
    for m in members:
        if not m.has(LM_VOCABULARY_FILE):
            raise EnsembleError(
                f"{source}: member {m.label} stored no {LM_VOCABULARY_FILE}: it is not a "
                "char_lstm or word_lstm model"
            )
        try:
            vocabularies.append(Vocabulary.from_json(m.read_json(LM_VOCABULARY_FILE)))
        except (ValueError, TypeError) as exc:
            raise EnsembleError(f"{source}: member {m.label}: {exc}") from None
    first = vocabularies[0]
    for m, v in zip(members, vocabularies, strict=True):
        for what in ("level", "lowercase", "oov_token", "tokens"):
            if getattr(v, what) != getattr(first, what):
                raise EnsembleError(
                    f"{source}: members {members[0].label} and {m.label} do not share their "
                    f"vocabulary ({what} differs); averaging next-token distributions needs "
                    "the same tokens in the same order"
                )
    from hpo.inputs import core_model

    models = []
    for m, v in zip(members, vocabularies, strict=True):
        model = core_model(load_keras_model(m.directory / MODEL_FILE))
        if tuple(model.input_shape) != (None, v.maxlen) or tuple(model.output_shape) != (
            None,
            len(v.tokens),
        ):
            raise EnsembleError(
                f"{source}: member {m.label} maps {model.input_shape} to {model.output_shape}, "
                f"not windows of {v.maxlen} tokens to {len(v.tokens)} probabilities"
            )
        models.append(model)
    return vocabularies, models
