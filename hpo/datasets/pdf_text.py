"""Plain text of PDF files (theses, papers, manuals) for the language-model corpora.

The text layer of each page is read with ``pypdf`` (no OCR: a scanned PDF without a text layer
yields no text), then cleaned of what the page layout adds to the prose:

* **page numbers**: a first or last line of a page that is only a number (``12``, ``- 12 -``,
  ``Page 12``, ``12 of 80``, roman ``xii``) goes;
* **running headers and footers**: a line among the first two or the last two of a page that
  recurs there on at least :data:`REPEATED_PAGES` pages, digits ignored (``Chapter 2.
  Methods 17`` and ``Chapter 2. Methods 19`` are one header), goes;
* **hyphenation at line ends**: a word split as ``compu-`` / ``tation`` across a line (or a
  page) break is joined (``computation``) when the next line starts with a lowercase letter;
  a hyphenated compound split at its hyphen (``well-`` / ``known``) is joined the same way,
  which no rule without a dictionary can tell apart;
* **ligatures** (``ﬁ``, ``ﬂ``, ...) become their letters and soft hyphens go;
* **lines are joined into paragraphs**: a line break is kept only after a line clearly shorter
  than the text's usual line (under :data:`SHORT_LINE` of the median length of its lines):
  the end of a paragraph, a heading, a list item, a line of code. Other line breaks are
  layout, not text, and become spaces.

Example:
    >>> pages = ["Thesis 2026\\nThe model was trained on many com-\\nputers all through the night, "
    ...          "and\\n1", "Thesis 2026\\nthen tested anew.\\nA heading\\n2", "Thesis 2026\\nAll "
    ...          "results were as expected, all of\\nthem, and nothing was left out.\\n3"]
    >>> print(clean_pages(pages))
    The model was trained on many computers all through the night, and then tested anew.
    A heading
    All results were as expected, all of them, and nothing was left out.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import statistics
import tempfile
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from hpo.datasets._base import DataError

log = logging.getLogger("hpo.datasets")
PDF_SUFFIX = ".pdf"
# A line at a page's edge recurring on this many pages is a running header or footer.
REPEATED_PAGES = 3
# How many lines at the top and at the bottom of a page may be headers or footers.
EDGE_LINES = 2
# A line under this share of the median line length ends its paragraph (or is a heading).
SHORT_LINE = 0.75

_LIGATURES = str.maketrans(
    {"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl",
     "\ufb05": "st", "\ufb06": "st"}
)  # fmt: skip
_PAGE_NUMBER_RE = re.compile(
    r"(?:page\s+)?[-\u2013\u2014]?\s*(?:\d{1,4}|[ivxlcdm]{1,7})\s*[-\u2013\u2014]?"
    r"(?:\s*(?:of|/)\s*\d{1,4})?",
    re.IGNORECASE,
)
_DIGITS_RE = re.compile(r"\d+")
_SPACES_RE = re.compile(r"[ \t\u00a0]+")


def is_pdf(path: Path) -> bool:
    return path.suffix.lower() == PDF_SUFFIX


def pdf_text(path: Path) -> str:
    """The cleaned text of a PDF file (see the module documentation); ``""`` if it has none.

    Raises :class:`DataError` naming the file when it is not a PDF that ``pypdf`` can read
    (damaged, or encrypted with a password).
    """
    return clean_pages(pdf_pages(path))


def pdf_pages(path: Path) -> list[str]:
    """The raw text of each page of a PDF file, as ``pypdf`` extracts it.

    Extraction took 60 ms a page (a 26-page manual, shared 2-core CPU), paid by every trial
    process that loads the corpus, so
    the pages are cached under ``$HPO_CACHE_DIR/pdf-text/`` (see
    :func:`hpo.cache.cache_dir`), keyed by the file's path, size and modification
    time and the ``pypdf`` version: a changed file is read again.
    """
    key = _cache_key(path)
    cached = _read_cache(key)
    if cached is not None:
        return cached
    pages = _extract_pages(path)
    _write_cache(key, pages)
    return pages


def _extract_pages(path: Path) -> list[str]:
    try:
        import pypdf
    except ImportError:
        raise DataError(
            f"{path} is a PDF, and reading PDFs needs the Python package 'pypdf' (a dependency "
            "of hpo): pip install pypdf"
        ) from None
    try:
        reader = pypdf.PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise DataError(
                f"{path} is an encrypted PDF that needs a password: save a copy without one"
            )
        return [page.extract_text() or "" for page in reader.pages]
    except DataError:
        raise
    except Exception as exc:  # pypdf raises many kinds on damaged files
        raise DataError(
            f"{path} is not a readable PDF ({type(exc).__name__}: {exc}): leave it out of the "
            "folder or with the dataset option 'pattern'"
        ) from None


def _cache_key(path: Path) -> str:
    from importlib.metadata import version

    stat = path.stat()
    fields = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|pypdf {version('pypdf')}"
    return hashlib.sha256(fields.encode()).hexdigest()[:24]


def _cache_path(key: str) -> Path:
    from hpo.cache import cache_dir

    return cache_dir() / "pdf-text" / f"{key}.json.gz"


def _read_cache(key: str) -> list[str] | None:
    path = _cache_path(key)
    try:
        pages = json.loads(gzip.decompress(path.read_bytes()))
    except FileNotFoundError:
        return None
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        # A damaged cache costs a new extraction, never wrong text.
        log.warning("ignoring the unreadable cache %s (%s); reading the PDF again", path, exc)
        return None
    if not isinstance(pages, list) or not all(isinstance(p, str) for p in pages):
        return None
    return pages


def _write_cache(key: str, pages: list[str]) -> None:
    path = _cache_path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: the trial processes of parallel workers may fill it together.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(gzip.compress(json.dumps(pages).encode(), compresslevel=3))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        log.warning("cannot write the PDF text cache %s: %s", path, exc)


def clean_pages(pages: Sequence[str]) -> str:
    """The text of a document's pages without page numbers, headers, footers and hyphenation.

    Example:
        >>> clean_pages(["- 1 -\\nA ﬁne day.", "A ﬁne day.\\nii"])
        'A fine day. A fine day.'
    """
    split = [_page_lines(page) for page in pages]
    repeated = _repeated_edge_lines(split)
    kept: list[str] = []
    for lines in split:
        kept.extend(_strip_edges(lines, repeated))
    # Soft hyphens go last (join_paragraphs reads them as hyphenation); a line that held only
    # one would leave a line break at an end.
    return join_paragraphs(kept).replace("\u00ad", "").strip()


def join_paragraphs(lines: Sequence[str]) -> str:
    """Lines joined by spaces, with a line break after each clearly short line.

    A word hyphenated across two lines is joined when the next line starts with a lowercase
    letter.

    Example:
        >>> print(join_paragraphs(["A line of the usual length here", "another line of the "
        ...       "usual le-", "ngth and its end.", "Heading", "A third line of the usual length"]))
        A line of the usual length here another line of the usual length and its end.
        Heading
        A third line of the usual length
    """
    present = [line for line in lines if line]
    if not present:
        return ""
    usual = statistics.median(len(line) for line in present)
    out: list[str] = []
    for line, following in zip(present, [*present[1:], ""], strict=True):
        if len(line) < SHORT_LINE * usual:
            out += [line, "\n"]
        elif _hyphenated(line, following):
            out.append(line[:-1])
        else:
            out += [line, " "]
    return "".join(out).rstrip()


def _hyphenated(line: str, following: str) -> bool:
    """Whether ``line`` ends in a word hyphenated (``compu-``) that ``following`` ends."""
    return (
        len(line) >= 2
        and line[-1] in "-\u00ad"
        and line[-2].isalpha()
        and following[:1].isalpha()
        and following[:1].islower()
    )


def _page_lines(page: str) -> list[str]:
    text = page.translate(_LIGATURES).replace("\r\n", "\n").replace("\r", "\n")
    return [_SPACES_RE.sub(" ", line).strip() for line in text.split("\n") if line.strip()]


def _edge_key(line: str) -> str:
    return _DIGITS_RE.sub("#", line.lower())


def _edges(lines: Sequence[str]) -> list[int]:
    n = len(lines)
    return sorted({*range(min(EDGE_LINES, n)), *range(max(0, n - EDGE_LINES), n)})


def _repeated_edge_lines(pages: Sequence[Sequence[str]]) -> set[str]:
    counts: Counter[str] = Counter()
    for lines in pages:
        counts.update({_edge_key(lines[i]) for i in _edges(lines)})
    return {key for key, count in counts.items() if count >= REPEATED_PAGES}


def _strip_edges(lines: list[str], repeated: set[str]) -> list[str]:
    edges = set(_edges(lines))

    def layout(line: str) -> bool:
        return _PAGE_NUMBER_RE.fullmatch(line) is not None or _edge_key(line) in repeated

    return [line for i, line in enumerate(lines) if not (i in edges and layout(line))]
