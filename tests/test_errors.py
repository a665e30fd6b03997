"""One error hierarchy: every exception class of hpo is an HpoError carrying its exit status."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

from hpo.errors import HpoError, UsageError

from conftest import REPO, hpo


def _exception_classes() -> list[type[BaseException]]:
    """Every exception class defined in hpo's sources (found by reading them, then imported)."""
    found = []
    for path in sorted((REPO / "hpo").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = [
            node.name
            for node in tree.body
            if isinstance(node, ast.ClassDef)
            and any("Error" in ast.unparse(b) or "Exception" in ast.unparse(b) for b in node.bases)
        ]
        if not names:
            continue
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        mod = importlib.import_module(module)
        for name in names:
            cls = getattr(mod, name)
            if inspect.isclass(cls) and issubclass(cls, BaseException):
                found.append(cls)
    return found


def test_every_exception_class_is_an_hpo_error() -> None:
    classes = _exception_classes()
    assert len(classes) >= 20  # SpaceError, StudyError, EnsembleError, ModelError...
    outside = [f"{c.__module__}.{c.__qualname__}" for c in classes if not issubclass(c, HpoError)]
    assert outside == []


def test_the_classes_keep_their_names_bases_and_exit_codes() -> None:
    from hpo.datasets import DataError
    from hpo.ensemble import EnsembleError, RegistryUnavailableError
    from hpo.families import FamilyNotAllowedError
    from hpo.spaces import SpaceError
    from hpo.storage import StorageError
    from hpo.storage.studies import SamplerError, StudyError
    from hpo.tracking.models import ModelError

    for cls in (SpaceError, DataError, EnsembleError, ModelError):
        assert issubclass(cls, UsageError) and issubclass(cls, ValueError)
        assert cls.exit_code == 2
    assert issubclass(StudyError, RuntimeError) and StudyError.exit_code == 2
    assert issubclass(FamilyNotAllowedError, ImportError) and FamilyNotAllowedError.exit_code == 2
    assert RegistryUnavailableError.exit_code == 1 and SamplerError.exit_code == 1
    assert StorageError("bad url", 2).exit_code == 2 and StorageError("down", 1).exit_code == 1
    assert HpoError.exit_code == 1 and UsageError.exit_code == 2


@pytest.mark.parametrize(
    ("argv", "code", "says"),
    [
        (("study", "status", "nosuch"), 2, "no study named 'nosuch'"),
        (("study", "create", "missing.yaml"), 2, "missing.yaml"),
        (("run", "missing.yaml"), 2, "missing.yaml"),
        (("study", "create", "s.yaml", "--name", "bad name!"), 2, "--name"),
    ],
)
def test_cli_failures_keep_their_exit_codes(
    tmp_path: Path, argv: tuple[str, ...], code: int, says: str
) -> None:
    (tmp_path / "s.yaml").write_text((REPO / "search_spaces/image_cnn_digits.yaml").read_text())
    done = hpo(*argv, cwd=tmp_path)
    assert done.returncode == code, done.stderr
    assert says in done.stderr and "Traceback" not in done.stderr
