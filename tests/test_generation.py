"""Sampling with a temperature, text generation, and the `generate` command on stored models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from hpo.cli._generate import generate, parse_temperatures
from hpo.families.generation import (
    VOCABULARY_FILE,
    Vocabulary,
    average_predictors,
    generate_text,
    generate_texts,
    join_seed,
    reweight,
    sample_next,
)

P = np.array([0.5, 0.3, 0.15, 0.05])
N = 4000


def _frequencies(probs: np.ndarray, temperature: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    draws = [sample_next(probs, temperature, rng) for _ in range(N)]
    return np.bincount(draws, minlength=len(probs)) / N


def _entropy(freq: np.ndarray) -> float:
    nz = freq[freq > 0]
    return float(-(nz * np.log2(nz)).sum())


# --- sampling ------------------------------------------------------------------------------


def test_temperature_one_samples_the_distribution_itself() -> None:
    freq = _frequencies(P, 1.0)
    # 4,000 draws: each frequency within 4 standard errors of its probability.
    np.testing.assert_allclose(freq, P, atol=4 * np.sqrt(P * (1 - P) / N).max())


def test_low_temperature_concentrates_and_high_spreads() -> None:
    cold, warm, hot = _frequencies(P, 0.2), _frequencies(P, 1.0), _frequencies(P, 5.0)
    assert cold[0] > 0.9  # 0.5 ** 5 dominates 0.3 ** 5
    assert _entropy(cold) < _entropy(warm) < _entropy(hot)
    assert hot.min() > 0.15  # near uniform (0.25 each)
    np.testing.assert_allclose(reweight(P, 0.2), P**5 / (P**5).sum())
    np.testing.assert_allclose(reweight(P, 5.0), P**0.2 / (P**0.2).sum())


def test_flat_distribution_is_sampled_never_argmaxed() -> None:
    freq = _frequencies(np.full(8, 1 / 8), 1.0)
    assert np.all(freq > 0.09) and np.all(freq < 0.16)  # each about 0.125, not all on token 0
    # Even a very low temperature draws among the tied most likely tokens.
    tied = _frequencies(np.array([0.4, 0.4, 0.2]), 0.05)
    assert tied[2] == 0 and 0.4 < tied[0] < 0.6


def test_zero_probability_is_never_drawn_and_draws_are_seeded() -> None:
    probs = np.array([0.0, 0.7, 0.0, 0.3])
    assert set(np.flatnonzero(_frequencies(probs, 3.0))) == {1, 3}
    assert list(_frequencies(P, 0.7, seed=5)) == list(_frequencies(P, 0.7, seed=5))


@pytest.mark.parametrize("temperature", [0, -0.5, float("nan"), float("inf")])
def test_temperature_must_be_above_zero(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature must be a number above 0"):
        sample_next(P, temperature, np.random.default_rng(0))


@pytest.mark.parametrize("probs", [np.zeros(3), np.array([0.5, -0.1]), np.array([[0.5, 0.5]])])
def test_bad_distributions_are_refused(probs: np.ndarray) -> None:
    with pytest.raises(ValueError, match="probs"):
        sample_next(probs, 1.0, np.random.default_rng(0))


# --- generation ----------------------------------------------------------------------------

CHARS = ["\n", " ", "a", "b", "c"]


class Recorder:
    """A predict_next that records the windows it is given and favours one token."""

    def __init__(self, size: int, favourite: int = 2) -> None:
        self.windows: list[np.ndarray] = []
        self.probs = np.full(size, 0.1 / (size - 1))
        self.probs[favourite] = 0.9

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        self.windows.append(windows.copy())
        return np.tile(self.probs, (len(windows), 1))


def test_generation_length_and_windows() -> None:
    rec = Recorder(len(CHARS))
    text = generate_text(rec, CHARS, "char", "ab?c", 12, 1.0, np.random.default_rng(0), maxlen=6)
    assert len(text) == 12 and set(text) <= set(CHARS)
    assert len(rec.windows) == 12
    # "?" is unknown: dropped; the seed is padded on the left with line breaks.
    assert rec.windows[0].tolist() == [[0, 0, 0, 2, 3, 4]]
    # Each next window is the previous one shifted by the token just drawn.
    for before, after, token in zip(rec.windows, rec.windows[1:], text, strict=False):
        assert after[0].tolist() == [*before[0, 1:].tolist(), CHARS.index(token)]


def test_short_seed_follows_the_stored_context() -> None:
    vocab = Vocabulary(CHARS, "char", maxlen=6, context=list("ab\n\n"))
    rec = Recorder(len(CHARS))
    generate_text(rec, vocab, "char", "c", 3, 1.0, np.random.default_rng(0), maxlen=6)
    # Context "ab\n\n" is shorter than the 5 missing ids: one line break pads it.
    assert vocab.decode(rec.windows[0][0].tolist()) == "\nab\n\nc"
    assert vocab.decode(vocab.window("")) == "\n\nab\n\n"
    assert vocab.decode(vocab.window("cabcab")) == "cabcab"
    with pytest.raises(ValueError, match="vocabulary is for char-level windows of 6"):
        generate_text(rec, vocab, "char", "", 3, 1.0, np.random.default_rng(0), maxlen=5)


def test_long_seed_keeps_its_end_and_runs_are_reproducible() -> None:
    rec = Recorder(len(CHARS))
    generate_text(rec, CHARS, "char", "cab" * 10, 1, 0.5, np.random.default_rng(0), maxlen=4)
    assert rec.windows[0].tolist() == [[2, 3, 4, 2, 3][-4:]]
    a = generate_texts(Recorder(5), CHARS, "char", "", 30, [0.3, 1.5], np.random.default_rng(7),
                       maxlen=3)  # fmt: skip
    b = generate_texts(Recorder(5), CHARS, "char", "", 30, [0.3, 1.5], np.random.default_rng(7),
                       maxlen=3)  # fmt: skip
    assert a == b and len(a) == 2
    assert a[0].count("a") > a[1].count("a")  # colder: more of the favourite token


def test_word_level_maps_unknown_words_and_joins_punctuation() -> None:
    vocab = Vocabulary(["<unk>", "\n", ",", "the", "king", "queen"], "word", maxlen=4,
                       lowercase=True, oov_token="<unk>")  # fmt: skip
    assert vocab.encode_seed("The Prince, the KING") == [3, 0, 2, 3, 4]
    rec = Recorder(6, favourite=4)
    text = generate_text(rec, vocab, "word", "The Prince, the KING", 5, 1.0,
                         np.random.default_rng(1), maxlen=4)  # fmt: skip
    assert rec.windows[0].tolist() == [[0, 2, 3, 4]]
    assert len(rec.windows) == 5
    assert vocab.decode([3, 4, 2, 3, 5, 1, 3]) == "the king, the queen\nthe"
    assert text.split()  # words joined by spaces
    assert join_seed("The king", "is dead, sir", "word") == "The king is dead, sir"
    assert join_seed("The king", ", sir", "word") == "The king, sir"
    assert join_seed("ROMEO", ":\nAy", "char") == "ROMEO:\nAy"


def test_predictor_shape_is_checked() -> None:
    with pytest.raises(ValueError, match="predict_next returned shape"):
        generate_text(lambda w: np.ones((len(w), 3)) / 3, CHARS, "char", "", 2, 1.0,
                      np.random.default_rng(0), maxlen=2)  # fmt: skip


def test_average_of_predictors_is_a_weighted_mixture() -> None:
    a, b = Recorder(5, favourite=2), Recorder(5, favourite=3)
    mixed = average_predictors([a, b], [1, 3])(np.zeros((2, 4), np.int32))
    np.testing.assert_allclose(mixed, np.tile(0.25 * a.probs + 0.75 * b.probs, (2, 1)))
    with pytest.raises(ValueError, match="non-negative"):
        average_predictors([a, b], [1, -1])


# --- the generate command ------------------------------------------------------------------


def _app() -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(generate)
    return app


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(_app(), list(args))


def test_temperatures_repeat_or_comma_separated() -> None:
    assert parse_temperatures(None) == [0.2, 0.5, 1.0]
    assert parse_temperatures(["0.2", "0.5,1", " 2 "]) == [0.2, 0.5, 1.0, 2.0]
    for bad in ("0", "-1", "warm"):
        result = _invoke("whatever", "--temperature", bad)
        assert result.exit_code == 2
        assert "--temperature" in result.stderr


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An (untrained) char_lstm model folder as a trial stores it."""
    from hpo.datasets import load_dataset
    from hpo.families.language_models import CharLSTM
    from hpo.spaces import DatasetSpec, Params

    data = load_dataset(
        DatasetSpec(name="shakespeare", test_fraction=0.1, options={"max_chars": 3000,
                                                                   "maxlen": 12})
    )  # fmt: skip
    family = CharLSTM()
    hp = Params({"units": 8})
    folder = tmp_path_factory.mktemp("trial")
    family.build(hp, data).save(folder / "model.keras")
    for name, content in family.extra_artifacts(None, hp, data).items():
        (folder / name).write_bytes(content)
    return folder


def test_generate_from_a_model_folder_and_a_lone_file(lm_folder: Path) -> None:
    result = _invoke(str(lm_folder), "--length", "25", "-t", "0.2,0.5,1", "--seed", "1", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [len(s["text"]) for s in report["samples"]] == [25, 25, 25]
    assert report["seed"] == 1 and report["level"] == "char"
    again = _invoke(str(lm_folder / "model.keras"), "--length", "25", "-t", "0.2,0.5,1",
                    "--seed", "1", "--json")  # fmt: skip
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["samples"] == report["samples"]
    plain = _invoke(str(lm_folder), "--seed-text", "KING:", "--length", "10", "-t", "0.7")
    assert plain.exit_code == 0 and "temperature 0.7" in plain.stdout
    assert "KING:" in plain.stdout


def test_generate_refuses_what_is_not_a_language_model(lm_folder: Path, tmp_path: Path) -> None:
    import keras

    no_vocab = tmp_path / "no_vocab"
    no_vocab.mkdir()
    (no_vocab / "model.keras").write_bytes((lm_folder / "model.keras").read_bytes())
    result = _invoke(str(no_vocab))
    assert result.exit_code == 2
    assert f"missing {VOCABULARY_FILE}" in result.stderr

    classifier = tmp_path / "classifier"
    classifier.mkdir()
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])  # fmt: skip
    model.save(classifier / "model.keras")
    (classifier / VOCABULARY_FILE).write_bytes((lm_folder / VOCABULARY_FILE).read_bytes())
    result = _invoke(str(classifier))
    assert result.exit_code == 2
    assert "not a language model" in result.stderr

    (classifier / VOCABULARY_FILE).write_text('{"level": "char"}', encoding="utf-8")
    result = _invoke(str(classifier))
    assert result.exit_code == 2 and "not a valid vocabulary file" in result.stderr

    result = _invoke(str(tmp_path / "nothing-here"), "--storage", f"sqlite:///{tmp_path}/s.db")
    assert result.exit_code == 2 and "neither a model file nor a study" in result.stderr
