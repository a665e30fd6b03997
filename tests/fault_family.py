"""A user-defined family (``family: fault_family:build``) whose trials fail on purpose.

``mode`` picks the fault: ``ok`` trains normally, ``raise`` raises while building, ``nan``
trains with a loss that is NaN, ``kill`` kills its own trial process with SIGKILL (what the
kernel's out-of-memory killer sends), ``segfault`` reads address 0 (a crash in native code:
SIGSEGV), ``oom`` allocates more memory than its process may have (``RLIMIT_AS`` lowered for the
allocation only: the ``MemoryError`` a failed allocation raises), ``sleep`` sleeps
``sleep_seconds`` before training (a long trial that a test interrupts; with
``HPO_TEST_SLEEPING`` set to a file, it appends its process id to it when it starts sleeping),
``hang`` trains normally until epoch ``hang_epoch`` (default 1) begins, then sleeps for ever
inside it, at its first batch (a trial stuck in training while its worker's heartbeat goes on;
with ``HPO_TEST_HANGING`` set to a file, it appends its process id to it when it starts hanging),
``forget`` trains normally until epoch ``forget_epoch`` (default 2) begins, which sets every
weight to 0, and from which on every epoch starts with the learning rate set to 0 (a resumed
training too): from then on it predicts class 0 for every input, so its last epochs are worse
than its best (a trial that must keep an earlier epoch).
``learning_rate`` (default 0.001) is Adam's.

With ``HPO_TEST_RECORD`` set to a file, every build appends one JSON line to it: the trial
process's id, when the build started and ended, its Keras backend and the slot environment
(GPU, memory share, compile cache) the worker gave it, how many objects its garbage collector
leaves frozen (the imports'), how many models of its earlier trials are still alive, and how
many traced TensorFlow graphs are (None on other backends).
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import signal
import time
import weakref
from pathlib import Path
from typing import Any

from hpo.families import FunctionFamily

RECORDED_ENV = (
    "CUDA_VISIBLE_DEVICES",
    "XLA_PYTHON_CLIENT_PREALLOCATE",
    "XLA_PYTHON_CLIENT_MEM_FRACTION",
    "HPO_GPU_MEMORY_FRACTION",
    "JAX_COMPILATION_CACHE_DIR",
    "KERAS_BACKEND",
    "OMP_NUM_THREADS",
)
_BUILT: list[weakref.ref[Any]] = []  # the models this process built, weakly


def _graphs_alive() -> int | None:
    """Traced TensorFlow graphs (tf.function's FuncGraphs) still in memory."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return None
    from tensorflow.python.framework.func_graph import FuncGraph

    gc.collect()
    return sum(isinstance(o, FuncGraph) for o in gc.get_objects())


def _allocate_beyond_the_limit() -> None:
    """Allocate 16 GiB with the address space capped 256 MiB above what the process maps now.

    The cap goes back before the MemoryError leaves: the trial process runs later trials.
    """
    import numpy as np

    mapped = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    before = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (mapped + (256 << 20), before[1]))
    try:
        np.ones(16 << 30, dtype=np.uint8)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, before)


def _hang_in_epoch(model: Any, epoch: int) -> None:
    """Make ``model.fit`` hang at the first batch of ``epoch`` (1-based), for ever."""
    import keras

    class Hang(keras.callbacks.Callback):  # type: ignore[misc]
        epoch_now = 0

        def on_epoch_begin(self, index: int, logs: Any = None) -> None:
            self.epoch_now = index + 1

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            if self.epoch_now != epoch:
                return
            hanging = os.environ.get("HPO_TEST_HANGING")
            if hanging:
                with open(hanging, "a") as f:
                    f.write(f"{os.getpid()}\n")
            while True:
                time.sleep(1)

    fit = model.fit

    def fit_then_hang(*args: Any, callbacks: Any = None, **kwargs: Any) -> Any:
        return fit(*args, callbacks=[*(callbacks or []), Hang()], **kwargs)

    model.fit = fit_then_hang


def _forget_at_epoch(model: Any, epoch: int) -> None:
    """Make ``model.fit`` zero the weights when ``epoch`` begins, and the learning rate when
    it or any later epoch begins (a resumed fit restores the rate the model was built with)."""
    import keras
    import numpy as np

    class Forget(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_begin(self, index: int, logs: Any = None) -> None:
            if index + 1 == epoch:
                self.model.set_weights([np.zeros_like(w) for w in self.model.get_weights()])
            if index + 1 >= epoch:
                self.model.optimizer.learning_rate.assign(0.0)

    fit = model.fit

    def fit_then_forget(*args: Any, callbacks: Any = None, **kwargs: Any) -> Any:
        return fit(*args, callbacks=[*(callbacks or []), Forget()], **kwargs)

    model.fit = fit_then_forget


def build(hp: Any, data: Any) -> Any:
    import keras

    mode = hp["mode"]
    started = time.time()
    if mode == "raise":
        raise ValueError("deliberate failure in build")
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "segfault":
        ctypes.string_at(0)
    if mode == "oom":
        _allocate_beyond_the_limit()
    if mode == "sleep":  # a long trial, to be interrupted by a test
        sleeping = os.environ.get("HPO_TEST_SLEEPING")
        if sleeping:
            with open(sleeping, "a") as f:
                f.write(f"{os.getpid()}\n")
        time.sleep(float(hp.get("sleep_seconds", 30)))
    record = os.environ.get("HPO_TEST_RECORD")
    if record:
        line = {
            "pid": os.getpid(),
            "start": started,
            "end": time.time(),
            "backend": keras.backend.backend(),
            "env": {k: os.environ.get(k) for k in RECORDED_ENV},
            "frozen": gc.get_freeze_count(),
            "earlier_models_alive": sum(ref() is not None for ref in _BUILT),
            "graphs_alive": _graphs_alive(),
        }
        with open(record, "a") as f:
            f.write(json.dumps(line) + "\n")
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
    rate = float(hp.get("learning_rate", 0.001))
    model.compile(optimizer=keras.optimizers.Adam(rate), loss=loss, metrics=["accuracy"])
    if mode == "hang":
        _hang_in_epoch(model, int(hp.get("hang_epoch", 1)))
    if mode == "forget":
        _forget_at_epoch(model, int(hp.get("forget_epoch", 2)))
    _BUILT.append(weakref.ref(model))
    return model


class EpochFamily(FunctionFamily):
    """``family: fault_family:EpochFamily``: :func:`build`'s model, its epochs recorded.

    With ``HPO_TEST_EPOCHS`` set to a file, every epoch's start appends a JSON line (trial
    process id, ``epoch`` from 1) to it. With ``HPO_TEST_HOLD`` set to a file that exists, the
    epoch ``hold_epoch`` waits at its end (once reported and checkpointed) until the file is
    gone, after appending a line with ``held``: a test kills its worker there.
    """

    def __init__(self) -> None:
        super().__init__("fault_family:EpochFamily", build)

    def fit(
        self,
        model: Any,
        hp: Any,
        data: Any,
        epochs: int,
        callbacks: Any,
        initial_epoch: int = 0,
    ) -> None:
        import keras

        hold_epoch = int(hp.get("hold_epoch", 0))

        class _Recorder(keras.callbacks.Callback):  # type: ignore[misc]
            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                record = os.environ.get("HPO_TEST_EPOCHS")
                if record:
                    with open(record, "a") as f:
                        f.write(json.dumps({"pid": os.getpid(), "epoch": epoch + 1}) + "\n")

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                # After the trial's own callback, which reported the epoch and checkpointed it.
                hold = os.environ.get("HPO_TEST_HOLD")
                if not (hold and epoch + 1 == hold_epoch and os.path.exists(hold)):
                    return
                record = os.environ.get("HPO_TEST_EPOCHS")
                if record:
                    with open(record, "a") as f:
                        f.write(json.dumps({"pid": os.getpid(), "held": epoch + 1}) + "\n")
                while os.path.exists(hold):
                    time.sleep(0.1)

        super().fit(model, hp, data, epochs, [*callbacks, _Recorder()], initial_epoch)
