"""PDF files in the text_corpus dataset: text layer read, page layout cleaned, empty files named.

Two kinds of PDF: a real manual typeset with LaTeX (Debian's camlidl-doc, installed by
``make data``: running page numbers, words hyphenated at line ends, ``fi`` ligatures), and
PDFs written here with Matplotlib's PDF backend whose every line is known, so the cleaned text
is compared whole.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
from pathlib import Path
from textwrap import dedent

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from hpo.cli import app
from hpo.datasets import DataError, Dataset, load_dataset
from hpo.datasets import text_corpus as tc
from hpo.datasets.pdf_text import clean_pages, pdf_pages, pdf_text
from hpo.spaces import DatasetSpec

CAMLIDL_PDF = Path("/usr/share/doc/camlidl/camlidl-1.04.doc.pdf")
needs_camlidl = pytest.mark.skipif(
    not CAMLIDL_PDF.is_file(),
    reason="Debian package camlidl-doc is not installed (make data installs it)",
)

HEADER = "A Thesis on Language Models"
# Four pages of body lines. Words hyphenated at line ends: compu-tation (across a page break),
# be-come, dis-tribution; a compound that stays: well-known is not at a line end.
PAGES = [
    [
        "Language models predict the next word of a text from the",
        "words before it. They are trained on large corpora, and a",
        "recurrent network reads the text one token at a time and",
        "keeps a state that sums up all that it has read so far.",
        "Training such a network takes patience and much compu-",
    ],
    [
        "tation: every epoch reads the whole corpus from its start,",
        "and its samples show what it learned.",
        "1.2 Samples",
        "Early in training the samples repeat the most frequent",
        "words; later they follow the grammar of the text and be-",
    ],
    [
        "come readable, even when they make no sense at all. The",
        "temperature reshapes the well-known softmax dis-",
        "tribution before each token is drawn.",
        "Low values give safe, dull text.",
    ],
    [
        "High values give surprising text, then text that is no",
        "longer text at all but a stream of odd letters and marks.",
    ],
]
EXPECTED = (
    "Language models predict the next word of a text from the words before it. They are "
    "trained on large corpora, and a recurrent network reads the text one token at a time and "
    "keeps a state that sums up all that it has read so far. Training such a network takes "
    "patience and much computation: every epoch reads the whole corpus from its start, and its "
    "samples show what it learned.\n"
    "1.2 Samples\n"
    "Early in training the samples repeat the most frequent words; later they follow the "
    "grammar of the text and become readable, even when they make no sense at all. The "
    "temperature reshapes the well-known softmax distribution before each token is drawn.\n"
    "Low values give safe, dull text.\n"
    "High values give surprising text, then text that is no longer text at all but a stream "
    "of odd letters and marks."
)


@pytest.fixture(autouse=True)
def pdf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Extracted pages are cached: each test gets its own cache."""
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "pdf-text"


def write_pdf(path: Path, pages: list[list[str]], header: str | None = HEADER) -> Path:
    """A PDF with a running header, the lines of each page, and a page number at the foot."""
    import matplotlib
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure

    # TrueType fonts with their character map: the text layer reads back as written.
    with matplotlib.rc_context({"pdf.fonttype": 42}), PdfPages(path) as pdf:
        for number, lines in enumerate(pages, start=1):
            fig = Figure(figsize=(8.27, 11.69))
            if header:
                fig.text(0.1, 0.95, f"{header}, page {number}", fontsize=9)
            for i, line in enumerate(lines):
                fig.text(0.1, 0.9 - 0.025 * i, line, fontsize=11)
            if lines:  # a page without text has no page number either: a scan
                fig.text(0.5, 0.04, f"- {number} -" if number % 2 else str(number), fontsize=9)
            pdf.savefig(fig)
    return path


def test_generated_pdf_is_cleaned_to_its_prose(tmp_path: Path) -> None:
    path = write_pdf(tmp_path / "thesis.pdf", PAGES)
    raw = pdf_pages(path)
    # What the cleaning removes is really in the text layer.
    assert raw[0].splitlines()[0] == f"{HEADER}, page 1" and raw[0].splitlines()[-1] == "- 1 -"
    assert raw[1].splitlines()[-1] == "2" and "much compu-" in raw[0]
    assert pdf_text(path) == EXPECTED


def test_pdf_folder_as_a_word_level_dataset(tmp_path: Path) -> None:
    folder = tmp_path / "theses"
    folder.mkdir()
    write_pdf(folder / "a.pdf", PAGES)
    write_pdf(folder / "b.PDF", PAGES)
    (folder / "notes.txt").write_text("Plain notes beside the PDFs.\n", encoding="utf-8")
    data = load_dataset(
        DatasetSpec(
            name="text_corpus",
            validation_fraction=0.1,
            test_fraction=0.1,
            options={"path": str(folder), "level": "word", "maxlen": 4},
        )
    )
    vocabulary = set(data.meta["vocabulary"])
    assert {"computation", "become", "distribution", "well", "-", "known"} <= vocabulary
    assert not {"compu", "tation", "be", "dis", "thesis", "page"} & vocabulary
    text = tc.read_text(folder)
    assert text == f"{EXPECTED}\n\n{EXPECTED}\n\nPlain notes beside the PDFs.\n"


def test_files_without_text_are_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    scan = write_pdf(folder / "scan.pdf", [[], []], header=None)
    empty = folder / "empty.txt"
    empty.write_text(" \n", encoding="utf-8")
    write_pdf(folder / "thesis.pdf", PAGES)
    with caplog.at_level(logging.WARNING, logger="hpo.datasets"):
        assert tc.read_text(folder) == EXPECTED
    warned = [r.getMessage() for r in caplog.records]
    assert any(str(scan) in m and "no text" in m and "OCR" in m for m in warned), warned
    assert any(str(empty) in m and "no text" in m for m in warned), warned
    (folder / "thesis.pdf").unlink()
    with pytest.raises(DataError) as info:
        tc.read_text(folder)
    message = str(info.value)
    assert "\n" not in message and str(scan) in message and str(empty) in message


def test_no_text_at_all_stops_the_study_with_status_2(workdir: Path) -> None:
    folder = workdir / "scans"
    folder.mkdir()
    scans = [write_pdf(folder / f"scan{i}.pdf", [[]], header=None) for i in (1, 2)]
    space = workdir / "lm.yaml"
    space.write_text(
        dedent(
            f"""\
            name: lm
            family: word_lstm
            dataset: {{name: text_corpus, options: {{path: {folder}, level: word}}}}
            objective: {{metric: val_loss, direction: minimize}}
            budget: {{max_epochs: 1}}
            params: {{units: 8}}
            """
        )
    )
    result = CliRunner().invoke(app, ["study", "create", str(space)], catch_exceptions=False)
    assert result.exit_code == 2
    err = result.stderr.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert all(str(s) in err for s in scans), err
    assert not (workdir / "hpo.db").exists()


def test_extracted_pages_are_cached_until_the_file_changes(tmp_path: Path, pdf_cache: Path) -> None:
    path = write_pdf(tmp_path / "thesis.pdf", PAGES)
    assert pdf_text(path) == EXPECTED
    (cached,) = pdf_cache.iterdir()
    # What the cache says is what is read, as long as the file is the same...
    cached.write_bytes(gzip.compress(json.dumps(["From the cache."]).encode()))
    assert pdf_text(path) == "From the cache."
    # ... a damaged cache is read again from the PDF ...
    cached.write_bytes(b"not gzip")
    assert pdf_text(path) == EXPECTED
    # ... and a changed file is read again.
    cached = next(pdf_cache.iterdir())
    cached.write_bytes(gzip.compress(json.dumps(["From the cache."]).encode()))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert pdf_text(path) == EXPECTED


def test_damaged_pdf_is_named(tmp_path: Path) -> None:
    good = write_pdf(tmp_path / "good.pdf", PAGES).read_bytes()
    damaged = tmp_path / "damaged.pdf"
    damaged.write_bytes(good[: len(good) // 3])
    with pytest.raises(DataError, match=r"damaged\.pdf is not a readable PDF"):
        tc.read_text(damaged)


@needs_camlidl
def test_real_latex_manual() -> None:
    """camlidl's manual: 26 LaTeX pages, numbered at the top, words hyphenated at line ends."""
    raw = pdf_pages(CAMLIDL_PDF)
    assert len(raw) == 26
    assert raw[1].splitlines()[0] == "2" and raw[10].splitlines()[0] == "11"
    assert "be-\ncomes" in raw[10] and "depen-\ndent" in raw[10] and "\ufb01" in raw[0]
    text = pdf_text(CAMLIDL_PDF)
    assert "struct s { double x,y; [ignore] void * data; } becomes type struct_s" in text
    assert "(We call those fields dependent fields.)" in text
    assert "well-defined C interface" in text
    assert not any(ch in text for ch in "\ufb00\ufb01\ufb02\ufb03\ufb04")
    # No page number is left: neither as a line nor glued to the prose it interrupted.
    assert not [line for line in text.splitlines() if line.strip().isdigit()]
    # Page 1 ends with a footnote (a URL), page 2 starts with its number, then the sentence.
    assert re.search(r"index\.html\s+programs, either by dynamic linking", text)


@needs_camlidl
def test_real_pdf_as_char_and_word_corpora() -> None:
    def corpus(**options: object) -> Dataset:
        spec = DatasetSpec(
            name="text_corpus",
            validation_fraction=0.1,
            test_fraction=0.1,
            options={"path": str(CAMLIDL_PDF), **options},
        )
        return load_dataset(spec)

    chars = corpus(maxlen=20, max_chars=20000)
    assert chars.meta["chars_read"] == 20000 and "\ufb01" not in chars.meta["vocabulary"]
    words = corpus(level="word", maxlen=8, num_words=500)
    vocabulary = words.meta["vocabulary"]
    assert len(vocabulary) == 500 and {"camlidl", "idl", "interface", "the"} <= set(vocabulary)
    # Halves of words hyphenated in the manual are not words of the corpus.
    assert not {"depen", "resented"} & set(vocabulary) and "dependent" in vocabulary


_NO_JOINS = "-\u00ad\ufb00\ufb01\ufb02\ufb03\ufb04\ufb05\ufb06"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(st.characters(exclude_categories=("Cs",)), max_size=300), max_size=8))
@example(pages=["0:\n0:", ":", "\xad"])  # a page of one soft hyphen, last
def test_cleaning_never_fails(pages: list[str]) -> None:
    text = clean_pages(pages)
    assert not any(ch in text for ch in "\u00ad\ufb01\ufb02\r")
    assert text == text.strip("\n")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.text(st.characters(exclude_categories=("Cs",), exclude_characters=_NO_JOINS)),
        max_size=8,
    )
)
def test_cleaning_only_drops_whole_words(pages: list[str]) -> None:
    """Without hyphens or ligatures, every word of the output is a word of some page."""
    words = {w for page in pages for w in page.split()}
    assert set(clean_pages(pages).split()) <= words
