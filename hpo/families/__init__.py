"""Model families by name; ``module:attribute`` names a user's own family.

Example:
    >>> from hpo.families import FAMILIES
    >>> "image_cnn" in FAMILIES
    True
"""

from __future__ import annotations

import inspect

from hpo._registry import import_object
from hpo.catalog import ALLOWED_MODULES_ENV, FAMILIES, ModuleNotAllowedError, check_allowed
from hpo.catalog import module_allowed as family_allowed
from hpo.families._base import EVAL_BATCH_SIZE, Family, FunctionFamily, prebuild

#: Kept under its first name: a study's own family outside the worker's allow-list.
FamilyNotAllowedError = ModuleNotAllowedError


def family_ensembles(name: str) -> bool:
    """Whether ``hpo ensemble build`` may combine trials of family ``name`` (a registered
    family's :attr:`Family.ensembles`; a family of one's own: yes)."""
    if name not in FAMILIES:
        return True
    return bool(getattr(FAMILIES.get(name), "ensembles", True))


def get_family(name: str) -> Family:
    """An instance of the family called ``name`` (a registered name or ``module:attribute``).

    ``module:attribute`` may be a :class:`Family` subclass, an instance, or a function
    ``build(hp, data)`` returning a compiled Keras model. Its module is imported only if
    :func:`hpo.catalog.module_allowed` (``$HPO_ALLOWED_FAMILY_MODULES``).
    """
    check_allowed("family", name)
    obj = FAMILIES.get(name) if name in FAMILIES else import_object(name)
    if inspect.isclass(obj) and issubclass(obj, Family):
        return obj()
    if isinstance(obj, Family):
        return obj
    if callable(obj):
        return FunctionFamily(name, obj)
    raise TypeError(f"{name} is neither a Family nor a build(hp, data) function")


__all__ = [
    "ALLOWED_MODULES_ENV",
    "EVAL_BATCH_SIZE",
    "FAMILIES",
    "Family",
    "FamilyNotAllowedError",
    "FunctionFamily",
    "family_allowed",
    "family_ensembles",
    "get_family",
    "prebuild",
]
