"""Overhead of hpo around training: the same configurations, a bare Keras loop versus hpo.

A fixed list of image_cnn configurations on a Fashion-MNIST subset (same data, same epochs, same
seed per configuration) is trained twice, alternating the order per configuration to cancel drift
on a noisy machine:

- **bare**: a plain loop in a child process of its own (TensorFlow imported once, the dataset
  loaded once, same threads as a trial process): ``family.build`` + ``model.fit`` with the
  validation split, then the clean-up hpo's trial process does (``clear_session``, dropping the
  custom gradients TensorFlow registered for the model's graphs, and one ``gc.collect``, with
  the imports' objects frozen out of the collector's way), nothing else;
- **hpo**: the real worker path: a :class:`hpo.workers.worker.Worker` claims the (enqueued) trial
  from a SQLite store, samples it (``suggest``), runs it in its reusable trial process
  (isolation), which reports every epoch to the store, logs the run to MLflow (file store),
  saves the ``.keras`` model, its validation predictions and the learning-curve plot; then
  ``tell``. (Trials do not predict the test split: the final stage does, for the models it
  scores.)

Time per trial: bare = build + fit + clean-up; hpo = from the start of the claim to the
end of the tell. Both paths train one warm-up configuration first (not counted): TensorFlow's
import and the dataset load are paid once per process in both.

    .venv/bin/python bench/overhead.py            # 5 configurations x 2 rounds, 6 epochs
    .venv/bin/python bench/overhead.py --quick    # 3 configurations x 1 round, 2 epochs

The full mode trains 15,000 images for 6 epochs so that its trials take 20-40 s on a 2-core
CPU: the goal (bare / hpo >= 0.97) is stated for trials of 20 s or more, and at 10,000 images
and 4 epochs a faster machine trained every configuration in less.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from _hpo_bench import make_study

SPACE = """
family: image_cnn
dataset: {name: fashion_mnist, subset: SUBSET, validation_fraction: 0.1, seed: 0}
objective: {metric: val_accuracy, direction: maximize}
budget: {max_epochs: EPOCHS}
params:
  conv_blocks: {type: int, low: 1, high: 3}
  filters: {type: int, low: 8, high: 32, log: true}
  kernel_size: 3
  conv_type: {type: categorical, choices: [Conv2D, SeparableConv2D]}
  batchnorm: {type: categorical, choices: [none, before, after]}
  pooling: max
  dropout: {type: float, low: 0.0, high: 0.5}
  dense_units: {type: categorical, choices: [0, 64]}
  learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  batch_size: {type: categorical, choices: [32, 64]}
"""

# The fixed list (trial parameters as a worker would sample them). The first is the warm-up.
CONFIGS: list[dict[str, Any]] = [
    {"conv_blocks": 1, "filters": 8, "conv_type": "Conv2D", "batchnorm": "none",
     "dropout": 0.1, "dense_units": 0, "learning_rate": 1e-3, "batch_size": 64},
    {"conv_blocks": 2, "filters": 16, "conv_type": "Conv2D", "batchnorm": "after",
     "dropout": 0.2, "dense_units": 64, "learning_rate": 1e-3, "batch_size": 64},
    {"conv_blocks": 2, "filters": 16, "conv_type": "SeparableConv2D", "batchnorm": "before",
     "dropout": 0.3, "dense_units": 0, "learning_rate": 3e-3, "batch_size": 32},
    {"conv_blocks": 1, "filters": 32, "conv_type": "Conv2D", "batchnorm": "none",
     "dropout": 0.0, "dense_units": 64, "learning_rate": 5e-4, "batch_size": 32},
    {"conv_blocks": 3, "filters": 16, "conv_type": "Conv2D", "batchnorm": "after",
     "dropout": 0.25, "dense_units": 0, "learning_rate": 2e-3, "batch_size": 64},
    {"conv_blocks": 2, "filters": 24, "conv_type": "SeparableConv2D", "batchnorm": "none",
     "dropout": 0.4, "dense_units": 64, "learning_rate": 1e-3, "batch_size": 64},
]  # fmt: skip
THREADS = 2
SEED = 0


def _bare_child(conn: Connection, source: str, threads: int) -> None:
    """The bare loop: the same environment a trial process gets, then build + fit only."""
    for var in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS", "XLA_FLAGS_THREADS"):
        os.environ[var] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import gc

    import keras

    from hpo.datasets import load_dataset
    from hpo.families import get_family
    from hpo.spaces import Params, parse_spec
    from hpo.workers._gradients import custom_gradient_names, forget_custom_gradients

    spec = parse_spec(source, "overhead.yaml")
    data = load_dataset(spec.dataset)
    family = get_family(spec.family)
    gc.collect()  # as hpo.workers.runner.warm_up: the imports' objects are not scanned again
    gc.freeze()
    conn.send("ready")
    while True:
        task = conn.recv()
        if task is None:
            return
        number, params = task
        # The seed hpo's trial process sets for this trial number.
        keras.utils.set_random_seed((SEED * 100_003 + number) % 2**31)
        hp = Params(params)
        gradients_before = custom_gradient_names()
        t0 = time.perf_counter()
        model = family.build(hp, data)
        t1 = time.perf_counter()
        family.fit(model, hp, data, spec.budget.max_epochs, [])
        fit_seconds = time.perf_counter() - t1
        # The clean-up a loop of many models needs, as hpo does it: without dropping the custom
        # gradients TensorFlow registered, every model's train graph stays alive, and the
        # collections during later fits scan more and more of them.
        keras.backend.clear_session(free_memory=False)
        forget_custom_gradients(gradients_before)
        gc.collect()
        conn.send((time.perf_counter() - t0, fit_seconds))


def _sampled_params(source: str, configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each configuration as ``suggest`` hands it to a trial (constants included)."""
    import optuna

    from hpo.spaces import parse_spec, suggest

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = parse_spec(source, "overhead.yaml").space
    study = optuna.create_study(direction="maximize")
    out = []
    for cfg in configs:
        study.enqueue_trial(cfg)
        trial = study.ask()
        out.append(dict(suggest(trial, space)))
        study.tell(trial, 0.0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 configs, 1 round, 2 epochs")
    parser.add_argument("--configs", type=int, default=None, help="configurations (max 5)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--subset", type=int, default=None, help="training images")
    args = parser.parse_args()
    k = min(args.configs or (3 if args.quick else 5), len(CONFIGS) - 1)
    rounds = args.rounds or (1 if args.quick else 2)
    epochs = args.epochs or (2 if args.quick else 6)
    subset = args.subset or (8000 if args.quick else 15000)
    source = SPACE.replace("SUBSET", str(subset)).replace("EPOCHS", str(epochs))
    order = [0] + [1 + i for _ in range(rounds) for i in range(k)]  # 0: warm-up
    params = _sampled_params(source, [CONFIGS[i] for i in order])

    from hpo.storage.studies import load_study
    from hpo.workers.worker import Worker, WorkerOptions

    bare: dict[int, list[float]] = {}
    bare_fit: list[float] = []  # the bare loop's fit alone, counted trials
    hpo_t: dict[int, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        url = f"sqlite:///{tmp / 'hpo.db'}"
        store, config = make_study(
            url,
            "overhead",
            source,
            len(order) + 1,  # never "done": the once-per-study summary is not timed
            filename="overhead.yaml",
            seed=SEED,
            tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}",
            enqueue=(CONFIGS[i] for i in order),
        )

        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_bare_child, args=(child, source, THREADS), daemon=True)
        proc.start()
        child.close()
        assert parent.recv() == "ready"
        worker = Worker(WorkerOptions(url, config.name, threads=THREADS, worker_index=0))

        def run_bare(number: int) -> float:
            parent.send((number, params[number]))
            total, fit_seconds = parent.recv()
            if number > 0:
                bare_fit.append(float(fit_seconds))
            return float(total)

        def run_hpo(number: int) -> float:
            t0 = time.perf_counter()
            claimed = worker._claim()
            assert claimed is not None and claimed[1].number == number, "trial out of order"
            worker._run_trial(worker.slots[0], *claimed)
            return time.perf_counter() - t0

        try:
            for number, cfg in enumerate(order):
                first_bare = number % 2 == 0
                steps = (run_bare, run_hpo) if first_bare else (run_hpo, run_bare)
                times = [step(number) for step in steps]
                tb, th = times if first_bare else times[::-1]
                if number == 0:
                    print(f"warm-up: bare {tb:.1f} s, hpo {th:.1f} s (not counted)", flush=True)
                    continue
                bare.setdefault(cfg, []).append(tb)
                hpo_t.setdefault(cfg, []).append(th)
                print(f"trial {number} config {cfg}: bare {tb:.1f} s, hpo {th:.1f} s", flush=True)
            finished = [t for t in load_study(store, config).get_trials() if t.number > 0]
            states = [t.state.name for t in finished]
            # Where hpo's time goes: training as the trial measured it, and storing the trial
            # (model file, validation predictions, plots, upload).
            train_s = [float(t.user_attrs.get("train_seconds", "nan")) for t in finished]
            record_s = [float(t.user_attrs.get("record_seconds", "nan")) for t in finished]
        finally:
            parent.send(None)
            proc.join(30)
            worker.slots[0].process.close()

    print(f"\nOverhead: image_cnn on Fashion-MNIST ({subset} images), {epochs} epochs, ")
    print(f"{k} configurations x {rounds} rounds, {THREADS} threads; hpo trial states: {states}")
    print(f"{'config':>6} {'bare s':>8} {'hpo s':>8} {'bare/hpo':>9}  params")
    for cfg in sorted(bare):
        b, h = statistics.mean(bare[cfg]), statistics.mean(hpo_t[cfg])
        print(f"{cfg:>6} {b:>8.1f} {h:>8.1f} {b / h:>9.3f}  {json.dumps(CONFIGS[cfg])}")
    total_b = sum(sum(v) for v in bare.values())
    total_h = sum(sum(v) for v in hpo_t.values())
    print(f"{'all':>6} {total_b:>8.1f} {total_h:>8.1f} {total_b / total_h:>9.3f}")
    long = [c for c in bare if statistics.mean(bare[c]) >= 20]
    long_b = sum(sum(bare[c]) for c in long)
    long_h = sum(sum(hpo_t[c]) for c in long)
    long_txt = f"{long_b / long_h:.3f} over {len(long)} configs" if long else "no config >= 20 s"
    per_trial = statistics.mean(
        [h - b for c in bare for b, h in zip(bare[c], hpo_t[c], strict=True)]
    )
    print(
        f"ratios: bare time / hpo time = {total_b / total_h:.3f} all, {long_txt} with bare "
        f">= 20 s (goal >= 0.97); hpo adds {per_trial:.2f} s per trial on average"
    )
    mean_hpo = statistics.mean([h for v in hpo_t.values() for h in v])
    mean_bare = statistics.mean([b for v in bare.values() for b in v])
    mean_train, mean_record = statistics.mean(train_s), statistics.mean(record_s)
    mean_bare_fit = statistics.mean(bare_fit)
    print(
        f"bare trial split: fit {mean_bare_fit:.2f} s, build and clean-up "
        f"{mean_bare - mean_bare_fit:.2f} s"
    )
    print(
        f"hpo trial split: fit {mean_train:.2f} s (with its per-epoch reports), storing the "
        f"trial {mean_record:.2f} s ({mean_record / mean_hpo:.0%} of the hpo trial), the rest "
        f"(claim, process, build, MLflow run, clean-up, tell) "
        f"{mean_hpo - mean_train - mean_record:.2f} s"
    )


if __name__ == "__main__":
    main()
