"""Reuters newswire topics: the Keras-style 46-topic, single-label set from Reuters-21578.

Source: a local copy of Reuters-21578, Distribution 1.0 (22 SGML files ``reut2-000.sgm`` ...
``reut2-021.sgm``, latin-1, 21,578 documents), read from the first of these that exists:

1. ``options: {path: ...}`` in the space file's ``dataset`` section: the archive
   ``reuters21578.tar.gz`` (or any ``.tar``/``.tar.gz``/``.tgz`` holding the files), a folder
   of ``reut2-*.sgm`` files (searched recursively), a folder holding the archive, or one file;
2. the environment variable ``HPO_REUTERS_PATH`` (same forms);
3. ``../shared/data/reuters21578.tar.gz`` relative to the working directory, then relative
   to this repository;

and only then Keras' own ``keras.datasets.reuters.load_data()`` (downloads ``reuters.npz``
unless Keras has it cached; ``options: {download: false}`` forbids it).

How the set is made (the recipe of Keras' ``reuters.npz``, reproduced exactly):

* **Topics.** Every document that lists at least one topic (``<D>`` items in ``<TOPICS>``) is
  labelled with its *first* listed topic; the topics that label at least 15 documents of the
  whole collection are kept (option ``min_topic_documents``), which gives exactly Keras' 46
  topics, and their class indices follow the order in which each topic first labels a document
  (files in name order, documents in file order): ``cocoa`` 0, ``grain`` 1, ``veg-oil`` 2,
  ``earn`` 3, ``acq`` 4, ..., ``lead`` 45, as in ``keras.datasets.reuters.get_label_names()``.
  This was Keras 0.x's ``make_reuters_dataset``: it read the text up to the first ``</`` inside
  ``<TOPICS>``, i.e. the first topic, which is why multi-topic documents count and why ``wheat``
  (always listed together with ``grain``) is a class.
* **Documents** (option ``documents``):

  - ``keras`` (default): every document whose first topic is kept: 11,228 documents, Keras'
    count. Its text is the ``<BODY>``, or, for the 975 documents without one (headline-only
    briefs, unprocessed tables), the rest of its ``<TEXT>`` (title, dateline, table); Keras
    gave those the body of the next document by mistake.
  - ``single_topic``: only documents with exactly one topic and a ``<BODY>``: 8,579 documents
    (of the collection's 8,654 such documents, those whose topic is one of the 46). ``wheat``
    then has no documents: the class indices stay those of Keras.

* **Splits.** Test: the documents with ``LEWISSPLIT="TEST"`` (2,977 in ``keras``; 2,313 in
  ``single_topic``), never used for search; ``NOT-USED`` documents are left out. Validation: a
  stratified, seeded ``validation_fraction`` of the ``LEWISSPLIT="TRAIN"`` documents (7,702 in
  ``keras``; 5,915 in ``single_topic``); the rest, capped by ``subset``, is the training split
  (``test_fraction`` does not apply). With Keras' download there is no ``LEWISSPLIT``: its own
  80/20 train/test split (seed 113) is used instead, and ``documents: single_topic`` needs the
  SGML files (``reuters.npz`` does not say which newswires had several topics).
* **Encoding:** see :mod:`hpo.datasets._text` (``num_words``, ``maxlen``, ``encoding``); the
  vocabulary comes from the training split only. Keras' download gives word ids of Keras'
  vocabulary: they are turned back into words with ``get_word_index()`` and go through the same
  tokenizer and vocabulary as the SGML text.

The parsed collection is cached in ``$HPO_CACHE_DIR`` (default ``~/.cache/hpo``, or
``$XDG_CACHE_HOME/hpo``) under a name made of the source files' names, sizes and modification
times, so later trial processes skip the SGML parsing; a changed archive gets a new entry.

About 500 lines, kept as one: the recipe above, the places it looks, the SGML reader and the
parsed cache are one source's reading, and the recipe is checked line by line against them.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import json
import logging
import os
import re
import tarfile
import tempfile
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hpo.cache import cache_dir
from hpo.datasets._base import DataError, Dataset
from hpo.datasets._text import (
    TOKENIZER,
    TextOptions,
    TokenSplit,
    build_text_dataset,
    split_train,
    tokenize,
)

if TYPE_CHECKING:
    from hpo.spaces import DatasetSpec

log = logging.getLogger(__name__)

ENV_VAR = "HPO_REUTERS_PATH"
ARCHIVE_NAME = "reuters21578.tar.gz"
SHARED_ARCHIVE = Path("..") / "shared" / "data" / ARCHIVE_NAME
REPO = Path(__file__).resolve().parents[2]
SGML_PATTERN = re.compile(r"^reut2-\d+\.sgm$")
DOCUMENT_SETS = ("keras", "single_topic")
MIN_TOPIC_DOCUMENTS = 15
LOADER_OPTIONS = ("path", "documents", "min_topic_documents", "download")
SPLITS = ("TRAIN", "TEST", "NOT-USED")
COLLECTION_SIZE = 21_578
PARSER_VERSION = 1  # part of the cache key: bump it when parsing changes
HOW_TO_GET = (
    "To get the data: download Reuters-21578, Distribution 1.0 (reuters21578.tar.gz, e.g. from "
    "the UCI Machine Learning Repository, https://archive.ics.uci.edu/dataset/137) and set the "
    f"dataset option 'path' or ${ENV_VAR} to the archive or to the folder of its reut2-*.sgm "
    "files, or allow Keras to download its reuters.npz (needs internet access)."
)

_DOC_RE = re.compile(r"<REUTERS\b([^>]*)>(.*?)</REUTERS>", re.S)
_OPEN_RE = re.compile(r"<REUTERS\b")
_ATTR_RE = re.compile(r'([A-Z]+)="([^"]*)"')
_TOPICS_RE = re.compile(r"<TOPICS>(.*?)</TOPICS>", re.S)
_D_RE = re.compile(r"<D>(.*?)</D>", re.S)
_BODY_RE = re.compile(r"<BODY>(.*?)</BODY>", re.S)
_TEXT_RE = re.compile(r"<TEXT\b[^>]*>(.*?)</TEXT>", re.S)
_TAG_RE = re.compile(r"<[^>]+>")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]+")


@dataclass(frozen=True)
class Document:
    """One ``<REUTERS>`` document: its id, Lewis split, topics and text."""

    newid: int
    split: str
    topics: tuple[str, ...]
    body: str | None
    text: str  # the body, or the rest of <TEXT> (title, dateline, table) when there is none
    # The text's tokens joined by spaces: tokenized once, when parsed, and cached with it.
    words: str = ""

    @classmethod
    def make(
        cls, newid: int, split: str, topics: tuple[str, ...], body: str | None, text: str
    ) -> Document:
        return cls(newid, split, topics, body, text, " ".join(tokenize(text)))

    def to_json(self) -> list[Any]:
        return [self.newid, self.split, list(self.topics), self.body, self.text, self.words]

    @classmethod
    def from_json(cls, row: list[Any]) -> Document:
        return cls(int(row[0]), str(row[1]), tuple(row[2]), row[3], str(row[4]), str(row[5]))


def load(spec: DatasetSpec) -> Dataset:
    """Reuters topics: 46 classes, LEWISSPLIT test split, a vocabulary of the training split.

    Example:
        >>> from hpo.spaces import DatasetSpec
        >>> data = load(DatasetSpec(name="reuters", options={"maxlen": 100}))  # doctest: +SKIP
        >>> data.num_classes, len(data.test), data.input_shape  # doctest: +SKIP
        (46, 2977, (100,))
    """
    options = dict(spec.options)
    text_options = TextOptions.parse(options, "reuters", LOADER_OPTIONS)
    documents = options.get("documents", "keras")
    if documents not in DOCUMENT_SETS:
        raise DataError(
            f"dataset 'reuters': option documents must be one of {', '.join(DOCUMENT_SETS)}, "
            f"got {documents!r}"
        )
    min_docs = options.get("min_topic_documents", MIN_TOPIC_DOCUMENTS)
    if isinstance(min_docs, bool) or not isinstance(min_docs, int) or min_docs < 1:
        raise DataError(
            "dataset 'reuters': option min_topic_documents must be a positive integer, "
            f"got {min_docs!r}"
        )
    found, looked = _find_local(options)
    if found is not None:
        docs = read_collection(found)
        topics, pool, test = make_splits(docs, str(documents), min_docs)
        source, test_split = str(found), "LEWISSPLIT=TEST"
    elif not options.get("download", True):
        raise _not_found(
            [*looked, "Keras download: disabled by the dataset option download: false"]
        )
    elif documents != "keras":
        raise _not_found(
            [*looked, "Keras download: not used, its reuters.npz has only the 'keras' documents"]
        )
    else:
        topics, pool, test = _from_keras(looked)
        source, test_split = "keras.datasets.reuters", "Keras' 20% (seed 113)"
    try:
        splits = split_train(pool, spec, test)
    except DataError as exc:
        raise DataError(f"dataset 'reuters' ({source}): {exc}") from None
    return build_text_dataset(
        "reuters",
        splits,
        text_options,
        topics,
        {"source": source, "test_split": test_split, "documents": documents},
    )


# -- finding the files --------------------------------------------------------------------------


def _places(options: dict[str, Any]) -> list[tuple[str, Path, bool]]:
    """(what, path, named by the user) in the order they are tried."""
    places = []
    if options.get("path"):
        places.append(("dataset option 'path'", Path(str(options["path"])).expanduser(), True))
    if os.environ.get(ENV_VAR):
        places.append((f"${ENV_VAR}", Path(os.environ[ENV_VAR]).expanduser(), True))
    places.append(("working directory", Path.cwd() / SHARED_ARCHIVE, False))
    places.append(("repository", REPO / SHARED_ARCHIVE, False))
    seen: set[Path] = set()
    out = []
    for what, path, named in places:
        resolved = path.resolve()
        if resolved not in seen:
            seen.add(resolved)
            out.append((what, path, named))
    return out


def _find_local(options: dict[str, Any]) -> tuple[Path | None, list[str]]:
    """The first local copy (or ``None``) and, for an error message, the places without one."""
    looked: list[str] = []
    for what, path, named in _places(options):
        if path.is_file() or (path.is_dir() and (_sgml_files(path) or _has_archive(path))):
            return path, looked
        state = (
            f"a folder without {ARCHIVE_NAME} or reut2-*.sgm files"
            if path.is_dir()
            else "no such file or folder"
        )
        looked.append(f"{path} ({what}): {state}")
        if named:
            # Say so rather than quietly reading another copy than the one the user named.
            log.warning("Reuters-21578 is not at %s (%s): %s", path, what, state)
    return None, looked


def _not_found(looked: list[str]) -> DataError:
    return DataError(
        "Reuters-21578 not found. Looked in:\n  - " + "\n  - ".join(looked) + "\n" + HOW_TO_GET
    )


def _has_archive(folder: Path) -> bool:
    return (folder / ARCHIVE_NAME).is_file()


def _sgml_files(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.rglob("reut2-*.sgm") if SGML_PATTERN.match(p.name)),
        key=lambda p: p.name,
    )


# -- reading and parsing ------------------------------------------------------------------------


def read_collection(path: str | Path) -> list[Document]:
    """The documents of a local copy (archive, folder or file), from the cache when it is fresh.

    Raises:
        DataError: the archive is corrupt, holds no ``reut2-*.sgm`` file, or a file is truncated.

    Example:
        >>> docs = read_collection("/work/shared/data/reuters21578.tar.gz")  # doctest: +SKIP
        >>> len(docs), docs[0].topics  # doctest: +SKIP
        (21578, ('cocoa',))
    """
    path = Path(path)
    if path.is_dir() and not _sgml_files(path) and _has_archive(path):
        path = path / ARCHIVE_NAME
    files = _sgml_files(path) if path.is_dir() else [path]
    key = _cache_key(files)
    cached = _read_cache(key)
    if cached is not None:
        return cached
    docs: list[Document] = []
    for name, raw in _read_sgml_bytes(path):
        docs.extend(parse_sgml(raw.decode("latin-1"), name))
    if not docs:
        raise DataError(f"{path} holds no <REUTERS> documents; is it Reuters-21578?")
    if len(docs) != COLLECTION_SIZE:
        log.warning(
            "%s has %d documents, not the %d of Reuters-21578: topics and sizes will differ "
            "from Keras' reuters set",
            path,
            len(docs),
            COLLECTION_SIZE,
        )
    _write_cache(key, docs)
    return docs


def _read_sgml_bytes(path: Path) -> list[tuple[str, bytes]]:
    """(file name, bytes) of every ``reut2-*.sgm`` in name order."""
    if path.is_dir():
        return [(str(p), p.read_bytes()) for p in _sgml_files(path)]
    if path.suffix == ".sgm":
        return [(str(path), path.read_bytes())]
    try:
        # A stream ("r|*") reads the gzip once; random access would decompress it repeatedly.
        found: list[tuple[str, bytes]] = []
        names: list[str] = []
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                names.append(member.name)
                if member.isfile() and SGML_PATTERN.match(Path(member.name).name):
                    f = tar.extractfile(member)
                    if f is None:
                        raise DataError(f"{path}: cannot read {member.name}")
                    found.append((member.name, f.read()))
        if not found:
            raise DataError(
                f"{path} holds no reut2-*.sgm file (it has: "
                f"{', '.join(names[:8]) or 'nothing'}); is it the Reuters-21578 archive?"
            )
        found.sort(key=lambda item: Path(item[0]).name)
        return [(f"{path}:{name}", raw) for name, raw in found]
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
        raise DataError(
            f"cannot read {path}: {type(exc).__name__}: {exc}. The archive is corrupt or "
            f"truncated (or not a tar archive): delete it and get it again. {HOW_TO_GET}"
        ) from None


def parse_sgml(text: str, source: str = "<string>") -> list[Document]:
    """The documents of one SGML file's text.

    Raises:
        DataError: a document is cut off (a truncated file) or lacks ``NEWID``/``LEWISSPLIT``.

    Example:
        >>> sgml = ('<REUTERS TOPICS="YES" LEWISSPLIT="TRAIN" NEWID="7"><TOPICS><D>gold</D>'
        ...         '</TOPICS><TEXT><TITLE>GOLD</TITLE><BODY>Gold &amp; silver rose.</BODY>'
        ...         '</TEXT></REUTERS>')
        >>> doc = parse_sgml(sgml)[0]
        >>> doc.newid, doc.split, doc.topics, doc.body, doc.words
        (7, 'TRAIN', ('gold',), 'Gold & silver rose.', 'gold silver rose')
    """
    docs = []
    for m in _DOC_RE.finditer(text):
        attrs = dict(_ATTR_RE.findall(m.group(1)))
        content = m.group(2)
        if "NEWID" not in attrs or attrs.get("LEWISSPLIT") not in SPLITS:
            line = text.count("\n", 0, m.start()) + 1
            raise DataError(
                f"{source}:{line}: a <REUTERS> document without NEWID or with LEWISSPLIT "
                f"{attrs.get('LEWISSPLIT')!r} (expected {', '.join(SPLITS)}); is the file "
                "corrupt?"
            )
        topics_m = _TOPICS_RE.search(content)
        topics = tuple(
            _clean(t).strip() for t in _D_RE.findall(topics_m.group(1) if topics_m else "")
        )
        body_m = _BODY_RE.search(content)
        body = _clean(body_m.group(1)) if body_m else None
        if body is not None:
            text_ = body
        else:
            text_m = _TEXT_RE.search(content)
            text_ = _clean(_TAG_RE.sub(" ", text_m.group(1))) if text_m else ""
        docs.append(Document.make(int(attrs["NEWID"]), attrs["LEWISSPLIT"], topics, body, text_))
    opened = len(_OPEN_RE.findall(text))
    if opened != len(docs):
        raise DataError(
            f"{source} is corrupt or truncated: {opened} documents begin but only {len(docs)} "
            "end with </REUTERS>; get the file again"
        )
    return docs


def _clean(s: str) -> str:
    """SGML entities decoded (``&lt;``, ``&#3;``) and control characters removed."""
    return _CONTROL_RE.sub(" ", html.unescape(s)).strip()


# -- the Keras recipe ----------------------------------------------------------------------------


def select_topics(docs: Sequence[Document], min_documents: int = MIN_TOPIC_DOCUMENTS) -> list[str]:
    """The kept topics in class-index order: first topics labelling at least ``min_documents``.

    Example:
        >>> d = [Document.make(i, "TRAIN", t, "x", "x") for i, t in
        ...      enumerate([("b",), ("a", "c"), ("c",), ("a",), ()])]
        >>> select_topics(d, min_documents=2)
        ['a']
    """
    counts = Counter(d.topics[0] for d in docs if d.topics)
    order: dict[str, None] = {}
    for d in docs:
        if d.topics and counts[d.topics[0]] >= min_documents:
            order.setdefault(d.topics[0], None)
    return list(order)


def make_splits(
    docs: Sequence[Document], documents: str = "keras", min_documents: int = MIN_TOPIC_DOCUMENTS
) -> tuple[list[str], TokenSplit, TokenSplit]:
    """(topics, LEWISSPLIT TRAIN pool, LEWISSPLIT TEST), tokenized, with class indices."""
    topics = select_topics(docs, min_documents)
    if len(topics) < 2:
        raise DataError(
            f"Reuters: only {len(topics)} topic(s) label {min_documents} or more documents in "
            f"these {len(docs)} documents; a classifier needs 2 (a partial copy? lower the "
            "dataset option min_topic_documents)"
        )
    index = {t: i for i, t in enumerate(topics)}
    chosen = [d for d in docs if d.topics and d.topics[0] in index]
    if documents == "single_topic":
        chosen = [d for d in chosen if len(d.topics) == 1 and d.body is not None]
    parts = {
        split: [d for d in chosen if d.split == split] for split in ("TRAIN", "TEST")
    }  # NOT-USED documents are left out, as in the Lewis split
    for split, part in parts.items():
        if not part:
            raise DataError(f"Reuters: no LEWISSPLIT={split} document among the chosen ones")
    pool, test = (
        TokenSplit(
            [d.words.split() for d in part],
            np.array([index[d.topics[0]] for d in part], dtype=np.int64),
        )
        for part in parts.values()
    )
    return topics, pool, test


def _from_keras(looked: list[str]) -> tuple[list[str], TokenSplit, TokenSplit]:
    """Keras' reuters.npz, its word ids turned back into words and re-tokenized our way."""
    try:
        import keras

        (x_train, y_train), (x_test, y_test) = keras.datasets.reuters.load_data()
        word_index = keras.datasets.reuters.get_word_index()
        names = [str(n) for n in keras.datasets.reuters.get_label_names()]
    except Exception as exc:  # any failure of the download is reported with the places
        raise _not_found(
            [
                *looked,
                f"Keras download (keras.datasets.reuters.load_data): {type(exc).__name__}: {exc}",
            ]
        ) from None
    return (
        names,
        _keras_tokens(x_train, y_train, word_index),
        _keras_tokens(x_test, y_test, word_index),
    )


def _keras_tokens(x: Any, y: Any, word_index: dict[str, int]) -> TokenSplit:
    """Keras' defaults: 1 starts a sequence, 2 is out of vocabulary, words are index + 3."""
    words = {i + 3: w for w, i in word_index.items()}
    tokens = [[t for i in seq if i in words for t in tokenize(words[i])] for seq in x]
    return TokenSplit(tokens, np.asarray(y, dtype=np.int64))


# -- the cache -----------------------------------------------------------------------------------


def _cache_key(files: Sequence[Path]) -> str:
    h = hashlib.sha256(f"reuters-parser-{PARSER_VERSION}|{TOKENIZER}".encode())
    for f in files:
        st = f.stat()
        h.update(f"|{f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _cache_path(key: str) -> Path:
    return cache_dir() / f"reuters21578-{key}.json.gz"


def _read_cache(key: str) -> list[Document] | None:
    path = _cache_path(key)
    if not path.is_file():
        return None
    try:
        rows = json.loads(gzip.decompress(path.read_bytes()))
        return [Document.from_json(r) for r in rows]
    except (OSError, EOFError, ValueError, TypeError, IndexError, zlib.error) as exc:
        # A damaged cache costs a re-parse, never a wrong dataset.
        log.warning("ignoring the unreadable cache %s (%s); parsing again", path, exc)
        return None


def _write_cache(key: str, docs: Sequence[Document]) -> None:
    path = _cache_path(key)
    data = gzip.compress(json.dumps([d.to_json() for d in docs]).encode(), compresslevel=3)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: trial processes of parallel workers may fill the cache together.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        log.warning("cannot write the Reuters cache %s: %s", path, exc)
