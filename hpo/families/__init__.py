"""Model families by name; ``module:attribute`` names a user's own family.

Example:
    >>> from hpo.families import FAMILIES
    >>> "image_cnn" in FAMILIES
    True
"""

from __future__ import annotations

import inspect

from hpo._registry import LazyRegistry, import_object
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
    },
)


def get_family(name: str) -> Family:
    """An instance of the family called ``name`` (a registered name or ``module:attribute``).

    ``module:attribute`` may be a :class:`Family` subclass, an instance, or a function
    ``build(hp, data)`` returning a compiled Keras model.
    """
    obj = FAMILIES.get(name) if name in FAMILIES else import_object(name)
    if inspect.isclass(obj) and issubclass(obj, Family):
        return obj()
    if isinstance(obj, Family):
        return obj
    if callable(obj):
        return FunctionFamily(name, obj)
    raise TypeError(f"{name} is neither a Family nor a build(hp, data) function")


__all__ = ["FAMILIES", "Family", "FunctionFamily", "get_family"]
