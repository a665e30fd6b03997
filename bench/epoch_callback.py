"""What hpo's per-trial Keras callback costs ``fit``: none, hpo's, and hpo's run inline.

A trial's callback reads every step's loss (to stop a NaN early) and reports every epoch. A
callback with a batch-end hook makes Keras (JAX, PyTorch backends) wait for each step's loss
before it dispatches the next step, unless the callback is declared ``async_safe``; hpo's is,
so its check runs on Keras's callback thread. This script trains the same image_cnn model on a
Fashion-MNIST subset, the three ways alternately, in one process (one backend import):

- **none**: ``fit`` with no callback (Keras dispatches the steps back to back);
- **hpo**: ``fit`` with the trial's callback, as a trial runs it;
- **inline**: the same callback with ``async_safe`` off (what hpo did before).

TensorFlow always runs callbacks inline, so the three are the same code path there; the
difference is expected on the JAX backend, largest on a GPU, where a step is short and a
host-device sync per step stalls the queue.

    KERAS_BACKEND=jax .venv/bin/python bench/epoch_callback.py --quick   # CPU: 2 rounds
    KERAS_BACKEND=jax python bench/epoch_callback.py --subset 60000 --batch-size 256  # a GPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from _hpo_bench import machine

SPACE = """
family: image_cnn
dataset: {name: fashion_mnist, subset: SUBSET, validation_fraction: 0.1, seed: 0}
objective: {metric: val_accuracy, direction: maximize}
budget: {max_epochs: 1}
params:
  conv_blocks: 2
  filters: 16
  kernel_size: 3
  conv_type: Conv2D
  batchnorm: after
  pooling: max
  dropout: 0.2
  dense_units: 0
  learning_rate: 1.0e-3
  batch_size: BATCH
"""
MODES = ("none", "hpo", "inline")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds, 4,000 images")
    parser.add_argument("--rounds", type=int, default=None, help="default 5 (quick: 2)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--subset", type=int, default=None, help="default 20,000 (quick: 4,000)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)
    subset = args.subset or (4_000 if args.quick else 20_000)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from hpo.datasets import load_dataset
    from hpo.families import get_family
    from hpo.spaces import Params, parse_spec
    from hpo.workers.epoch_callback import EpochCallback

    source = SPACE.replace("SUBSET", str(subset)).replace("BATCH", str(args.batch_size))
    spec = parse_spec(source, "epoch_callback.yaml")
    data = load_dataset(spec.dataset)
    family = get_family(spec.family)
    hp = Params({n.name: getattr(n.param, "value", None) for n in spec.space.nodes()})

    def fit(mode: str) -> float:
        keras.utils.set_random_seed(0)
        model = family.build(hp, data)
        callbacks = []
        if mode != "none":
            callback = EpochCallback(lambda epoch, logs, seconds: False)
            if mode == "inline":
                callback.keras_callback.async_safe = False
            callbacks = [callback.keras_callback]
        t0 = time.perf_counter()
        family.fit(model, hp, data, args.epochs, callbacks)
        seconds = time.perf_counter() - t0
        keras.backend.clear_session()
        return seconds

    fit("none")  # warm-up: compile caches, thread pools
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for r in range(rounds):
        order = MODES if r % 2 == 0 else MODES[::-1]  # alternate to cancel drift
        for mode in order:
            times[mode].append(fit(mode))
    print(f"machine: {machine()}; backend {keras.backend.backend()}")
    print(
        f"fit of {len(data.train):,} images x {args.epochs} epochs, batch {args.batch_size}, "
        f"{rounds} rounds (seconds)"
    )
    print(f"{'callback':10} {'median':>8} {'min':>8}  each")
    for mode in MODES:
        each = " ".join(f"{t:.2f}" for t in times[mode])
        print(f"{mode:10} {statistics.median(times[mode]):8.2f} {min(times[mode]):8.2f}  {each}")
    med = {m: statistics.median(times[m]) for m in MODES}
    print(
        f"ratios: none / hpo {med['none'] / med['hpo']:.3f}, "
        f"none / inline {med['none'] / med['inline']:.3f}, "
        f"inline / hpo {med['inline'] / med['hpo']:.3f} (above 1: hpo's callback is faster)"
    )


if __name__ == "__main__":
    main()
