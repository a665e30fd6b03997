"""Model families by name; ``module:attribute`` names a user's own family.

Example:
    >>> from hpo.families import FAMILIES
    >>> "image_cnn" in FAMILIES
    True
"""

from __future__ import annotations

import inspect
import os

from hpo._registry import LazyRegistry, import_object
from hpo.errors import UsageError
from hpo.families._base import Family, FunctionFamily

FAMILIES: LazyRegistry[type[Family]] = LazyRegistry(
    "family",
    {
        "image_cnn": "hpo.families.image_cnn:ImageCNN",
        "dense_bn": "hpo.families.dense_bn:DenseBN",
        "text_conv1d": "hpo.families.text_conv1d:TextConv1D",
        "text_dense": "hpo.families.text_dense:TextDense",
        "char_lstm": "hpo.families.language_models:CharLSTM",
        "word_lstm": "hpo.families.language_models:WordLSTM",
        "sorted_seq": "hpo.families.sorted_seq:SortedSeq",
        "vae": "hpo.families.vae:VAE",
        "gan": "hpo.families.gan:GAN",
    },
)


ALLOWED_MODULES_ENV = "HPO_ALLOWED_FAMILY_MODULES"


class FamilyNotAllowedError(UsageError, ImportError):
    """A study's own family is outside the modules this worker may import."""


def family_allowed(name: str) -> bool:
    """Whether this process may import family ``name``.

    Built-in families always; ``module:attribute`` ones when ``$HPO_ALLOWED_FAMILY_MODULES``
    is unset, or when their module is one of its comma-separated modules or packages (or
    inside one). Set but empty: built-in families only.

    Example:
        >>> os.environ[ALLOWED_MODULES_ENV] = "mypackage"
        >>> family_allowed("mypackage.models:build"), family_allowed("os:system")
        (True, False)
        >>> family_allowed("image_cnn")
        True
        >>> del os.environ[ALLOWED_MODULES_ENV]
    """
    if name in FAMILIES:
        return True
    raw = os.environ.get(ALLOWED_MODULES_ENV)
    if raw is None:
        return True
    module = name.partition(":")[0]
    prefixes = [p.strip() for p in raw.split(",") if p.strip()]
    return any(module == p or module.startswith(p + ".") for p in prefixes)


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
    :func:`family_allowed`.
    """
    if not family_allowed(name):
        raise FamilyNotAllowedError(
            f"family {name!r} is not allowed on this worker: its module is not in "
            f"${ALLOWED_MODULES_ENV} ({os.environ.get(ALLOWED_MODULES_ENV)!r})"
        )
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
    "FAMILIES",
    "Family",
    "FamilyNotAllowedError",
    "FunctionFamily",
    "family_allowed",
    "family_ensembles",
    "get_family",
]
