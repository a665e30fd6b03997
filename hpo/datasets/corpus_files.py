"""The files of a text corpus: one file or a folder's, UTF-8 text or PDF, read in order.

A folder is read recursively in sorted path order, hidden files and folders skipped, its files
chosen by a glob (``pattern``). A file whose name ends in ``.pdf`` (any case) is read as a PDF
(:mod:`hpo.datasets.pdf_text`: its text layer, without page numbers, running headers and
footers, or hyphenation at line ends); any other file as UTF-8 text. A file that yields no text
(an empty file, a scanned PDF without a text layer) is left out with a warning naming it; when
no file yields text, :class:`DataError` names them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hpo.datasets._base import DataError
from hpo.datasets.pdf_text import is_pdf, pdf_text

log = logging.getLogger("hpo.datasets")

DEFAULT_PATTERN = "**/*"
# How many files an error names before it says how many more there are.
_NAMED = 10


def read_text(path: Path, pattern: str = DEFAULT_PATTERN, max_chars: int | None = None) -> str:
    """The text of a file, or of a folder's files joined by blank lines (sorted by path).

    Reading stops once ``max_chars`` characters are read. Raises :class:`DataError` for a
    missing path, a folder without files, a corpus without text (naming its files), a file
    that is not UTF-8 or a damaged PDF (named).
    """
    if not path.exists():
        raise DataError(
            f"text_corpus: {path} does not exist (dataset option 'path', resolved from "
            f"{Path.cwd()}): give a UTF-8 text or PDF file, or a folder of them"
        )
    files = [path] if path.is_file() else folder_files(path, pattern)
    if not files:
        raise DataError(
            f"text_corpus: no files match {pattern!r} in {path}: put UTF-8 text or PDF files "
            "there or change the dataset option 'pattern'"
        )
    parts: list[str] = []
    empty: list[Path] = []
    size = 0
    for file in files:
        text = read_file(file)
        if not text.strip():
            empty.append(file)
            log.warning("text_corpus: %s yields no text; it is left out%s", file, _why(file))
            continue
        parts.append(text)
        size += len(text)
        if max_chars is not None and size >= max_chars:
            break
    if not parts:
        named = ", ".join(str(f) for f in empty[:_NAMED])
        more = f" and {len(empty) - _NAMED} more" if len(empty) > _NAMED else ""
        raise DataError(
            f"text_corpus: no file of {path} yields text (empty, only white space, or a PDF "
            f"without a text layer): {named}{more}"
        )
    joined = "\n\n".join(parts)
    return joined[:max_chars] if max_chars is not None else joined


def read_file(file: Path) -> str:
    """The text of one corpus file: a PDF's cleaned text layer, else its UTF-8 text."""
    if is_pdf(file):
        return pdf_text(file)
    return read_utf8(file).replace("\r\n", "\n").lstrip("\ufeff")


def folder_files(folder: Path, pattern: str) -> list[Path]:
    """The files under ``folder`` matching ``pattern``, sorted, hidden ones left out."""

    def hidden(p: Path) -> bool:
        return any(part.startswith(".") for part in p.relative_to(folder).parts)

    return sorted(p for p in folder.glob(pattern) if p.is_file() and not hidden(p))


def read_utf8(file: Path) -> str:
    """A file's UTF-8 text; :class:`DataError` naming the file and the first bad byte if not."""
    data = file.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{file} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}): "
            "convert it (e.g. iconv -f latin1 -t utf-8), or leave it out of the folder or "
            "with the dataset option 'pattern' (e.g. '**/*.txt')"
        ) from None


def _why(file: Path) -> str:
    if is_pdf(file):
        return " (a scanned PDF has no text layer: run OCR on it, e.g. ocrmypdf)"
    return " (empty or only white space)"
