"""TensorFlow's process-wide gradient registry, emptied of what a trial added (a trial process
runs many trials)."""

from __future__ import annotations

import sys
from typing import Any

# TensorFlow's graph mode registers every tf.custom_gradient it traces in a process-wide
# gradient registry, under a new "CustomGradient-<uid>" name, and never removes it. Keras's
# TensorFlow optimizer traces one in each train step (tf.distribute's all-reduce of the
# gradients), and the registered function holds that step's tensors: every trial's whole
# train graph stayed alive in its trial process (about 1,000 graph operations and 7 MB a
# trial on image_cnn; bench/worker_memory.py). The names a trial added are dropped after it,
# once its model is gone; gradients registered for named ops (tf.RegisterGradient) are kept.
# A family that kept a traced custom-gradient function across trials (in a module global)
# could not differentiate it again in a later trial: Keras builds its steps per model.
_CUSTOM_GRADIENT_PREFIX = "CustomGradient-"


def _gradient_registry() -> dict[str, Any] | None:
    """TensorFlow's gradient registry if TensorFlow is loaded (never imports it)."""
    ops = sys.modules.get("tensorflow.python.framework.ops")
    registry = getattr(getattr(ops, "_gradient_registry", None), "_registry", None)
    return registry if isinstance(registry, dict) else None


def custom_gradient_names() -> set[str]:
    registry = _gradient_registry()
    if registry is None:
        return set()
    return {name for name in registry if name.startswith(_CUSTOM_GRADIENT_PREFIX)}


def forget_custom_gradients(before: set[str]) -> int:
    """Drop the custom gradients registered since ``before``; returns how many."""
    registry = _gradient_registry()
    if registry is None:
        return 0
    added = [n for n in registry if n.startswith(_CUSTOM_GRADIENT_PREFIX) and n not in before]
    for name in added:
        del registry[name]
    return len(added)
