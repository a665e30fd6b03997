"""Tokens exactly as Keras' ``TextVectorization`` makes them, without TensorFlow.

Text classifiers train on token ids made here (in the data loader, once) and are saved with a
``TextVectorization`` layer that makes the same ids from raw strings. The two must agree token
for token, so this mirrors the layer's defaults (``standardize="lower_and_strip_punctuation"``,
``split="whitespace"``) as TensorFlow implements them: ``tf.strings.lower`` lower-cases ASCII
letters only, the punctuation of :data:`STRIP_PUNCTUATION` is removed (not replaced by a
space: "U.S." becomes "us"), and ``tf.strings.split`` splits on ASCII white space only.
``tests/test_inputs.py`` checks the agreement on generated text.
"""

from __future__ import annotations

import re

# keras.src.layers.preprocessing.text_vectorization's DEFAULT_STRIP_REGEX.
STRIP_PUNCTUATION = r'[!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']'
_STRIP_RE = re.compile(STRIP_PUNCTUATION)
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_ASCII_SPACE_RE = re.compile(r"[ \t\n\v\f\r]+")


def keras_tokenize(text: str) -> list[str]:
    """The tokens ``TextVectorization``'s default standardization and split make of ``text``.

    Example:
        >>> keras_tokenize("The U.S. company's profit rose 4.5 pct to 1,200 dlrs - Reuter")
        ... # doctest: +NORMALIZE_WHITESPACE
        ['the', 'us', 'companys', 'profit', 'rose', '45', 'pct', 'to', '1200', 'dlrs', 'reuter']
        >>> keras_tokenize("NESTLÉ Café")  # ASCII letters only, as TensorFlow lower-cases
        ['nestlÉ', 'café']
    """
    stripped = _STRIP_RE.sub("", text.translate(_ASCII_LOWER))
    return [t for t in _ASCII_SPACE_RE.split(stripped) if t]
