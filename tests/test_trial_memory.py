"""What a trial process lets go of after a trial: TensorFlow's custom gradients of its graphs.

(The end-to-end check, graphs of an earlier trial no longer in memory in a real trial
process, is in tests/test_trial_process.py.)
"""

from __future__ import annotations

import gc
import weakref

import pytest

from hpo.workers._gradients import (
    _gradient_registry,
)
from hpo.workers._gradients import custom_gradient_names as _custom_gradient_names
from hpo.workers._gradients import forget_custom_gradients as _forget_custom_gradients

tf = pytest.importorskip("tensorflow")


@tf.custom_gradient
def _clipped_identity(x):  # type: ignore[no-untyped-def]
    return tf.identity(x), lambda dy: tf.clip_by_value(dy, -1.0, 1.0)


def _trace_a_train_step() -> weakref.ref[object]:
    """Trace (graph mode) a step that differentiates through a custom gradient."""
    variable = tf.Variable(2.0)

    @tf.function
    def step() -> object:
        with tf.GradientTape() as tape:
            loss = _clipped_identity(variable * 3.0) ** 2
        return tape.gradient(loss, variable)

    concrete = step.get_concrete_function()
    assert float(concrete()) == pytest.approx(3.0)  # d/dv of clip(2 * 6) * 3
    return weakref.ref(concrete.graph)


def test_custom_gradients_of_a_trial_are_forgotten_and_its_graph_freed() -> None:
    named = "HpoTestNamedGradient"
    registry = _gradient_registry()
    assert registry is not None  # TensorFlow is loaded
    if named not in registry:
        tf.RegisterGradient(named)(lambda op, grad: grad)
    before = _custom_gradient_names()

    graph = _trace_a_train_step()
    gc.collect()
    # TensorFlow keeps the traced graph alive through the gradient it registered for it.
    assert graph() is not None
    added = _custom_gradient_names() - before
    assert added

    assert _forget_custom_gradients(before) == len(added)
    gc.collect()
    assert graph() is None
    assert _custom_gradient_names() == before
    # Gradients registered for named ops (a library's own ops) stay: later trials need them.
    assert named in registry
    assert _forget_custom_gradients(before) == 0
