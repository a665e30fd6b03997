"""``hpo generate``: sample text from a trained language model at several temperatures.

Example:
    hpo generate char_lstm --seed-text "ROMEO:" --temperature 0.2 --temperature 0.5,1.0
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import typer

from hpo.cli._common import EXIT_USAGE, console, fail, print_json

DEFAULT_TEMPERATURES = (0.2, 0.5, 1.0)
LANGUAGE_FAMILIES = ("char_lstm", "word_lstm")


def generate(
    model: str = typer.Argument(
        ...,
        help="A trained language model: a trial's model folder or .keras file (with "
        "vocabulary.json beside it), or STUDY (its best trial) or STUDY:TRIAL from the store.",
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
    storage: str | None = typer.Option(
        None,
        "--storage",
        envvar="HPO_STORAGE",
        help="Study store URL (default: sqlite hpo.db here).",
    ),
    tracking_uri: str | None = typer.Option(
        None,
        "--tracking-uri",
        envvar="MLFLOW_TRACKING_URI",
        help="MLflow tracking URI (default: the study's).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Generate text from a char_lstm or word_lstm model, one sample per temperature."""
    temperatures = parse_temperatures(temperature)
    # Artifacts come one by one from MLflow; a progress bar each would bury the samples.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    trial, vocabulary = _load_vocabulary(model, storage, tracking_uri)
    import numpy as np
    from rich.markup import escape

    from hpo.generation import generate_texts, join_seed, model_predictor
    from hpo.models import ModelError

    try:
        keras_model = trial.load()
    except ModelError as exc:
        fail(str(exc), EXIT_USAGE)
    _check_shapes(keras_model, vocabulary, model)
    texts = generate_texts(
        model_predictor(keras_model),
        vocabulary,
        vocabulary.level,
        seed_text,
        length,
        temperatures,
        np.random.default_rng(seed),
        maxlen=vocabulary.maxlen,
    )
    where = _describe(model, trial)
    if json_out:
        print_json(
            {
                "model": where,
                "study": trial.study,
                "trial": trial.trial_number,
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
    console.print(
        f"[bold]{escape(where)}[/]: {vocabulary.level}-level model, window {vocabulary.maxlen}, "
        f"{len(vocabulary.tokens)} tokens; seed {seed}",
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
    from hpo.generation import check_temperature

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


def _load_vocabulary(ref: str, storage: str | None, tracking_uri: str | None) -> tuple[Any, Any]:
    """The trial's model folder and its vocabulary; exit 2 when either is missing."""
    import json

    from hpo.generation import VOCABULARY_FILE, Vocabulary
    from hpo.models import ModelError, resolve_trial_model

    try:
        trial = resolve_trial_model(ref, storage=storage, tracking_uri=tracking_uri)
    except ModelError as exc:
        fail(str(exc), EXIT_USAGE)
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
                f"hpo generate needs a {' or '.join(LANGUAGE_FAMILIES)} model"
            )
        fail(
            f"{_describe(ref, trial)}: missing {VOCABULARY_FILE} (looked in "
            f"{', '.join(str(p.parent) for p in places)}): hpo generate needs the vocabulary "
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
