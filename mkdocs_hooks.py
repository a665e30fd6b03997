"""MkDocs hooks (mkdocs.yml): README.md is the site's home page.

The README lives at the repository root, outside ``docs/``, and links to the guides as
``docs/NAME.md``; on the site it is ``index.md`` beside them, so those links lose their
``docs/`` prefix, and a guide's link to ``../README.md`` points at ``index.md``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

README = Path(__file__).resolve().parent / "README.md"
TO_DOCS = re.compile(r"\]\(docs/")
TO_README = re.compile(r"\]\(\.\./README\.md")


def on_files(files: Files, config: MkDocsConfig, **_: Any) -> Files:
    files.append(File.generated(config, "index.md", abs_src_path=str(README)))
    return files


def on_page_markdown(
    markdown: str, page: Page, config: MkDocsConfig, files: Files, **_: Any
) -> str:
    if page.file.src_uri == "index.md":
        return TO_DOCS.sub("](", markdown)
    return TO_README.sub("](index.md", markdown)
