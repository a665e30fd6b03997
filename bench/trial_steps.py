"""What a short trial's ``fit`` costs: Keras' defaults against hpo's ``Family.fit``.

A trial of a few epochs on a small subset spends much of its CPU outside the training steps:
TensorFlow traces the train and test steps of every new model, and a validation split larger
than the training subset (Fashion-MNIST's is 6,000 images beside a 2,000-image subset) is
evaluated after every epoch. ``Family.fit`` (hpo/families/_base.py) differs from a plain
``model.fit`` in two ways, measured here one by one:

- **keras**: ``model.fit(x, y, validation_data=..., batch_size=b)``, Keras' defaults: the
  optimizer's and metrics' variables are created while the first step is traced, so TensorFlow
  traces it twice; validation runs at the training batch size;
- **prebuild**: the same after :func:`hpo.families.prebuild` (one trace);
- **hpo**: ``Family.fit``: prebuild, and validation at ``max(256, b)``.

For families that train with ``Family.fit`` itself (not those with a loop of their own, a GAN).

Each round samples one configuration of the space (seeded random sampling) and trains it once
per way, in rotating order, in one process (one TensorFlow import), with the same Keras seed,
so the three train the same model on the same batches. Prints CPU seconds (this process,
``time.process_time``) of ``fit`` and of its first epoch per way, their means, the largest
difference in final training loss (0: the same training), and last their ratios to **keras**.

    .venv/bin/python bench/trial_steps.py --quick                  # dense_bn, 4 rounds
    .venv/bin/python bench/trial_steps.py --space image_cnn --rounds 6
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from _hpo_bench import machine, space_path

WAYS = ("keras", "prebuild", "hpo")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", type=space_path, default="dense_bn", help="space name or file")
    parser.add_argument("--quick", action="store_true", help="4 rounds")
    parser.add_argument("--rounds", type=int, help="configurations (default 8; quick 4)")
    parser.add_argument("--subset", type=int, default=2000, help="training examples")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rounds = args.rounds or (4 if args.quick else 8)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import keras
    import optuna

    from hpo.datasets import load_dataset
    from hpo.families import Family, get_family, prebuild
    from hpo.spaces import Params, load_spec, suggest

    path = args.space
    spec = load_spec(path)
    data = load_dataset(spec.dataset.model_copy(update={"subset": args.subset}))
    family = get_family(spec.family)
    if type(family).fit is not Family.fit:
        parser.error(
            f"family {spec.family!r} trains with its own fit: no plain model.fit to compare"
        )
    print(
        f"{machine()}\nspace {path.name}: family {spec.family}, {len(data.train.x)} training "
        f"and {len(data.validation.x)} validation examples, {args.epochs} epochs a trial, "
        f"{rounds} configurations, Keras {keras.__version__} ({keras.backend.backend()})",
        flush=True,
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.RandomSampler(seed=args.seed)
    study = optuna.create_study(sampler=sampler)

    class FirstEpoch(keras.callbacks.Callback):
        def on_train_begin(self, logs: Any = None) -> None:
            self.start = time.process_time()
            self.seconds = 0.0

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            if epoch == 0:
                self.seconds = time.process_time() - self.start

    def train(way: str, hp: Params, seed: int) -> tuple[float, float, float]:
        keras.utils.set_random_seed(seed)
        model = family.build(hp, data)
        first = FirstEpoch()
        start = time.process_time()
        if way == "hpo":
            family.fit(model, hp, data, args.epochs, [first])
        else:
            x, y = data.train.x, family.fit_targets(data.train)
            if way == "prebuild":
                prebuild(model, x, y)
            model.fit(
                x,
                y,
                validation_data=(data.validation.x, family.fit_targets(data.validation)),
                batch_size=family.batch_size(hp),
                epochs=args.epochs,
                callbacks=[first],
                verbose=0,
            )
        seconds = time.process_time() - start
        loss = float(model.get_metrics_result()["loss"])
        keras.utils.clear_session()
        return seconds, first.seconds, loss

    fits: dict[str, list[float]] = {w: [] for w in WAYS}
    firsts: dict[str, list[float]] = {w: [] for w in WAYS}
    loss_gap = 0.0
    for r in range(rounds):
        trial = study.ask()
        hp = Params(suggest(trial, spec.space))
        study.tell(trial, 0.0)
        order = WAYS[r % 3 :] + WAYS[: r % 3]
        losses = []
        for way in order:
            fit_s, first_s, loss = train(way, hp, args.seed * 1000 + r)
            fits[way].append(fit_s)
            firsts[way].append(first_s)
            losses.append(loss)
        loss_gap = max(loss_gap, max(losses) - min(losses))
        cells = "  ".join(
            f"{w} {fits[w][-1]:.2f} s (first epoch {firsts[w][-1]:.2f})" for w in WAYS
        )
        print(f"round {r}: batch {family.batch_size(hp)}: {cells}", flush=True)

    base = statistics.mean(fits["keras"])
    base_first = statistics.mean(firsts["keras"])
    print(f"\nmean CPU seconds over {rounds} configurations:")
    for way in WAYS:
        print(
            f"  {way:9s} fit {statistics.mean(fits[way]):.2f} s, "
            f"first epoch {statistics.mean(firsts[way]):.2f} s"
        )
    print(f"largest difference in final training loss between the ways: {loss_gap:.2e}")
    fit_ratios = " / ".join(f"{statistics.mean(fits[w]) / base:.2f}" for w in WAYS)
    first_ratios = " / ".join(f"{statistics.mean(firsts[w]) / base_first:.2f}" for w in WAYS)
    print(f"ratios: keras / prebuild / hpo fit {fit_ratios}, first epoch {first_ratios}")


if __name__ == "__main__":
    main()
