"""A user-defined family (``family: fault_family:build``) whose trials fail on purpose.

``mode`` picks the fault: ``ok`` trains normally, ``raise`` raises while building, ``nan``
trains with a loss that is NaN, ``kill`` kills its own trial process with SIGKILL, ``sleep``
sleeps ``sleep_seconds`` before training (a long trial that a test interrupts).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any


def build(hp: Any, data: Any) -> Any:
    import keras

    mode = hp["mode"]
    if mode == "raise":
        raise ValueError("deliberate failure in build")
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "sleep":  # a long trial, to be interrupted by a test
        time.sleep(float(hp.get("sleep_seconds", 30)))
    model = keras.Sequential(
        [
            keras.Input(data.input_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(data.num_classes, activation="softmax"),
        ]
    )

    def nan_loss(y_true: Any, y_pred: Any) -> Any:
        return keras.ops.mean(y_pred) * float("nan")

    loss = nan_loss if mode == "nan" else "sparse_categorical_crossentropy"
    model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    return model
