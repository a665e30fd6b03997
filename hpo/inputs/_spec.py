"""The record of a dataset's input transformation: :class:`InputSpec`.

It is plain JSON (stored in every trial's ``dataset.json`` under :data:`INPUTS_KEY`), so that
an ensemble build, an export or a reader of the MLflow run knows what the saved model takes
without loading the data again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hpo.errors import UsageError

INPUTS_KEY = "inputs"
KINDS = ("image", "tabular", "text", "sequence", "tokens")
DTYPES = ("float32", "int32", "string")
OPS = ("rescale", "reshape", "normalize", "text_vectorize", "multi_hot", "string_lookup")


class InputSpecError(UsageError, ValueError):
    """An input record that cannot be read or turned into layers."""


@dataclass(frozen=True)
class InputSpec:
    """What a saved model takes (``shape``, ``dtype``, in words ``description``) and the
    ``steps`` that turn it into what the trained model reads.

    Each step is a dict with an ``op`` (see :data:`OPS`) and its arguments; see
    :func:`hpo.inputs.preprocessing_layers` for the layers they become.

    Example:
        >>> spec = InputSpec.tabular(["a", "b"], mean=[0.0, 1.0], std=[1.0, 2.0])
        >>> InputSpec.from_json(spec.to_json()) == spec
        True
        >>> spec.describe_shape()
        '(n, 2) float32'
    """

    kind: str
    shape: tuple[int | None, ...]
    dtype: str
    description: str
    steps: tuple[dict[str, Any], ...] = ()
    feature_names: tuple[str, ...] = ()
    tokenizer: dict[str, Any] | None = field(default=None, compare=False)

    # -- the transformations hpo's datasets make ----------------------------------------------

    @classmethod
    def image(
        cls,
        shape: Sequence[int],
        *,
        scale: float,
        channels: int | None = None,
        description: str = "",
    ) -> InputSpec:
        """Images of ``shape`` whose values are multiplied by ``scale``; ``channels`` adds a
        trailing channel axis of that size (a grayscale image given as height x width)."""
        steps: list[dict[str, Any]] = [{"op": "rescale", "scale": float(scale), "offset": 0.0}]
        if channels is not None:
            steps.append({"op": "reshape", "shape": [*map(int, shape), int(channels)]})
        return cls(
            "image",
            tuple(int(d) for d in shape),
            "float32",
            description or f"images of shape {tuple(shape)}, values 0 to {round(1 / scale)}",
            tuple(steps),
        )

    @classmethod
    def tabular(
        cls,
        feature_names: Sequence[str],
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        shape: Sequence[int] | None = None,
    ) -> InputSpec:
        """Rows of raw feature values, standardized with ``mean`` and ``std`` when given."""
        shape = tuple(shape) if shape is not None else (len(feature_names),)
        steps = []
        if mean is not None and std is not None:
            steps.append({"op": "normalize", "mean": list(mean), "variance": [s * s for s in std]})
        return cls(
            "tabular",
            tuple(int(d) for d in shape),
            "float32",
            f"rows of {len(feature_names)} raw feature values, in the order of the columns "
            f"{', '.join(feature_names[:8])}{', ...' if len(feature_names) > 8 else ''}",
            tuple(steps),
            tuple(feature_names),
        )

    @classmethod
    def text(cls, vocabulary: Sequence[str], *, encoding: str, maxlen: int | None) -> InputSpec:
        """Raw documents (one string each) tokenized by :func:`hpo.inputs.keras_tokenize`.

        ``vocabulary`` is the id -> word list with padding (id 0) and out-of-vocabulary (id 1)
        first; ``encoding`` ``sequence`` gives ``maxlen`` ids (padded with 0 at the end),
        ``multi_hot`` a 0/1 vector as wide as the vocabulary, of the first ``maxlen`` tokens.
        """
        steps: list[dict[str, Any]] = [
            {
                "op": "text_vectorize",
                "vocabulary": list(vocabulary[2:]),
                "sequence_length": maxlen,
            }
        ]
        if encoding == "multi_hot":
            steps.append({"op": "multi_hot", "num_tokens": len(vocabulary)})
        elif encoding != "sequence":
            raise InputSpecError(f"unknown text encoding {encoding!r}")
        return cls(
            "text",
            (),
            "string",
            "raw documents, one string each (lower-cased, punctuation stripped and split on "
            "white space inside the model)",
            tuple(steps),
        )

    @classmethod
    def tokens(
        cls,
        vocabulary: Sequence[str],
        *,
        maxlen: int,
        oov_token: str | None,
        level: str = "char",
        lowercase: bool = False,
    ) -> InputSpec:
        """Windows of ``maxlen`` tokens (strings) looked up in ``vocabulary`` (id = position);
        ``oov_token``, when the vocabulary starts with it, stands for unknown tokens."""
        words = list(vocabulary)
        if oov_token is not None:
            if not words or words[0] != oov_token:
                raise InputSpecError(f"the vocabulary must start with {oov_token!r}")
            words = words[1:]
        return cls(
            "tokens",
            (int(maxlen),),
            "string",
            f"windows of {maxlen} tokens, one string each, oldest first",
            ({"op": "string_lookup", "vocabulary": words, "oov_token": oov_token},),
            tokenizer={"level": level, "lowercase": lowercase},
        )

    @classmethod
    def sequence(cls, length: int, *, low: int) -> InputSpec:
        """Integer sequences of values from ``low`` up, right-padded to ``length`` with
        ``low - 1``; the model reads ``value - low + 1`` (padding 0)."""
        return cls(
            "sequence",
            (int(length),),
            "float32",
            f"integer sequences of up to {length} values, right-padded with {low - 1}",
            ({"op": "rescale", "scale": 1.0, "offset": float(1 - low)},),
        )

    # -- JSON -------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "kind": self.kind,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "description": self.description,
            "steps": [dict(s) for s in self.steps],
        }
        if self.feature_names:
            doc["feature_names"] = list(self.feature_names)
        if self.tokenizer:
            doc["tokenizer"] = dict(self.tokenizer)
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> InputSpec:
        """Read a record; :class:`InputSpecError` says what is wrong with it."""
        try:
            kind, dtype = str(doc["kind"]), str(doc["dtype"])
            shape = tuple(None if d is None else int(d) for d in doc["shape"])
            steps = tuple(dict(s) for s in doc.get("steps") or ())
        except (KeyError, TypeError, ValueError) as exc:
            raise InputSpecError(f"unreadable input record: {exc!r}") from None
        if kind not in KINDS or dtype not in DTYPES:
            raise InputSpecError(f"unknown input kind {kind!r} or dtype {dtype!r}")
        unknown = [s.get("op") for s in steps if s.get("op") not in OPS]
        if unknown:
            raise InputSpecError(f"unknown input transformation {unknown[0]!r}")
        return cls(
            kind,
            shape,
            dtype,
            str(doc.get("description", "")),
            steps,
            tuple(str(n) for n in doc.get("feature_names") or ()),
            dict(doc["tokenizer"]) if doc.get("tokenizer") else None,
        )

    def describe_shape(self) -> str:
        """The batch shape and dtype, as users read it."""
        dims = ", ".join(["n", *(str(d) for d in self.shape)])
        return f"({dims}) {self.dtype}"
