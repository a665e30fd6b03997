"""The trial's Keras callback: it stops a NaN loss within the epoch without stalling steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.util import find_spec

import pytest

# Runs in a fresh process: the backend is fixed at Keras's import, and this one has TensorFlow.
SCRIPT = """
import json, os, sys
import keras, numpy as np
from sklearn.datasets import load_digits
from hpo.workers.epoch_callback import EpochCallback as _EpochCallback

x, y = load_digits(return_X_y=True)
x = (x / 16.0).astype("float32")

def build(nan):
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])
    def nan_loss(y_true, y_pred):
        return keras.ops.mean(y_pred) * float("nan")
    loss = nan_loss if nan else "sparse_categorical_crossentropy"
    model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    return model

out = {}
# ok: a normal fit; nan: the loss is NaN from the first step; last: an input of the epoch's
# last batch is NaN (no shuffling), so the loss turns NaN at its last step.
last = x[:1600].copy()
last[1599, 0] = np.nan
for case, inputs, nan in (("ok", x[:1600], False), ("nan", x[:1600], True), ("last", last, False)):
    model = build(nan)
    epochs = []
    callback = _EpochCallback(lambda epoch, logs, seconds: epochs.append(epoch) or False)
    callbacks = keras.callbacks.CallbackList([callback.keras_callback], model=model)
    model.fit(inputs, y[:1600], validation_data=(x[1600:], y[1600:]), batch_size=8,
              epochs=2, callbacks=[callback.keras_callback], verbose=0, shuffle=False)
    out[case] = {
        "steps": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
        "failure": callback.failure, "epochs": epochs, "history": len(callback.history),
        "async": callbacks._async_train,
    }
print(json.dumps(out))
"""


def _run(backend: str) -> dict[str, dict[str, object]]:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, dict[str, object]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch", "tensorflow"])
def test_a_nan_loss_stops_within_the_epoch_and_steps_are_not_held(backend: str) -> None:
    if find_spec(backend) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{backend} is in the dev extra but not installed")
        pytest.skip(f"{backend} is not installed")
    result = _run(backend)
    ok, nan = result["ok"], result["nan"]
    # 1,600 examples in batches of 8: 200 steps an epoch.
    assert ok == {
        "steps": 400,
        "failure": None,
        "epochs": [1, 2],
        "history": 2,
        "async": ok["async"],
    }
    assert isinstance(nan["failure"], str) and "during epoch 1" in nan["failure"]
    assert isinstance(nan["steps"], int) and 1 <= nan["steps"] < 200
    assert nan["epochs"] == [] and nan["history"] == 0  # no epoch of a NaN loss is reported
    # A NaN at the epoch's very last step still ends training there: no step of epoch 2.
    last = result["last"]
    assert isinstance(last["failure"], str) and "during epoch 1" in last["failure"]
    assert last["steps"] == 200 and last["epochs"] == [] and last["history"] == 0
    # JAX and PyTorch run batch hooks on Keras's callback thread, so steps are dispatched without
    # waiting for each loss; TensorFlow's callbacks always run inline.
    assert ok["async"] is (backend != "tensorflow")
