"""hpo against Keras Tuner: same space, same data, same epoch budget, side by side.

For each seed, two real hpo studies (``hpo run``: worker processes, SQLite store, MLflow) search
``search_spaces/image_cnn.yaml`` on Fashion-MNIST: ``optuna-tpe`` and ``hyperopt-tpe``, both with
the Hyperband pruner. Each then gets an ensemble (``hpo.ensemble.build_ensemble``, caruana on
validation log loss). Keras Tuner's ``RandomSearch``, ``Hyperband`` and ``BayesianOptimization``
then search the same space with the same seed, each in its own process, until they have trained
as many epochs as the larger of the two hpo studies did (epochs are counted as they end, with
Keras Tuner's Hyperband continuations counted for the epochs they actually train; the search
stops mid-trial when the budget is spent).

The same space: Keras Tuner's hyperparameters are generated from the hpo space file (every
float, int and categorical with the same range, log scale and step; the optimizer's sub-
parameters in Keras Tuner ``conditional_scope``s) and the model is built by the same
``image_cnn`` family code (``hpo.families``), so both sides train identical architectures for
identical parameter values. The same data: both load the study's dataset with
``hpo.datasets.load_dataset`` (the space's seeded subset of the official training set, 10% of
it as validation, the official 10,000 test images as test). Validation accuracy picks the best
model on both sides (hpo: last epoch of the best trial; Keras Tuner: its best epoch and its
checkpoint); test accuracy is that model's on the test split. Wall time is that of each whole
process, start-up (imports, data loading) included; hpo's ensemble build is timed apart.

    .venv/bin/python bench/vs_keras_tuner.py --quick   # 1 seed, 10 trials, 2,000 images, 4 epochs
    .venv/bin/python bench/vs_keras_tuner.py           # 3 seeds, 30 trials, 10,000 images, 6 epochs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SPACE = REPO / "search_spaces" / "image_cnn.yaml"
HPO_ALGORITHMS = ("optuna-tpe", "hyperopt-tpe")
KT_TUNERS = ("RandomSearch", "Hyperband", "BayesianOptimization")


# -- Keras Tuner side (runs in its own process: python bench/vs_keras_tuner.py --kt-run ...) ---


def kt_hypermodel(spec: Any, data: Any, family: Any) -> Any:
    """A Keras Tuner HyperModel for an hpo space: same parameters, same model code."""
    import keras_tuner as kt

    from hpo.spaces import CategoricalParam, ConstantParam, FloatParam, IntParam, Params

    def define(hp: Any, node: Any) -> Any:
        p = node.param
        if isinstance(p, ConstantParam):
            return p.value
        if isinstance(p, FloatParam):
            return hp.Float(
                node.name, p.low, p.high, step=p.step, sampling="log" if p.log else "linear"
            )
        if isinstance(p, IntParam):
            # Keras Tuner multiplies by ``step`` on a log scale: an hpo log int has step 1.
            step = None if p.log else p.step
            return hp.Int(
                node.name, p.low, p.high, step=step, sampling="log" if p.log else "linear"
            )
        if isinstance(p, CategoricalParam):
            if all(isinstance(v, bool) for v in p.values):
                return hp.Boolean(node.name)
            return hp.Choice(node.name, p.values)
        raise TypeError(f"no Keras Tuner equivalent for {node.name}: {p!r}")

    class SpaceHyperModel(kt.HyperModel):  # type: ignore[misc]
        def build(self, hp: Any) -> Any:
            values: dict[str, Any] = {}
            for node in spec.space.nodes():
                with contextlib.ExitStack() as stack:
                    for parent, option in node.conditions:
                        stack.enter_context(hp.conditional_scope(parent, [option]))
                    value = define(hp, node)
                if all(values.get(parent) == option for parent, option in node.conditions):
                    values[node.name] = value
            self.params = Params(values)
            return family.build(self.params, data)

        def fit(self, hp: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
            return model.fit(*args, batch_size=family.batch_size(self.params), **kwargs)

    return SpaceHyperModel()


def run_kt(args: argparse.Namespace) -> None:
    """One Keras Tuner search with an epoch budget; writes its results as JSON to ``--out``."""
    t_start = time.perf_counter()
    import keras
    import keras_tuner as kt

    from hpo.datasets import load_dataset
    from hpo.families import get_family
    from hpo.spaces import load_spec
    from hpo.storage.studies import apply_overrides

    spec = apply_overrides(load_spec(args.space), {"subset": args.subset, "epochs": args.epochs})
    data = load_dataset(spec.dataset)
    family = get_family(spec.family)
    max_epochs = spec.budget.max_epochs

    class EpochBudget(keras.callbacks.Callback):  # type: ignore[misc]
        """Counts epochs across trials; at the budget, ends this trial and the search."""

        def __init__(self, budget: int) -> None:
            super().__init__()
            self.budget, self.used, self.tuner = budget, 0, None

        def __deepcopy__(self, memo: Any) -> EpochBudget:
            return self  # Keras Tuner copies callbacks per trial: keep one counter

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.used += 1
            if self.used >= self.budget:
                self.model.stop_training = True
                oracle = self.tuner.oracle  # type: ignore[attr-defined]
                oracle.max_trials = len(oracle.trials)  # no new trial after this one

    budget = EpochBudget(args.budget)
    common = {
        "hypermodel": kt_hypermodel(spec, data, family),
        "objective": kt.Objective("val_accuracy", direction="max"),
        "seed": args.seed,
        "directory": str(args.dir),
        "project_name": args.kt_run,
        "overwrite": True,
    }
    if args.kt_run == "RandomSearch":
        tuner = kt.RandomSearch(max_trials=100_000, **common)
    elif args.kt_run == "BayesianOptimization":
        tuner = kt.BayesianOptimization(max_trials=100_000, **common)
    elif args.kt_run == "Hyperband":
        factor = spec.budget.reduction_factor  # as hpo's hyperband pruner uses it
        tuner = kt.Hyperband(
            max_epochs=max_epochs, factor=factor, hyperband_iterations=1000, **common
        )
    else:
        sys.exit(f"unknown tuner {args.kt_run!r}; choose one of {', '.join(KT_TUNERS)}")
    budget.tuner = tuner
    tuner.search(
        data.train.x,
        data.train.y,
        validation_data=(data.validation.x, data.validation.y),
        epochs=max_epochs,
        callbacks=[budget],
        verbose=0,
    )
    search_seconds = time.perf_counter() - t_start
    best_trial = tuner.oracle.get_best_trials(1)[0]
    model = tuner.get_best_models(1)[0]
    _, val_acc = model.evaluate(data.validation.x, data.validation.y, verbose=0)
    _, test_acc = model.evaluate(data.test.x, data.test.y, verbose=0)
    result = {
        "tuner": args.kt_run,
        "epochs": budget.used,
        "trials": len(tuner.oracle.trials),
        "best_validation_accuracy": float(best_trial.score),
        "best_model_validation_accuracy": float(val_acc),
        "best_test_accuracy": float(test_acc),
        "search_seconds": search_seconds,
        "best_params": {k: v for k, v in best_trial.hyperparameters.values.items()},
    }
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))


# -- the comparison ---------------------------------------------------------------------------


def kt_subprocess(tuner: str, seed: int, budget: int, args: argparse.Namespace, workdir: Path):  # type: ignore[no-untyped-def]
    out = workdir / f"kt_{tuner}_{seed}.json"
    cmd = [
        sys.executable, __file__, "--kt-run", tuner, "--seed", str(seed), "--budget", str(budget),
        "--subset", str(args.subset), "--epochs", str(args.epochs), "--space", str(args.space),
        "--dir", str(workdir / "keras_tuner"), "--out", str(out),
    ]  # fmt: skip
    print(f"$ keras-tuner {tuner} seed {seed}, budget {budget} epochs", flush=True)
    from _hpo_bench import children_cpu

    cpu0, t0 = children_cpu(), time.perf_counter()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    if proc.returncode != 0:
        sys.exit(f"Keras Tuner {tuner} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    result["wall_seconds"], result["cpu_seconds"] = wall, cpu
    print(
        f"  {tuner}: {result['trials']} trials, {result['epochs']} epochs, best val "
        f"{result['best_validation_accuracy']:.4f}, test {result['best_test_accuracy']:.4f}, "
        f"{wall:.0f} s wall, {cpu:.0f} s CPU",
        flush=True,
    )
    return result


def compare(args: argparse.Namespace) -> None:
    from _hpo_bench import build, machine, run_hpo

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hpo-vs-kt-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}\nwork folder: {workdir}", flush=True)
    rows: dict[str, list[dict[str, Any]]] = {}
    for seed in args.seed_list:
        runs = []
        for algorithm in HPO_ALGORITHMS:
            flags = {
                "trials": args.trials, "workers": args.workers, "algorithm": algorithm,
                "pruner": "hyperband", "subset": args.subset, "epochs": args.epochs,
                "seed": seed,
            }  # fmt: skip
            name = f"kt_{algorithm.replace('-', '_')}_{seed}"
            run = run_hpo(args.space, name, workdir, flags)
            t0 = time.perf_counter()
            ens = build([run], f"{name}-ens", top=args.trials, size=args.size, seed=seed)
            test = ens.metrics["test"]
            rows.setdefault(f"hpo {algorithm}", []).append(
                {
                    "trials": len(run.trials),
                    "epochs": run.epochs,
                    "wall_seconds": run.wall_seconds,
                    "cpu_seconds": run.cpu_seconds,
                    "best_validation_accuracy": run.best_value,
                    "best_test_accuracy": float(test["best_single"]["accuracy"]),
                    "ensemble_test_accuracy": float(test["ensemble"]["accuracy"]),
                    "ensemble_seconds": time.perf_counter() - t0,
                }
            )
            runs.append(run)
        budget = max(r.epochs for r in runs)
        for tuner in KT_TUNERS:
            rows.setdefault(f"KT {tuner}", []).append(
                kt_subprocess(tuner, seed, budget, args, workdir)
            )

    def mean(label: str, key: str) -> float:
        return statistics.fmean(r[key] for r in rows[label] if r.get(key) is not None)

    summary = {
        "space": str(args.space),
        "seeds": args.seed_list,
        "trials": args.trials,
        "subset": args.subset,
        "epochs": args.epochs,
        "workers": args.workers,
        "rows": rows,
        "workdir": str(workdir),
    }
    if args.save:
        args.save.write_text(json.dumps(summary, indent=2, default=str))
    print(
        f"\n{args.space.name} on Fashion-MNIST: {args.subset} training images, up to "
        f"{args.epochs} epochs a trial, hpo {args.trials} trials with {args.workers} workers, "
        f"seeds {args.seed_list}; means over seeds"
    )
    print(
        f"{'':26} {'trials':>6} {'epochs':>6} {'wall s':>7} {'CPU s':>7} {'best val':>8} "
        f"{'its test':>8} {'ensemble test':>13}"
    )
    for label in rows:
        ens = f"{mean(label, 'ensemble_test_accuracy'):13.4f}" if label.startswith("hpo") else ""
        print(
            f"{label:26} {mean(label, 'trials'):6.1f} {mean(label, 'epochs'):6.1f} "
            f"{mean(label, 'wall_seconds'):7.0f} {mean(label, 'cpu_seconds'):7.0f} "
            f"{mean(label, 'best_validation_accuracy'):8.4f} "
            f"{mean(label, 'best_test_accuracy'):8.4f} {ens}"
        )
    parts = []
    for algorithm in HPO_ALGORITHMS:
        h = f"hpo {algorithm}"
        for tuner in KT_TUNERS:
            k = f"KT {tuner}"
            wall = mean(h, "wall_seconds") / mean(k, "wall_seconds")
            cpu = mean(h, "cpu_seconds") / mean(k, "cpu_seconds")
            test = 100 * (mean(h, "best_test_accuracy") - mean(k, "best_test_accuracy"))
            ens = 100 * (mean(h, "ensemble_test_accuracy") - mean(k, "best_test_accuracy"))
            parts.append(
                f"{algorithm}/{tuner}: wall {wall:.2f}x (CPU {cpu:.2f}x), test {test:+.2f}, "
                f"ens {ens:+.2f}"
            )
    print(
        "ratios (hpo / Keras Tuner wall time, goal <= 0.70x, and CPU time; test accuracy "
        "points of hpo's best trial and of its ensemble minus KT's best model, goal > 0): "
        + "; ".join(parts)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 10 trials, 2,000 images")
    parser.add_argument("--space", type=Path, default=DEFAULT_SPACE)
    parser.add_argument("--seeds", type=int, help="seeds 0..K-1 (3; quick 1)")
    parser.add_argument("--trials", type=int, help="hpo trials per study (30; quick 10)")
    parser.add_argument("--subset", type=int, help="training images (10000; quick 2000)")
    parser.add_argument("--epochs", type=int, help="max epochs per trial (6; quick 4)")
    parser.add_argument("--workers", type=int, default=2, help="hpo worker processes")
    parser.add_argument("--size", type=int, default=20, help="caruana rounds")
    parser.add_argument("--workdir", type=Path, help="keep the studies here (default: temp)")
    parser.add_argument("--save", type=Path, help="also write the summary as JSON here")
    # One Keras Tuner search (internal: the comparison starts these as subprocesses).
    parser.add_argument("--kt-run", choices=KT_TUNERS, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.space = args.space.resolve()
    if args.kt_run:
        run_kt(args)
        return
    args.seed_list = list(range(args.seeds or (1 if args.quick else 3)))
    args.trials = args.trials or (10 if args.quick else 30)
    args.subset = args.subset or (2000 if args.quick else 10000)
    args.epochs = args.epochs or (4 if args.quick else 6)
    compare(args)


if __name__ == "__main__":
    main()
