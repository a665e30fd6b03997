"""Pruning: trials per CPU-hour with and without the Hyperband pruner, and the best accuracy.

Two real studies (``hpo run``: worker processes, SQLite store, MLflow) on the same space, data,
algorithm (``optuna-tpe``) and seed, with the same number of trials: ``--pruner hyperband``
(rungs from ``budget.min_epochs`` to ``--epochs``, the space's ``budget.reduction_factor``, 3
by default) and ``--pruner none``.
CPU time is that of the whole ``hpo run`` process tree (user + system, from
``getrusage(RUSAGE_CHILDREN)``), so start-up, MLflow logging and the trial processes count.
The best trial's test accuracy comes from ``hpo.ensemble.build_ensemble`` (its "best single"
row: the best trial by validation, scored on the official test split). Goal: >= 3x the trials
per CPU-hour with the best accuracy within 0.3 points.

    .venv/bin/python bench/pruning.py --quick   # 12 trials each, 2,000 images, 6 epochs
    .venv/bin/python bench/pruning.py           # 40 trials each, 10,000 images, 9 epochs
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from _hpo_bench import build, machine, run_hpo

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SPACE = REPO / "search_spaces" / "image_cnn.yaml"
PRUNERS = ("hyperband", "none")


def hyperband_epochs(min_epochs: int, max_epochs: int, reduction_factor: int = 3) -> float:
    """Mean epochs a trial trains under Optuna's HyperbandPruner if every rung keeps its best
    1/``reduction_factor``: its brackets, their share of the trials and their rungs.

    Optuna's asynchronous promotion moves this a little either way (a rung's first trials meet
    few rivals and go on; later a rung of k trials keeps k // 3), so a study trains about this
    many epochs a trial: ``max_epochs`` divided by it is about the most Hyperband can cut the
    epochs by at these settings, whatever the models.

    Example:
        >>> round(hyperband_epochs(1, 9), 2), round(hyperband_epochs(1, 27), 2)
        (4.29, 7.41)
    """
    n = math.floor(math.log(max_epochs / min_epochs, reduction_factor)) + 1
    shares = epochs = 0.0
    for bracket in range(n):
        s = n - 1 - bracket
        share = math.ceil(n * reduction_factor**s / (s + 1))  # Optuna's trial allocation
        rungs = [min_epochs * reduction_factor ** (bracket + k) for k in range(n)]
        trained, done, alive = 0.0, 0, 1.0
        for rung in [r for r in rungs if r < max_epochs]:
            trained += alive * (rung - done)
            done, alive = rung, alive / reduction_factor
        trained += alive * (max_epochs - done)
        shares += share
        epochs += share * trained
    return epochs / shares


def with_reduction_factor(space: Path, factor: int, folder: Path) -> Path:
    """A copy of ``space`` in ``folder`` whose budget has ``reduction_factor: factor``."""
    import yaml

    data = yaml.safe_load(space.read_text())
    data["budget"]["reduction_factor"] = factor
    copy = folder / f"{space.stem}_rf{factor}{space.suffix}"
    copy.write_text(yaml.safe_dump(data, sort_keys=False))
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="12 trials, 2,000 images, 6 epochs")
    parser.add_argument("--space", type=Path, default=DEFAULT_SPACE)
    parser.add_argument("--trials", type=int, help="trials per study (40; quick 12)")
    parser.add_argument("--subset", type=int, help="training images (10000; quick 2000)")
    parser.add_argument("--epochs", type=int, help="max epochs per trial (9; quick 6)")
    parser.add_argument("--algorithm", default="optuna-tpe")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="keep the studies here (default: temp)")
    parser.add_argument("--save", type=Path, help="also write the summary as JSON here")
    parser.add_argument(
        "--reduction-factor",
        type=int,
        help="run a copy of the space with this budget.reduction_factor (default: the space's)",
    )
    args = parser.parse_args()
    trials = args.trials or (12 if args.quick else 40)
    subset = args.subset or (2000 if args.quick else 10000)
    epochs = args.epochs or (6 if args.quick else 9)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hpo-pruning-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}\nwork folder: {workdir}", flush=True)
    if args.reduction_factor is not None:
        args.space = with_reduction_factor(args.space, args.reduction_factor, workdir)

    t0 = time.perf_counter()
    rows: dict[str, dict[str, Any]] = {}
    for pruner in PRUNERS:
        flags = {
            "trials": trials, "workers": args.workers, "algorithm": args.algorithm,
            "pruner": pruner, "subset": subset, "epochs": epochs, "seed": args.seed,
        }  # fmt: skip
        run = run_hpo(args.space.resolve(), f"pruning_{pruner}", workdir, flags)
        best = build([run], f"pruning-{pruner}-best", top=1, size=1, seed=args.seed)
        single = best.metrics["test"]["best_single"]
        finished = len(run.trials)
        rows[pruner] = {
            "trials": finished,
            "complete": run.summary["complete"],
            "pruned": run.summary["pruned"],
            "failed": run.summary["failed"],
            "epochs": run.epochs,
            "wall_seconds": run.wall_seconds,
            "cpu_seconds": run.cpu_seconds,
            "trials_per_cpu_hour": finished / (run.cpu_seconds / 3600),
            "best_validation_accuracy": run.best_value,
            "best_test_accuracy": float(single["accuracy"]),
        }
    hb, none = rows["hyperband"], rows["none"]
    val_key, test_key = "best_validation_accuracy", "best_test_accuracy"
    summary = {
        "space": str(args.space),
        "trials": trials,
        "subset": subset,
        "epochs": epochs,
        "algorithm": args.algorithm,
        "workers": args.workers,
        "seed": args.seed,
        "rows": rows,
        "trials_per_cpu_hour_ratio": hb["trials_per_cpu_hour"] / none["trials_per_cpu_hour"],
        "validation_points": 100 * (hb[val_key] - none[val_key]),
        "test_points": 100 * (hb[test_key] - none[test_key]),
        "seconds": time.perf_counter() - t0,
        "workdir": str(workdir),
    }  # fmt: skip
    if args.save:
        args.save.write_text(json.dumps(summary, indent=2))
    print(
        f"\n{args.space.name}: {trials} trials per study, {args.algorithm}, {args.workers} "
        f"workers, {subset} training images, up to {epochs} epochs, seed {args.seed}"
    )
    print(
        f"{'pruner':10} {'trials':>6} {'pruned':>6} {'epochs':>6} {'wall s':>7} {'CPU s':>7} "
        f"{'trials/CPU-h':>12} {'best val':>8} {'its test':>8}"
    )
    for pruner, r in rows.items():
        print(
            f"{pruner:10} {r['trials']:6d} {r['pruned']:6d} {r['epochs']:6d} "
            f"{r['wall_seconds']:7.0f} {r['cpu_seconds']:7.0f} {r['trials_per_cpu_hour']:12.1f} "
            f"{r['best_validation_accuracy']:8.4f} {r['best_test_accuracy']:8.4f}"
        )
    from hpo.spaces import parse_spec

    budget = parse_spec(args.space.read_text(), args.space.name).budget
    min_epochs, factor = budget.min_epochs, budget.reduction_factor
    bound = epochs / hyperband_epochs(min_epochs, epochs, factor)
    print(
        f"Hyperband's brackets at epochs {min_epochs}-{epochs}, reduction factor {factor}: about "
        f"{bound:.2f}x fewer epochs a trial than no pruner; this run {none['epochs']} / "
        f"{hb['epochs']} = {none['epochs'] / max(hb['epochs'], 1):.2f}x"
    )
    ratio = summary["trials_per_cpu_hour_ratio"]
    print(
        f"ratios (hyperband / none): trials per CPU-hour {ratio:.2f}x"
        f" (goal >= 3x); best validation accuracy {summary['validation_points']:+.2f} points, "
        f"its test accuracy {summary['test_points']:+.2f} points (goal within 0.3)"
    )


if __name__ == "__main__":
    main()
