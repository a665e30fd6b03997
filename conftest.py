"""The code blocks of README.md and docs/*.md run as tests (pytest-codeblocks, ``--codeblocks``).

Each python or shell block runs in a fresh temporary folder holding a copy of ``search_spaces/``,
with this environment's ``hpo`` first on ``PATH`` and no study store or MLflow server from the
environment, so ``hpo spaces validate search_spaces/image_cnn.yaml`` runs as a reader would run
it in a checkout. YAML blocks are checked by tests/test_docs.py. How to mark a block that must
not run: docs/development.md.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent
# Under CI, a skip for a missing service, dataset or package fails the run (tests/ci_skips.py).
pytest_plugins = ["tests.ci_skips"]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    from pytest_codeblocks.plugin import TestBlock

    if not isinstance(item, TestBlock):
        return (yield)
    if item.obj.syntax in ("sh", "bash"):  # stop at the first failing line, not only the last
        item.obj = dataclasses.replace(item.obj, code="set -e\n" + item.obj.code)
    cwd = os.getcwd()
    env = pytest.MonkeyPatch()
    with tempfile.TemporaryDirectory(prefix="hpo-codeblock-") as folder:
        shutil.copytree(REPO / "search_spaces", Path(folder) / "search_spaces")
        env.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
        env.delenv("HPO_STORAGE", raising=False)
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        os.chdir(folder)
        try:
            return (yield)
        except subprocess.CalledProcessError as exc:
            # pytest-codeblocks reports a failed shell block by its exit status alone.
            out = exc.stdout.decode(errors="replace") if exc.stdout else ""
            err = exc.stderr.decode(errors="replace") if exc.stderr else ""
            raise RuntimeError(
                f"{item.path.name}, {item.name}: exit status {exc.returncode}\n"
                f"```\n{exc.cmd}```\nstdout:\n{out}\nstderr:\n{err}"
            ) from None
        finally:
            os.chdir(cwd)
            env.undo()
