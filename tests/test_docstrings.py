"""The examples in hpo's docstrings run and print what they show: every module of the package
(``python -m hpo`` aside: importing it runs the command line), with ``doctest.ELLIPSIS``.

An example that cannot run in a test (it needs a study store or a trained model) is marked
``# doctest: +SKIP`` where it stands, so that it is still read as code.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import hpo


def _modules() -> list[str]:
    """The modules whose source holds an example (read as text: importing them all here would
    import TensorFlow while pytest collects)."""
    found = []
    names = [hpo.__name__, *(m.name for m in pkgutil.walk_packages(hpo.__path__, "hpo."))]
    for name in names:
        spec = importlib.util.find_spec(name)
        origin = Path(spec.origin) if spec and spec.origin else None
        if origin and not name.endswith(".__main__") and ">>>" in origin.read_text("utf-8"):
            found.append(name)
    return sorted(found)


def test_every_module_is_found() -> None:
    # A package walk that silently found nothing would make the test below vacuous.
    assert {"hpo", "hpo.spaces._params", "hpo.families.gan", "hpo.api._study"} <= set(_modules())
    assert "hpo.__main__" not in _modules()


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    # The failures themselves are in the captured output (doctest prints each one).
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
