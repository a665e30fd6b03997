"""hpo against Keras Tuner: same space, same data, same epoch budget, side by side.

For each space, trial budget and seed: one real hpo study (``hpo run``: worker processes,
SQLite store, MLflow) per algorithm + pruner combination of ``--hpo`` (default ``optuna-tpe``
and ``hyperopt-tpe``, both with the Hyperband pruner), each followed by an ensemble
(``hpo.ensemble.build_ensemble``, caruana, the product's default metric). Keras Tuner's
``RandomSearch``, ``Hyperband`` and ``BayesianOptimization`` (``--kt``) then search the same
space with the same seed, each in its own process, until they have trained as many epochs as
the hungriest hpo study of that seed did, or as the study of the combination ``--kt-epochs``
names (epochs are counted as they end, with Keras Tuner's
Hyperband continuations counted for the epochs they actually train; the search stops mid-trial
when the budget is spent).

The same space: Keras Tuner's hyperparameters are generated from the hpo space file (every
float, int and categorical with the same range, log scale and step; the optimizer's sub-
parameters in Keras Tuner ``conditional_scope``s) and the model is built by the space's family
code (``hpo.families``), so both sides train identical architectures for identical parameter
values. The same data: both load the study's dataset with ``hpo.datasets.load_dataset`` (the
space's seeded training subset, its validation split, its test split). Validation accuracy
picks the best model on both sides (hpo: the best trial, at the epoch it keeps, its best unless
the space's ``budget.restore_best_epoch`` is false; Keras Tuner: its best epoch and its
checkpoint); test accuracy is that model's on the test split. Wall time is that
of each whole process, start-up (imports, data loading) included; hpo's ensemble build is timed
apart.

``--min-epochs N`` runs hpo's studies on a copy of the space whose ``budget.min_epochs`` is N
(no trial is pruned before epoch N; labelled ``hpo ALGORITHM+PRUNER minN``); ``--kt ''`` runs
no Keras Tuner search, for hpo variants compared with Keras Tuner searches already in the work
folder. ``--kept-epoch last`` runs them on a copy whose ``budget.restore_best_epoch`` is false
(complete trials keep their last epoch); cells whose trials keep their best epoch are labelled
``hpo ALGORITHM+PRUNER best``, and rows written before trials kept it read as ``last``.

Resumable: every finished (space, tuner, seed, budget) cell is appended to ``results.jsonl`` in
``--workdir`` (``bench/_kt_cells.py``); a rerun with the same work folder skips those cells and
prints the summary (mean, standard deviation and number of seeds) of every cell there.

    .venv/bin/python bench/vs_keras_tuner.py --quick   # 1 seed, 10 trials, 2,000 images, 4 epochs
    .venv/bin/python bench/vs_keras_tuner.py           # 3 seeds, 30 trials, the space's sizes
    .venv/bin/python bench/vs_keras_tuner.py --quick --workdir W --seeds 5 --budgets 10,30 \
        --space image_cnn --space dense_bn --space text_conv1d_small \
        --hpo optuna-tpe+hyperband,hyperopt-tpe+hyperband,optuna-tpe+none
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _hpo_bench import space_path
from _kt_cells import (
    RESULTS_FILE,
    Cell,
    append_result,
    finished,
    hpo_combo,
    hpo_label,
    load_results,
    parse_budgets,
    parse_combos,
    summarize,
)

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


def kt_subprocess(cell: Cell, epoch_budget: int, space: Path, workdir: Path) -> dict[str, Any]:
    """One Keras Tuner search (``--kt-run``) in its own process, measured."""
    tuner, _, matched = cell.label.removeprefix("KT ").partition(" @")
    stem = f"{cell.space}_{tuner}_s{cell.seed}_b{cell.budget}"
    if matched:
        stem += "_" + "".join(ch if ch.isalnum() else "_" for ch in matched)
    out = workdir / f"kt_{stem}.json"
    cmd = [
        sys.executable, __file__, "--kt-run", tuner, "--seed", str(cell.seed),
        "--budget", str(epoch_budget), "--subset", str(cell.subset or 0),
        "--epochs", str(cell.max_epochs), "--space", str(space),
        "--dir", str(workdir / "keras_tuner" / stem), "--out", str(out),
    ]  # fmt: skip
    print(f"$ keras-tuner {tuner} {cell.space} seed {cell.seed}, {epoch_budget} epochs", flush=True)
    from _hpo_bench import children_cpu

    cpu0, t0 = children_cpu(), time.perf_counter()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    if proc.returncode != 0:
        sys.exit(f"Keras Tuner {tuner} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    result["wall_seconds"], result["cpu_seconds"] = wall, cpu
    result["epoch_budget"] = epoch_budget
    print(
        f"  {tuner}: {result['trials']} trials, {result['epochs']} epochs, best val "
        f"{result['best_validation_accuracy']:.4f}, test {result['best_test_accuracy']:.4f}, "
        f"{wall:.0f} s wall, {cpu:.0f} s CPU",
        flush=True,
    )
    return result


def free_study_name(workdir: Path, name: str) -> str:
    """``name``, or ``name_rN`` when a killed run left a study of that name in ``hpo.db``."""
    db = workdir / "hpo.db"
    if not db.exists():
        return name
    import optuna

    taken = set(optuna.get_all_study_names(f"sqlite:///{db}"))
    n = 1
    candidate = name
    while candidate in taken:
        candidate, n = f"{name}_r{n}", n + 1
    return candidate


def with_budget(
    space: Path, min_epochs: int, max_epochs: int, workdir: Path, kept_epoch: str = "best"
) -> Path:
    """``space``, or a copy of it in ``workdir/spaces`` whose ``budget.min_epochs`` is
    ``min_epochs`` and whose ``budget.restore_best_epoch`` says ``kept_epoch`` (``hpo run`` has
    no flags for them; the copy keeps the space's name). The copy's ``max_epochs`` is the run's
    (``--epochs`` sets it anyway), so that a space of fewer epochs than ``min_epochs`` stays
    valid."""
    import yaml

    doc = yaml.safe_load(space.read_text())
    budget = doc.get("budget", {})
    best = kept_epoch == "best"
    if budget.get("min_epochs", 1) == min_epochs and budget.get("restore_best_epoch", True) == best:
        return space
    doc.setdefault("budget", {}).update(min_epochs=min_epochs, max_epochs=max_epochs)
    doc["budget"]["restore_best_epoch"] = best
    suffix = f"_min{min_epochs}" if min_epochs != 1 else ""
    copy = workdir / "spaces" / f"{space.stem}{suffix}_{kept_epoch}.yaml"
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text(yaml.safe_dump(doc, sort_keys=False))
    return copy


def hpo_cell(cell: Cell, space: Path, workdir: Path, size: int) -> dict[str, Any]:
    """One hpo study (``hpo run``) and its ensemble, measured."""
    from _hpo_bench import build, run_hpo

    algorithm, pruner = hpo_combo(cell.label)
    flags = {
        "trials": cell.budget, "workers": cell.workers, "algorithm": algorithm,
        "pruner": pruner, "subset": cell.subset, "epochs": cell.max_epochs, "seed": cell.seed,
    }  # fmt: skip
    base = f"kt_{cell.space}_{algorithm}_{pruner}_s{cell.seed}_b{cell.budget}".replace("-", "_")
    if cell.min_epochs != 1:
        base += f"_min{cell.min_epochs}"
    if cell.kept_epoch != "last":
        base += f"_{cell.kept_epoch}"
    name = free_study_name(workdir, base)
    space = with_budget(space, cell.min_epochs, cell.max_epochs, workdir, cell.kept_epoch)
    run = run_hpo(space, name, workdir, flags)
    t0 = time.perf_counter()
    ens = build([run], f"{name}-ens", top=cell.budget, size=size, seed=cell.seed)
    test = ens.metrics["test"]
    return {
        "study": name,
        "trials": len(run.trials),
        "pruned": sum(t["state"] == "PRUNED" for t in run.trials),
        "epochs": run.epochs,
        "wall_seconds": run.wall_seconds,
        "cpu_seconds": run.cpu_seconds,
        "best_validation_accuracy": run.best_value,
        "best_test_accuracy": float(test["best_single"]["accuracy"]),
        "ensemble_test_accuracy": float(test["ensemble"]["accuracy"]),
        "ensemble_seconds": time.perf_counter() - t0,
    }


def compare(args: argparse.Namespace) -> None:
    from _hpo_bench import machine

    from hpo.spaces import load_spec

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hpo-vs-kt-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = workdir / RESULTS_FILE
    rows = load_results(results)
    done = finished(rows)
    print(f"machine: {machine()}\nwork folder: {workdir}", flush=True)
    print(f"{len(done)} finished cells in {results}", flush=True)
    # Read what both sides import once, untimed: otherwise the first timed cell (an hpo study)
    # alone pays for reading TensorFlow, MLflow and Keras Tuner from a cold disk cache.
    warm_up = "import keras, mlflow, optuna, keras_tuner, hpo.workers.runner"
    subprocess.run([sys.executable, "-c", warm_up], capture_output=True, check=False)
    for space in args.space:
        spec = load_spec(space)
        subset = args.subset or spec.dataset.subset
        epochs = args.epochs or spec.budget.max_epochs
        min_epochs = min(args.min_epochs or spec.budget.min_epochs, epochs)
        kept = args.kept_epoch or ("best" if spec.budget.restore_best_epoch else "last")
        for budget in args.budget_list:
            for seed in args.seed_list:
                settings = (seed, budget, subset, epochs, args.workers)
                hpo_cells = [
                    Cell(spec.name, hpo_label(a, p, min_epochs, kept), *settings, min_epochs, kept)
                    for a, p in args.combos
                ]
                for c in hpo_cells:
                    if c not in done:
                        done[c] = append_result(results, c, hpo_cell(c, space, workdir, args.size))
                # Keras Tuner trains as many epochs as the hungriest hpo study of this seed, or
                # as the one of --kt-epochs (its label then names that combination).
                if args.kt_epochs is None:
                    epoch_budget = max(int(done[c]["epochs"]) for c in hpo_cells)
                    suffix = ""
                else:
                    matched = hpo_cells[args.combos.index(args.kt_epochs)]
                    epoch_budget = int(done[matched]["epochs"])
                    suffix = f" @{matched.label.removeprefix('hpo ')}"
                for tuner in args.kt:
                    label = f"KT {tuner}{suffix}"
                    c = Cell(spec.name, label, *settings)
                    if c not in done:
                        result = kt_subprocess(c, epoch_budget, space, workdir)
                        done[c] = append_result(results, c, result)
    summary = summarize(done.values())
    if args.save:
        args.save.write_text(json.dumps(list(done.values()), indent=2, default=str))
    print(summary)


def main() -> None:
    from hpo.catalog import ALGORITHMS, PRUNERS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="1 seed, 10 trials, 2,000 examples, 4 epochs"
    )
    parser.add_argument(
        "--space", type=space_path, action="append",
        help="space file or name in search_spaces/; repeat for several (default: image_cnn)",
    )  # fmt: skip
    parser.add_argument("--seeds", type=int, help="seeds 0..K-1 (3; quick 1)")
    parser.add_argument("--budgets", help="hpo trial budgets, comma-separated (30; quick 10)")
    parser.add_argument("--trials", type=int, help="one budget (same as --budgets N)")
    parser.add_argument(
        "--hpo", default=",".join(f"{a}+hyperband" for a in HPO_ALGORITHMS),
        help="hpo ALGORITHM+PRUNER combinations, comma-separated (pruner default: hyperband)",
    )  # fmt: skip
    parser.add_argument(
        "--kt", default=",".join(KT_TUNERS), help="Keras Tuner tuners, comma-separated"
    )
    parser.add_argument(
        "--kt-epochs", metavar="ALGORITHM+PRUNER",
        help="Keras Tuner trains as many epochs as this --hpo combination's study of the same "
        "seed (its cells are labelled 'KT TUNER @ALGORITHM+PRUNER'; default: as many as the "
        "hungriest --hpo study, labelled 'KT TUNER')",
    )  # fmt: skip
    parser.add_argument("--subset", type=int, help="training examples (the space's; quick 2000)")
    parser.add_argument("--epochs", type=int, help="max epochs a trial (the space's; quick 4)")
    parser.add_argument(
        "--min-epochs", type=int, metavar="N",
        help="hpo prunes a trial from epoch N on (the space's budget.min_epochs; its cells are "
        "labelled 'hpo ALGORITHM+PRUNER minN' when N > 1)",
    )  # fmt: skip
    parser.add_argument(
        "--kept-epoch", choices=("best", "last"),
        help="the epoch hpo's complete trials keep (the space's budget.restore_best_epoch: best "
        "by default; cells labelled 'hpo ALGORITHM+PRUNER best' when best)",
    )  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="hpo worker processes")
    parser.add_argument("--size", type=int, default=20, help="caruana rounds")
    parser.add_argument(
        "--workdir", type=Path,
        help=f"studies and {RESULTS_FILE} here; a rerun skips finished cells (default: temp)",
    )  # fmt: skip
    parser.add_argument("--save", type=Path, help="also write every cell as JSON here")
    # One Keras Tuner search (internal: the comparison starts these as subprocesses).
    parser.add_argument("--kt-run", choices=KT_TUNERS, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.space = args.space or [DEFAULT_SPACE]
    if args.kt_run:
        args.space = args.space[0]
        run_kt(args)
        return
    try:
        if args.budgets:
            args.budget_list = parse_budgets(args.budgets)
        else:
            args.budget_list = [args.trials or (10 if args.quick else 30)]
        args.combos = parse_combos(args.hpo, ALGORITHMS, PRUNERS)
        if args.kt_epochs is not None:
            matched = parse_combos(args.kt_epochs, ALGORITHMS, PRUNERS, "--kt-epochs")
            if len(matched) != 1 or matched[0] not in args.combos:
                raise ValueError(f"--kt-epochs {args.kt_epochs!r}: expected one of --hpo")
            args.kt_epochs = matched[0]
    except ValueError as e:
        parser.error(str(e))
    args.kt = [t.strip() for t in args.kt.split(",") if t.strip()]
    unknown = [t for t in args.kt if t not in KT_TUNERS]
    if unknown:
        parser.error(f"--kt: unknown tuner {unknown[0]!r}; known: {', '.join(KT_TUNERS)}")
    if args.min_epochs is not None and args.min_epochs < 1:
        parser.error("--min-epochs: expected 1 or more")
    if args.seeds is not None and args.seeds < 1:
        parser.error("--seeds: expected 1 or more")
    args.seed_list = list(range(args.seeds or (1 if args.quick else 3)))
    if args.quick:
        args.subset = args.subset or 2000
        args.epochs = args.epochs or 4
    compare(args)


if __name__ == "__main__":
    main()
