"""Every example in README.md and docs/*.md works as written.

pytest-codeblocks runs their python and shell blocks (``--codeblocks`` in pyproject.toml; the
root conftest.py gives each a temporary folder). It leaves YAML alone, so this module checks
every ``yaml`` block with the loader ``hpo spaces validate`` uses, reading the blocks with the
plugin's own parser and honouring the same ``<!--pytest.mark.skip(reason="...")-->`` markers
(a fragment of a space file is marked so). It also runs the own-family example of
docs/families.md end to end, and builds the documentation site (mkdocs.yml) with
``mkdocs build --strict``, so that a broken link or anchor, or a guide missing from the
navigation, fails the suite.

A block whose first line is a comment naming a file (``# mypackage/models.py``,
``# my_space.yaml``) is that file: python files named so are written into the folder where the
document's YAML blocks are validated, and the example study runs from them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pytest_codeblocks import CodeBlock, extract_from_file

from conftest import REPO, hpo

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Languages of fenced blocks: the plugin runs python and shell, this module yaml; text and
# unlabelled blocks are output. Any other label would let an example escape the tests.
RUN = {"python", "sh", "bash", "yaml"}
NOT_CODE = {"text", ""}
FILE_COMMENT = re.compile(r"#\s*(?P<name>[\w./-]+\.(?:py|ya?ml))\s*$")


def _blocks(document: Path) -> list[CodeBlock]:
    return list(extract_from_file(document))


def _file_name(block: CodeBlock) -> str | None:
    match = FILE_COMMENT.match(block.code.split("\n", 1)[0].strip())
    return match["name"] if match else None


def _write_python_files(document: Path, folder: Path) -> None:
    for block in _blocks(document):
        name = _file_name(block)
        if block.syntax == "python" and name:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(block.code)


def _yaml_blocks() -> list[object]:
    params = []
    for document in DOCUMENTS:
        for block in _blocks(document):
            if block.syntax != "yaml":
                continue
            if (_file_name(block) or "").endswith("kustomization.yaml"):
                continue  # a Kubernetes overlay: rendered by tests/test_kubernetes.py
            marks = [eval(m, {"pytest": pytest, "sys": sys}) for m in block.marks]
            name = f"{document.name}:{block.lineno}"
            params.append(pytest.param(document, block, id=name, marks=marks))
    return params


@pytest.mark.parametrize(("document", "block"), _yaml_blocks())
def test_yaml_blocks_are_valid_space_files(
    document: Path, block: CodeBlock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpo.spaces import load_spec

    # A space naming the document's own family (mypackage.models:build) finds it.
    _write_python_files(document, tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / (_file_name(block) or "space.yaml")
    path.write_text(block.code)
    load_spec(path)  # raises SpaceError naming file, key path and line


def test_every_code_block_is_run_or_is_output() -> None:
    """A block labelled ``yml``, ``console`` or ``shell`` would silently not be tested."""
    unknown = [
        f"{document.name}:{block.lineno}: {block.syntax!r}"
        for document in DOCUMENTS
        for block in _blocks(document)
        if block.syntax not in RUN | NOT_CODE
    ]
    assert not unknown, f"label these blocks one of {sorted(RUN | NOT_CODE)}: {unknown}"


@pytest.mark.slow
def test_own_family_example_runs(tmp_path: Path) -> None:
    """docs/families.md, "Your own family": its module and space file, as shown, run 2 trials."""
    guide = REPO / "docs" / "families.md"
    blocks = {_file_name(b): b for b in _blocks(guide)}
    assert {"mypackage/models.py", "my_space.yaml"} <= set(blocks), "the guide lost its example"
    _write_python_files(guide, tmp_path)
    (tmp_path / "my_space.yaml").write_text(blocks["my_space.yaml"].code)
    # As the guide runs it: PYTHONPATH=. hpo run my_space.yaml (fewer trials).
    env = {"PYTHONPATH": os.pathsep.join([".", os.environ.get("PYTHONPATH", "")])}
    result = hpo(
        "run", "my_space.yaml", "--trials", "2", "--workers", "1", "--json",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
    summary = json.loads(result.stdout)
    assert summary["complete"] == 2, summary


def test_documentation_site_builds_strictly(tmp_path: Path) -> None:
    """``mkdocs build --strict``: every link and anchor resolves, every guide is in the nav."""
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
         "--config-file", str(REPO / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert (tmp_path / "site" / "index.html").is_file()
    # Every guide in docs/ is a page of the site (omitted ones would warn, and fail, above).
    pages = {p.stem for p in (REPO / "docs").glob("*.md")}
    built = {p.parent.name for p in (tmp_path / "site").glob("*/index.html")}
    assert pages <= built, f"guides not built: {sorted(pages - built)}"
