"""Text datasets: Reuters-21578 (the real archive, and tiny SGML archives written here for the
parser's edge cases) and the user's own text (CSV files and class folders), with their errors.

No Keras here: the Keras download fallback is exercised with a stand-in ``keras`` module.
"""

from __future__ import annotations

import csv
import gzip
import io
import sys
import tarfile
import types
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hpo.cache import CACHE_ENV_VAR
from hpo.datasets import DataError, load_dataset, reuters
from hpo.datasets import _text as text
from hpo.spaces import DatasetSpec

REAL_ARCHIVE = reuters.REPO / reuters.SHARED_ARCHIVE
needs_archive = pytest.mark.skipif(
    not REAL_ARCHIVE.is_file(), reason=f"Reuters-21578 is not at {REAL_ARCHIVE}"
)
# keras.datasets.reuters.get_label_names(): class i of Keras' reuters.npz.
KERAS_TOPICS = [
    "cocoa", "grain", "veg-oil", "earn", "acq", "wheat", "copper", "housing", "money-supply",
    "coffee", "sugar", "trade", "reserves", "ship", "cotton", "carcass", "crude", "nat-gas",
    "cpi", "money-fx", "interest", "gnp", "meal-feed", "alum", "oilseed", "gold", "tin",
    "strategic-metal", "livestock", "retail", "ipi", "iron-steel", "rubber", "heat", "jobs",
    "lei", "bop", "zinc", "orange", "pet-chem", "dlr", "gas", "silver", "wpi", "hog", "lead",
]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One parse cache for the test session, never the user's ~/.cache."""
    path = tmp_path_factory.getbasetemp() / "hpo-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV_VAR, str(path))
        mp.delenv(reuters.ENV_VAR, raising=False)
        yield path


def _spec(**options: Any) -> DatasetSpec:
    return DatasetSpec(name="reuters", options={"path": str(REAL_ARCHIVE), **options})


# -- the real archive --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_docs() -> list[reuters.Document]:
    if not REAL_ARCHIVE.is_file():
        pytest.skip(f"Reuters-21578 is not at {REAL_ARCHIVE}")
    return reuters.read_collection(REAL_ARCHIVE)


@needs_archive
def test_real_collection_counts(real_docs: list[reuters.Document]) -> None:
    assert len(real_docs) == 21_578
    assert len({d.newid for d in real_docs}) == 21_578
    assert Counter(d.split for d in real_docs) == {"TRAIN": 14_668, "TEST": 6_188, "NOT-USED": 722}
    single = [d for d in real_docs if len(d.topics) == 1 and d.body is not None]
    topics = Counter(d.topics[0] for d in single)
    assert len(single) == 8_654 and len(topics) == 65
    assert topics.most_common(3) == [("earn", 3_735), ("acq", 2_125), ("crude", 355)]
    # Entities are decoded and control characters gone.
    assert not any("&lt;" in d.text or "&#" in d.text or "\x03" in d.text for d in real_docs)


@needs_archive
def test_real_topics_are_keras_topics_in_keras_order(real_docs: list[reuters.Document]) -> None:
    assert reuters.select_topics(real_docs) == KERAS_TOPICS
    topics, pool, test = reuters.make_splits(real_docs, "keras")
    assert topics == KERAS_TOPICS
    not_used = sum(1 for d in real_docs if d.topics and d.topics[0] in topics) - 7_702 - 2_977
    assert (len(pool.labels), len(test.labels), not_used) == (7_702, 2_977, 549)  # 11,228 in all
    # Multi-topic documents carry their first topic: "wheat" is always listed after another.
    assert set(np.unique(pool.labels)) == set(range(46))

    topics, pool, test = reuters.make_splits(real_docs, "single_topic")
    assert topics == KERAS_TOPICS
    assert (len(pool.labels), len(test.labels)) == (5_915, 2_313)
    assert KERAS_TOPICS.index("wheat") not in set(pool.labels) | set(test.labels)


@needs_archive
def test_real_load_sizes_types_and_seeds() -> None:
    spec = _spec(num_words=5000, maxlen=120)
    data = load_dataset(spec)
    assert data.name == "reuters" and data.task == "classification"
    assert data.num_classes == 46 and data.class_names == KERAS_TOPICS
    assert (len(data.train) + len(data.validation), len(data.test)) == (7_702, 2_977)
    assert len(data.validation) == pytest.approx(770, abs=25)
    assert data.input_shape == (120,) and data.train.x.dtype == np.int32
    assert data.meta["num_words"] == 5000 and data.meta["maxlen"] == 120
    assert data.meta["test_split"] == "LEWISSPLIT=TEST"
    for split in (data.train, data.validation, data.test):
        assert split.x.min() >= 0 and split.x.max() < 5000
    # Stratified: earn (3) and acq (4) keep their share in validation.
    share = np.bincount(data.validation.y, minlength=46) / len(data.validation)
    full = np.bincount(np.concatenate([data.train.y, data.validation.y]), minlength=46) / 7_702
    assert np.abs(share - full).max() < 0.02

    # The same seed, the same splits: the dataset contract (tests/test_contracts.py).
    other = load_dataset(_spec(num_words=5000, maxlen=120).model_copy(update={"seed": 1}))
    assert not np.array_equal(other.validation.y, data.validation.y)
    assert np.array_equal(other.test.y, data.test.y)  # the test split never moves


@needs_archive
def test_real_vocabulary_comes_from_the_training_split_only(
    real_docs: list[reuters.Document],
) -> None:
    spec = _spec(num_words=1_000_000, maxlen=50, encoding="sequence").model_copy(
        update={"subset": 2000}
    )
    data = load_dataset(spec)
    _, pool, test = reuters.make_splits(real_docs, "keras")
    train, validation, _ = text.split_train(pool, spec, test)
    train_words = {t for doc in train.tokens for t in doc}
    assert set(data.meta["vocabulary"][2:]) == train_words
    assert data.meta["num_words"] == len(train_words) + 2
    # Every training word is known; validation and test have words the model never saw.
    assert not (data.train.x == text.OOV_ID).any()
    assert (data.validation.x == text.OOV_ID).any() and (data.test.x == text.OOV_ID).any()
    assert {t for doc in validation.tokens for t in doc} - train_words
    # The first validation document decodes to its own first tokens, unknown words as <oov>.
    first = [t if t in train_words else "<oov>" for t in validation.tokens[0][:50]]
    vocab = text.Vocabulary(data.meta["vocabulary"])
    assert vocab.decode(data.validation.x[0]).split() == first


@needs_archive
def test_real_multi_hot_encoding() -> None:
    data = load_dataset(_spec(encoding="multi_hot", num_words=2000))
    assert data.input_shape == (2000,) and data.train.x.dtype == np.uint8
    assert set(np.unique(data.train.x)) == {0, 1}
    assert data.meta["maxlen"] is None and data.meta["encoding"] == "multi_hot"
    assert not data.train.x[:, text.PAD_ID].any()
    # Same documents and vocabulary, both cut at 300 tokens: the bag holds the sequence's ids.
    bag = load_dataset(_spec(encoding="multi_hot", num_words=2000, maxlen=300))
    seq = load_dataset(_spec(encoding="sequence", num_words=2000, maxlen=300))
    assert bag.meta["vocabulary"] == seq.meta["vocabulary"] == data.meta["vocabulary"]
    for i in range(0, len(seq.test), 97):
        ids = set(seq.test.x[i][seq.test.x[i] > 0].tolist())
        assert set(np.flatnonzero(bag.test.x[i]).tolist()) == ids
    assert (bag.test.x <= data.test.x).all() and (bag.test.x != data.test.x).any()


# -- tiny archives: the parser's edge cases ------------------------------------------------------


def _doc(
    newid: int,
    split: str,
    topics: tuple[str, ...],
    body: str | None = None,
    title: str = "HEADLINE",
    unproc: str | None = None,
) -> str:
    items = "".join(f"<D>{t}</D>" for t in topics)
    if unproc is not None:
        content = f'<TEXT TYPE="UNPROC">&#2;\n{unproc}\n&#3;</TEXT>'
    elif body is None:
        content = f'<TEXT TYPE="BRIEF">&#2;\n******<TITLE>{title}</TITLE>\nBlah blah.\n&#3;</TEXT>'
    else:
        content = (
            f"<TEXT>&#2;\n<TITLE>{title}</TITLE>\n<DATELINE>    NEW YORK, Feb 26 - </DATELINE>"
            f"<BODY>{body}\n Reuter\n&#3;</BODY></TEXT>"
        )
    return (
        f'<REUTERS TOPICS="{"YES" if topics else "NO"}" LEWISSPLIT="{split}" '
        f'CGISPLIT="TRAINING-SET" OLDID="{5000 + newid}" NEWID="{newid}">\n'
        f"<DATE>26-FEB-1987 15:01:01.79</DATE>\n<TOPICS>{items}</TOPICS>\n"
        f"<PLACES><D>usa</D></PLACES>\n<PEOPLE></PEOPLE>\n{content}\n</REUTERS>\n"
    )


EDGE_DOCS = [
    _doc(1, "TRAIN", ("gold",), "Gold &lt;GLD&gt; rose 5 dlrs &amp; silver fell."),
    _doc(2, "TRAIN", ("grain", "wheat"), "Wheat and grain exports rose."),
    _doc(3, "TRAIN", ("gold",), None, title="GOLD BRIEF"),  # no BODY: title-only brief
    _doc(4, "NOT-USED", ("gold",), "Gold mine output grew."),
    _doc(5, "TEST", (), "A newswire without topics."),
    _doc(6, "TEST", ("gold",), "Café Nestlé buys gold."),  # latin-1 bytes on disk
    _doc(7, "TRAIN", ("crude",), unproc="OIL TABLE\n  Crude ....... 1,200 vs 1,100"),
]


def _sgml(docs: list[str]) -> bytes:
    return ('<!DOCTYPE lewis SYSTEM "lewis.dtd">\n' + "".join(docs)).encode("latin-1")


def _write_archive(path: Path, files: dict[str, bytes], prefix: str = "reuters21578/") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def test_parse_edge_cases() -> None:
    raw = _sgml(EDGE_DOCS)
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")  # the file really holds latin-1 bytes
    docs = {d.newid: d for d in reuters.parse_sgml(raw.decode("latin-1"), "edge.sgm")}
    assert docs[1].topics == ("gold",) and docs[1].split == "TRAIN"
    assert docs[1].body == "Gold <GLD> rose 5 dlrs & silver fell.\n Reuter"
    assert docs[2].topics == ("grain", "wheat")
    assert docs[3].body is None and "GOLD BRIEF" in docs[3].text and "Blah" in docs[3].text
    assert docs[4].split == "NOT-USED"
    assert docs[5].topics == ()
    assert docs[6].body is not None and docs[6].body.startswith("Café Nestlé")
    assert text.tokenize(docs[6].text)[:2] == ["café", "nestlé"]
    assert docs[7].body is None and "1,200 vs 1,100" in docs[7].text


def test_edge_archive_splits_and_labels(tmp_path: Path) -> None:
    archive = _write_archive(
        tmp_path / "reuters21578.tar.gz",
        {"reut2-001.sgm": _sgml(EDGE_DOCS[3:]), "reut2-000.sgm": _sgml(EDGE_DOCS[:3])},
    )
    docs = reuters.read_collection(archive)
    assert [d.newid for d in docs] == [1, 2, 3, 4, 5, 6, 7]  # files in name order
    topics, pool, test = reuters.make_splits(docs, "keras", min_documents=1)
    assert topics == ["gold", "grain", "crude"]  # order of first appearance of first topics
    # TRAIN: 1 gold, 2 grain (first of grain+wheat), 3 gold (title), 7 crude; NOT-USED 4 out;
    # TEST: 5 has no topic, 6 gold.
    assert pool.labels.tolist() == [0, 1, 0, 2] and test.labels.tolist() == [0]
    assert pool.tokens[2][:2] == ["gold", "brief"]
    _, pool, test = reuters.make_splits(docs, "single_topic", min_documents=1)
    assert pool.labels.tolist() == [0] and test.labels.tolist() == [0]  # no 2, 3 or 7


def _corpus(n_train: int = 12, n_test: int = 4) -> list[str]:
    """A small collection: three topics with newswire-like sentences of their own."""
    sentences = {
        "gold": "Gold bullion prices rose on the London market, dealers said.",
        "grain": "Wheat and maize exports to the Soviet Union increased, officials said.",
        "crude": "Crude oil output from the OPEC fields fell to a new low, sources said.",
    }
    docs, newid = [], 1
    for split, n in (("TRAIN", n_train), ("TEST", n_test)):
        for i in range(n):
            for topic, sentence in sentences.items():
                docs.append(_doc(newid, split, (topic,), f"{sentence} Item {i}."))
                newid += 1
    return docs


def test_load_tiny_archive_and_folder(tmp_path: Path) -> None:
    sgml = _sgml(_corpus())
    archive = _write_archive(tmp_path / "reuters21578.tar.gz", {"reut2-000.sgm": sgml})
    folder = tmp_path / "sgml"
    folder.mkdir()
    (folder / "reut2-000.sgm").write_bytes(sgml)
    spec = DatasetSpec(
        name="reuters",
        validation_fraction=0.25,
        options={"path": str(archive), "min_topic_documents": 2, "maxlen": 8},
    )
    data = load_dataset(spec)
    assert data.class_names == ["gold", "grain", "crude"]
    assert (len(data.train), len(data.validation), len(data.test)) == (27, 9, 12)
    assert data.train.x.shape == (27, 8)
    # The same files as a folder, or the folder holding the archive: the same dataset.
    for path in (folder, tmp_path):
        same = load_dataset(
            spec.model_copy(update={"options": {**spec.options, "path": str(path)}})
        )
        assert np.array_equal(same.train.x, data.train.x)
        assert np.array_equal(same.test.y, data.test.y)


def test_cache_is_used_and_keyed_by_size_and_mtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "cache"))
    archive = _write_archive(tmp_path / "r.tar.gz", {"reut2-000.sgm": _sgml(EDGE_DOCS)})
    first = reuters.read_collection(archive)
    assert len(list((tmp_path / "cache").glob("reuters21578-*.json.gz"))) == 1

    def no_parsing(*args: Any) -> None:
        raise AssertionError("parsed again although the cache is fresh")

    with monkeypatch.context() as mp:
        mp.setattr(reuters, "parse_sgml", no_parsing)
        assert reuters.read_collection(archive) == first
    # A changed archive (new size and time) is parsed again, under a new key.
    _write_archive(archive, {"reut2-000.sgm": _sgml(EDGE_DOCS[:2])})
    assert len(reuters.read_collection(archive)) == 2
    assert len(list((tmp_path / "cache").glob("reuters21578-*.json.gz"))) == 2
    # A damaged cache entry is ignored, not trusted.
    for entry in (tmp_path / "cache").glob("*.json.gz"):
        entry.write_bytes(b"garbage")
    assert len(reuters.read_collection(archive)) == 2


# -- finding the data, and its errors ------------------------------------------------------------


@pytest.fixture
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No local copy anywhere: an empty working directory and repository."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(reuters, "REPO", tmp_path / "repo")
    monkeypatch.delenv(reuters.ENV_VAR, raising=False)
    return tmp_path


def test_missing_archive_lists_places(nowhere: Path) -> None:
    spec = DatasetSpec(
        name="reuters", options={"path": str(nowhere / "mine.tar.gz"), "download": False}
    )
    with pytest.raises(DataError) as info:
        load_dataset(spec)
    message = str(info.value)
    assert "Reuters-21578 not found" in message
    assert str(nowhere / "mine.tar.gz") in message and "dataset option 'path'" in message
    assert str(nowhere / "repo" / reuters.SHARED_ARCHIVE) in message
    assert "download: false" in message and "HPO_REUTERS_PATH" in message
    assert "archive.ics.uci.edu" in message


def test_single_topic_documents_need_the_sgml_files(nowhere: Path) -> None:
    with pytest.raises(DataError, match=r"reuters\.npz has only the 'keras' documents"):
        load_dataset(DatasetSpec(name="reuters", options={"documents": "single_topic"}))


def test_environment_variable_is_read(nowhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _write_archive(nowhere / "x.tgz", {"reut2-000.sgm": _sgml(_corpus())})
    monkeypatch.setenv(reuters.ENV_VAR, str(archive))
    data = load_dataset(
        DatasetSpec(name="reuters", validation_fraction=0.25, options={"min_topic_documents": 2})
    )
    assert data.meta["source"] == str(archive) and data.num_classes == 3


def test_keras_download_is_mapped_to_words(nowhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keras' word ids (1 = start, 2 = unknown, word index + 3) become our tokens again."""
    word_index = {"gold": 1, "prices": 2, "rose": 3, "u.s.": 4, "wheat": 5, "exports": 6}

    def sequences(*rows: list[str]) -> list[list[int]]:
        return [[1, *(word_index[w] + 3 if w in word_index else 2 for w in row)] for row in rows]

    train = sequences(*[["gold", "prices", "rose"], ["u.s.", "wheat", "exports", "??"]] * 4)
    test = sequences(["gold", "rose"], ["wheat", "prices"])
    fake = types.ModuleType("keras")
    fake.datasets = types.SimpleNamespace(  # type: ignore[attr-defined]
        reuters=types.SimpleNamespace(
            load_data=lambda: ((train, [0, 1] * 4), (test, [0, 1])),
            get_word_index=lambda: word_index,
            get_label_names=lambda: ("gold", "grain"),
        )
    )
    monkeypatch.setitem(sys.modules, "keras", fake)
    data = load_dataset(
        DatasetSpec(name="reuters", validation_fraction=0.25, options={"maxlen": 5})
    )
    assert data.meta["source"] == "keras.datasets.reuters"
    assert data.class_names == ["gold", "grain"] and len(data.test) == 2
    vocab = text.Vocabulary(data.meta["vocabulary"])
    assert vocab.decode(data.test.x[0]) == "gold rose"
    assert {vocab.decode(x) for x in data.train.x} <= {"gold prices rose", "us wheat exports"}

    fake.datasets.reuters.load_data = lambda: (_ for _ in ()).throw(  # type: ignore[attr-defined]
        OSError("no internet")
    )
    with pytest.raises(DataError, match=r"(?s)not found.*OSError: no internet"):
        load_dataset(DatasetSpec(name="reuters"))


@pytest.mark.parametrize("case", ["truncated gzip", "not an archive", "no sgml", "cut sgml"])
def test_corrupt_archive_is_a_data_error(tmp_path: Path, case: str) -> None:
    path = tmp_path / "reuters21578.tar.gz"
    good = _write_archive(tmp_path / "good.tar.gz", {"reut2-000.sgm": _sgml(_corpus())})
    if case == "truncated gzip":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        message = "corrupt or truncated"
    elif case == "not an archive":
        path.write_bytes(gzip.compress(b"this is not a tar file" * 100))
        message = "corrupt or truncated"
    elif case == "no sgml":
        _write_archive(path, {"README.txt": b"hello"})
        message = r"holds no reut2-\*\.sgm file \(it has: reuters21578/README.txt\)"
    else:
        raw = _sgml(_corpus())
        _write_archive(path, {"reut2-000.sgm": raw[: len(raw) - 30]})
        message = "corrupt or truncated: 48 documents begin but only 47 end"
    with pytest.raises(DataError, match=message):
        load_dataset(DatasetSpec(name="reuters", options={"path": str(path)}))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_word": 100}, "unknown option 'num_word'"),
        ({"encoding": "one_hot"}, "encoding must be one of sequence, multi_hot"),
        ({"num_words": 2}, "num_words must be an integer of at least 3"),
        ({"maxlen": 0}, "maxlen must be an integer of at least 1"),
        ({"documents": "all"}, "documents must be one of keras, single_topic"),
        ({"min_topic_documents": 0}, "min_topic_documents must be a positive integer"),
    ],
)
def test_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_dataset(DatasetSpec(name="reuters", options=options))


def test_too_few_topics_or_documents(tmp_path: Path) -> None:
    archive = _write_archive(tmp_path / "r.tar.gz", {"reut2-000.sgm": _sgml(EDGE_DOCS)})
    with pytest.raises(DataError, match=r"only 0 topic.*min_topic_documents"):
        load_dataset(DatasetSpec(name="reuters", options={"path": str(archive)}))
    with pytest.raises(DataError, match="too few for validation_fraction"):
        load_dataset(
            DatasetSpec(name="reuters", options={"path": str(archive), "min_topic_documents": 1})
        )


# -- the user's own text: CSV files and class folders --------------------------------------------

NEWS = {
    "business": [
        "Shares of the bank rose after quarterly profit beat forecasts.",
        "The central bank left interest rates unchanged on Thursday.",
        "Oil prices fell as inventories grew more than expected.",
        "The retailer reported higher sales over the holiday season.",
        "Investors sold bonds after the inflation figures were published.",
        "The carmaker will cut costs and close two plants next year.",
    ],
    "sport": [
        "The home side won the cup final after extra time.",
        "She set a new national record in the 400 metres.",
        "The striker scored twice in the second half.",
        "Rain delayed the start of the test match by two hours.",
        "The coach named a young squad for the world championships.",
        "The champion retired after losing in the first round.",
    ],
    "tech": [
        "The company released a faster chip for laptops and phones.",
        "A software update fixed the security flaw in the browser.",
        "The start-up raised money to build cheaper batteries.",
        "Researchers trained a model that translates speech in real time.",
        "The phone maker unveiled a foldable screen at the trade show.",
        "Cloud revenue doubled as more firms moved their servers online.",
    ],
}


def _write_csv(path: Path, rows: list[dict[str, str]], delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _news_rows() -> list[dict[str, str]]:
    return [{"id": str(i), "text": t, "label": c} for c, ts in NEWS.items() for i, t in
            enumerate(ts)]  # fmt: skip


def _write_folder(root: Path) -> Path:
    for cls, texts in NEWS.items():
        (root / cls).mkdir(parents=True)
        for i, t in enumerate(texts):
            (root / cls / f"{i:03d}.txt").write_text(t, encoding="utf-8")
    return root


def _file(path: Path, content: str) -> Path:
    path.write_text(content, encoding="utf-8")
    return path


def _text_spec(path: Path, **options: Any) -> DatasetSpec:
    return DatasetSpec(
        name="text_classification",
        validation_fraction=0.2,
        test_fraction=0.2,
        options={"path": str(path), **options},
    )


def test_csv_and_folder_give_the_same_dataset(tmp_path: Path) -> None:
    from_csv = load_dataset(_text_spec(_write_csv(tmp_path / "news.csv", _news_rows())))
    from_dir = load_dataset(_text_spec(_write_folder(tmp_path / "news")))
    for data in (from_csv, from_dir):
        assert data.class_names == ["business", "sport", "tech"] and data.num_classes == 3
        assert (len(data.train), len(data.validation), len(data.test)) == (12, 3, 3)
        assert sorted(np.bincount(data.test.y).tolist()) == [1, 1, 1]  # stratified
        assert data.input_shape == (200,) and data.meta["skipped_empty"] == 0
    assert from_csv.meta["format"] == "csv" and from_dir.meta["format"] == "folder"
    assert np.array_equal(from_csv.test.y, from_dir.test.y)
    assert np.array_equal(from_csv.train.x, from_dir.train.x)


def test_csv_options_columns_delimiter_encoding(tmp_path: Path) -> None:
    rows = [{"body": r["text"].replace("bank", "banké"), "topic": r["label"]} for r in _news_rows()]
    path = tmp_path / "news.tsv"
    with path.open("w", newline="", encoding="latin-1") as f:
        writer = csv.DictWriter(f, fieldnames=["body", "topic"], delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(DataError, match=r"not valid utf-8.*file_encoding"):
        load_dataset(_text_spec(path, text_column="body", label_column="topic"))
    data = load_dataset(
        _text_spec(
            path, text_column="body", label_column="topic", file_encoding="latin-1",
            encoding="multi_hot", num_words=50,
        )
    )  # fmt: skip
    assert "banké" in data.meta["vocabulary"]
    assert data.input_shape == (50,) and data.train.x.dtype == np.uint8


def test_numeric_labels_sort_numerically(tmp_path: Path) -> None:
    rows = [{"text": r["text"], "label": {"business": "10", "sport": "2", "tech": "1"}[r["label"]]}
            for r in _news_rows()]  # fmt: skip
    data = load_dataset(_text_spec(_write_csv(tmp_path / "n.csv", rows)))
    assert data.class_names == ["1", "2", "10"]


def test_empty_documents_are_left_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _write_folder(tmp_path / "news")
    (root / "sport" / "blank.txt").write_text("  \n", encoding="utf-8")
    (root / "tech" / "dashes.txt").write_text("-- ...", encoding="utf-8")
    data = load_dataset(_text_spec(root))
    assert data.meta["skipped_empty"] == 2
    assert len(data.train) + len(data.validation) + len(data.test) == 18
    assert "sport/blank.txt" in caplog.text and "tech/dashes.txt" in caplog.text


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: _write_csv(p / "a.csv", [{"body": "x", "cls": "y"}]),
         r"has no column 'text', 'label'; its columns are 'body', 'cls'.*text_column"),
        (lambda p: _write_csv(p / "a.csv", [{"text": "x", "label": ""}]),
         r"1 row\(s\) have an empty 'label' column \(lines 2\)"),
        (lambda p: _write_csv(p / "a.csv", [{"text": t, "label": "sport"} for t in NEWS["sport"]]),
         "every document has the label 'sport'; a classifier needs at least 2 classes"),
        (lambda p: _file(p / "a.csv", ""), "is empty"),
        (lambda p: _file(p / "a.csv", "text,label\n"), "no rows"),
        (lambda p: (p / "d").mkdir() or p / "d", "has no class subfolders"),
        (lambda p: [(p / "d" / c).mkdir(parents=True) for c in "ab"] and p / "d",
         r"class folder\(s\) a, b have no \.txt files \(an empty folder\?\)"),
        (lambda p: _file(p / "notes.json", "{}"),
         "neither a .csv/.tsv file nor a folder"),
        (lambda p: p / "missing.csv", "no such file or folder"),
    ],
    ids=["columns", "empty label", "one class", "empty csv", "header only", "empty folder",
         "class folders without txt", "wrong suffix", "missing"],
)  # fmt: skip
def test_text_data_errors(tmp_path: Path, make: Any, message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(DataError, match=message):
        load_dataset(_text_spec(path))


def test_folder_class_without_files_and_empty_class(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "news")
    (root / "weather").mkdir()
    with pytest.raises(DataError, match=r"class folder\(s\) weather have no \.txt files; put"):
        load_dataset(_text_spec(root))
    (root / "weather" / "a.txt").write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="class 'weather' has only empty documents"):
        load_dataset(_text_spec(root))


def test_text_classification_needs_a_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPO_TEXT_PATH", raising=False)
    with pytest.raises(DataError, match=r"set the dataset option 'path'.*one subfolder of \.txt"):
        load_dataset(DatasetSpec(name="text_classification"))


def test_too_few_documents_to_split(tmp_path: Path) -> None:
    rows = [{"text": "good news", "label": "a"}, {"text": "bad news", "label": "b"}]
    with pytest.raises(DataError, match="2 documents in 2 classes are too few"):
        load_dataset(_text_spec(_write_csv(tmp_path / "t.csv", rows)))


@needs_archive
def test_real_newswires_through_the_user_loaders(
    real_docs: list[reuters.Document], tmp_path: Path
) -> None:
    """Real Reuters newswires of three topics written as class folders read back unchanged."""
    chosen = [d for d in real_docs if d.topics in (("cocoa",), ("coffee",), ("gold",))][:120]
    for i, d in enumerate(chosen):
        folder = tmp_path / "wires" / d.topics[0]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.txt").write_text(d.text, encoding="utf-8")
    data = load_dataset(_text_spec(tmp_path / "wires", maxlen=30))
    assert data.class_names == ["cocoa", "coffee", "gold"]
    assert len(data.train) + len(data.validation) + len(data.test) == len(chosen)
    assert Counter(d.topics[0] for d in chosen) == Counter(
        data.class_names[y] for s in (data.train, data.validation, data.test) for y in s.y
    )
