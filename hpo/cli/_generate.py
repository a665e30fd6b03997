"""``hpo generate text``: sample text from a trained language model at several temperatures.

Example:
    hpo generate text char_lstm --seed-text "ROMEO:" --temperature 0.2 --temperature 0.5,1.0
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Annotated, Any

import typer

from hpo.cli._common import (
    EXIT_USAGE,
    JsonOption,
    StorageOption,
    console,
    fail,
    open_store,
    print_json,
    tracking_uri_option,
)

DEFAULT_TEMPERATURES = (0.2, 0.5, 1.0)
LANGUAGE_FAMILIES = ("char_lstm", "word_lstm")


def generate(
    model: str = typer.Argument(
        ...,
        help="A trained language model: a trial's model folder or .keras file (with "
        "vocabulary.json beside it), STUDY (its best trial) or STUDY:TRIAL from the store, or "
        "a registered ensemble NAME[:VERSION] (models:/NAME/VERSION when a study has that "
        "name) of char_lstm/word_lstm trials, sampled from the weighted average of the "
        "members' next-token distributions.",
    ),
    seed_text: str = typer.Option(
        "",
        "--seed-text",
        help="Text to continue (default: none, as at the start of a paragraph). Characters the "
        "model does not know are dropped; unknown words become <unk>.",
    ),
    temperature: list[str] | None = typer.Option(
        None,
        "--temperature",
        "-t",
        metavar="T[,T...]",
        help="Sampling temperature(s) above 0; repeat the flag or separate by commas "
        "(--temperature 0.2,0.5,1.0). One sample each. Default: 0.2, 0.5 and 1.0.",
    ),
    length: int = typer.Option(
        400, "--length", min=1, help="Tokens to generate per sample (characters or words)."
    ),
    seed: int | None = typer.Option(
        None, "--seed", help="Random seed for sampling (default: a fresh one, printed)."
    ),
    storage: StorageOption = None,
    tracking_uri: Annotated[
        str | None, tracking_uri_option("MLflow tracking URI (default: the study's).")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Generate text from a char_lstm or word_lstm model or ensemble, one sample per temperature.

    An ensemble samples from the weighted average of its members' next-token
    distributions; the members must share their vocabulary, and each reads
    its own window length.
    """
    temperatures = parse_temperatures(temperature)
    # Artifacts come one by one from MLflow; a progress bar each would bury the samples.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    import numpy as np
    from rich.markup import escape

    from hpo.families.generation import generate_texts, join_seed, model_predictor
    from hpo.tracking.models import ModelError

    ensemble = _ensemble_or_none(model, storage, tracking_uri)
    if ensemble is not None:
        vocabulary, predict_next = ensemble.vocabulary, ensemble.predict_next
        where = ensemble.source
        details: dict[str, Any] = {
            "ensemble": where,
            "members": [
                {"study": m.study, "trial": m.trial, "run_id": m.run_id, "weight": m.weight,
                 "maxlen": v.maxlen}
                for m, v in zip(ensemble.members, ensemble.vocabularies, strict=True)
            ],
        }  # fmt: skip
    else:
        trial, vocabulary = _load_vocabulary(model, storage, tracking_uri)
        try:
            keras_model = trial.load()
        except ModelError as exc:
            fail(str(exc), EXIT_USAGE)
        _check_shapes(keras_model, vocabulary, model)
        predict_next = model_predictor(keras_model)
        where = _describe(model, trial)
        details = {"study": trial.study, "trial": trial.trial_number}
    texts = generate_texts(
        predict_next,
        vocabulary,
        vocabulary.level,
        seed_text,
        length,
        temperatures,
        np.random.default_rng(seed),
        maxlen=vocabulary.maxlen,
    )
    if json_out:
        print_json(
            {
                "model": where,
                **details,
                "level": vocabulary.level,
                "seed_text": seed_text,
                "length": length,
                "seed": seed,
                "samples": [
                    {"temperature": t, "text": text}
                    for t, text in zip(temperatures, texts, strict=True)
                ],
            }
        )
        return
    what = (
        f"weighted ensemble of {len(ensemble.members)} {vocabulary.level}-level models, "
        f"windows {', '.join(str(v.maxlen) for v in ensemble.vocabularies)}"
        if ensemble is not None
        else f"{vocabulary.level}-level model, window {vocabulary.maxlen}"
    )
    console.print(
        f"[bold]{escape(where)}[/]: {what}, {len(vocabulary.tokens)} tokens; seed {seed}",
        highlight=False,
    )
    for t, text in zip(temperatures, texts, strict=True):
        console.rule(f"temperature {t:g}")
        # Plain output: generated text may hold [brackets] that rich would read as markup.
        typer.echo(join_seed(seed_text, text, vocabulary.level))


def parse_temperatures(values: list[str] | None) -> list[float]:
    """Temperatures from repeated and/or comma-separated flags; exit 2 on a bad one.

    Example:
        >>> parse_temperatures(["0.2,0.5", "1"])
        [0.2, 0.5, 1.0]
    """
    from hpo.families.generation import check_temperature

    if not values:
        return list(DEFAULT_TEMPERATURES)
    out: list[float] = []
    for value in values:
        for part in value.split(","):
            if not part.strip():
                continue
            try:
                out.append(check_temperature(float(part)))
            except ValueError as exc:
                message = str(exc) if "temperature" in str(exc) else f"not a number: {part!r}"
                fail(f"--temperature: {message}", EXIT_USAGE)
    if not out:
        fail("--temperature: give at least one number above 0", EXIT_USAGE)
    return out


def _ensemble_or_none(ref: str, storage: str | None, tracking_uri: str | None) -> Any:
    """The registered language-model ensemble ``ref`` names, or None when ``ref`` is a model
    file or folder or a study. ``models:/NAME/VERSION`` always means an ensemble; a plain
    ``NAME[:VERSION]`` does when no study of that name exists."""
    from hpo.ensemble import EnsembleError
    from hpo.ensemble._export import parse_registered_ref
    from hpo.ensemble._language import language_model_ensemble

    if Path(ref).exists():
        return None
    if not ref.startswith("models:/"):
        from hpo.storage import resolve_storage, store_exists
        from hpo.storage.studies import StudyError, load_config
        from hpo.tracking.models import ModelError, parse_model_ref

        try:
            if not store_exists(resolve_storage(storage)):
                raise StudyError("no study store")  # not created just to look
            load_config(open_store(storage), parse_model_ref(ref)[0])
            return None  # a study: its trial
        except (StudyError, ModelError):
            pass
        except Exception:  # an unreachable store: let the trial path report it
            return None
    name, version = parse_registered_ref(ref)
    from hpo import tracking

    uri = tracking.resolve_tracking_uri(tracking_uri)
    store_file = tracking.local_store_file(uri)
    if store_file is not None and not store_file.exists():
        # No tracking database here (and none is created just to look).
        if ref.startswith("models:/"):
            fail(f"{ref}: the tracking store {uri} does not exist; give --tracking-uri")
        return None
    client = tracking.client(uri)
    from mlflow.exceptions import MlflowException

    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        if ref.startswith("models:/"):
            fail(f"{ref}: no registered ensemble named {name!r}")
        return None  # neither: the trial path says so
    if registered.tags.get("hpo.kind") != "ensemble":
        fail(f"{ref}: the registered model {name!r} is not an hpo ensemble")
    try:
        return language_model_ensemble(name, version, tracking_uri)
    except EnsembleError as exc:
        fail(str(exc), EXIT_USAGE)


def _load_vocabulary(ref: str, storage: str | None, tracking_uri: str | None) -> tuple[Any, Any]:
    """The trial's model folder and its vocabulary; exit 2 when either is missing."""
    import json

    from hpo.families.generation import VOCABULARY_FILE, Vocabulary
    from hpo.tracking.models import ModelError, resolve_trial_model

    try:
        trial = resolve_trial_model(ref, storage=storage, tracking_uri=tracking_uri)
    except ModelError as exc:
        # Only reached when no registered ensemble has that name either.
        hint = "; nor a registered ensemble" if "neither" in str(exc) else ""
        fail(f"{exc}{hint}", EXIT_USAGE)
    places = [trial.directory / VOCABULARY_FILE]
    path = Path(ref)
    if path.is_file():
        # A lone .keras file: its trial's vocabulary.json lies beside it, if anywhere.
        places.append(path.parent / VOCABULARY_FILE)
    found = next((p for p in places if p.is_file()), None)
    if found is None:
        if trial.family and trial.family not in LANGUAGE_FAMILIES:
            fail(
                f"{_describe(ref, trial)} is a {trial.family} model, not a language model: "
                f"hpo generate text needs a {' or '.join(LANGUAGE_FAMILIES)} model"
            )
        fail(
            f"{_describe(ref, trial)}: missing {VOCABULARY_FILE} (looked in "
            f"{', '.join(str(p.parent) for p in places)}): hpo generate text needs the vocabulary "
            f"that {' and '.join(LANGUAGE_FAMILIES)} trials store beside their model; is this "
            "a language model?"
        )
    try:
        vocabulary = Vocabulary.from_json(json.loads(found.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as exc:
        fail(f"{found}: not a valid vocabulary file: {exc}")
    return trial, vocabulary


def _check_shapes(model: Any, vocabulary: Any, ref: str) -> None:
    """Exit 2 unless the model maps (maxlen,) token windows to one probability per token."""
    input_shape = tuple(model.input_shape) if not isinstance(model.input_shape, list) else None
    output_shape = tuple(model.output_shape) if not isinstance(model.output_shape, list) else None
    expected_in = (None, vocabulary.maxlen)
    expected_out = (None, len(vocabulary.tokens))
    if input_shape != expected_in or output_shape != expected_out:
        fail(
            f"{ref}: not a language model for its vocabulary: it maps inputs of shape "
            f"{model.input_shape} to {model.output_shape}, but its vocabulary.json describes "
            f"windows of {vocabulary.maxlen} tokens and {len(vocabulary.tokens)} tokens to "
            f"predict, i.e. {expected_in} -> {expected_out}"
        )


def _describe(ref: str, trial: Any) -> str:
    if trial.study is not None:
        return f"study {trial.study}, trial {trial.trial_number}"
    return ref
