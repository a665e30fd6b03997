"""Does a weighted ensemble beat the best single trial? Fashion-MNIST, image_cnn, real studies.

Runs a real study (`hpo run`, real Keras training, SQLite store, MLflow) in a work folder, then
builds ensembles of its trials from their stored predictions (nothing retrained) and prints
the test metrics of the best single trial, the uniform average of the top K and the ensembles
(caruana, weights), with the targets: the caruana ensemble beats the best single trial by at
least 0.5 points of test accuracy and 10% of test NLL.

    .venv/bin/python bench/ensemble_quality.py            # 30 trials, the space's subset/epochs
    .venv/bin/python bench/ensemble_quality.py --quick    # 10 trials, 4,000 images, 4 epochs
    .venv/bin/python bench/ensemble_quality.py --workdir W --resume --trials 40  # grow a study

Other families plug in with --space (one study per space file, all on the same data), e.g. a
Reuters ensemble of two families:

    .venv/bin/python bench/ensemble_quality.py \
        --space search_spaces/text_conv1d.yaml --space search_spaces/text_dense.yaml
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SPACE = REPO / "search_spaces" / "image_cnn.yaml"


def run_study(space: Path, name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "hpo", "run", str(space), "--study", name,
        "--trials", str(args.trials), "--workers", str(args.workers), "--seed", str(args.seed),
        "--json",
    ]  # fmt: skip
    for flag, value in (("--subset", args.subset), ("--epochs", args.epochs),
                        ("--pruner", args.pruner)):  # fmt: skip
        if value is not None:
            cmd += [flag, str(value)]
    if args.resume:
        cmd.append("--resume")
    print("$", " ".join(cmd[2:]), flush=True)
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"study {name} failed:\n{proc.stderr[-3000:]}")
    summary: dict[str, Any] = json.loads(proc.stdout)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 trials, 4,000 images, 4 epochs")
    parser.add_argument("--space", action="append", type=Path, help="space file (repeatable)")
    parser.add_argument("--trials", type=int, help="trials per study (30; quick 10)")
    parser.add_argument("--subset", type=int, help="training images (space's; quick 4000)")
    parser.add_argument("--epochs", type=int, help="epochs per trial (space's; quick 4)")
    parser.add_argument("--pruner", help="pruner (space's; quick none)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--top", type=int, help="candidates (all trials)")
    parser.add_argument("--size", type=int, default=20, help="caruana rounds / average size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="keep the studies here (default: temp)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--resume", action="store_true", help="continue the studies in --workdir up to --trials"
    )
    args = parser.parse_args()
    if args.quick:
        args.trials = args.trials or 10
        args.subset = args.subset or 4000
        args.epochs = args.epochs or 4
        args.pruner = args.pruner or "none"
    args.trials = args.trials or 30
    spaces = args.space or [DEFAULT_SPACE]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hpo-ensemble-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {workdir}", flush=True)

    t0 = time.perf_counter()
    names = []
    for i, space in enumerate(spaces):
        name = f"bench_{space.stem}_{i}"
        summary = run_study(space.resolve(), name, args, workdir)
        print(
            f"  {name}: {summary['complete']} complete, {summary['pruned']} pruned, "
            f"{summary['failed']} failed, best {summary['best_values']}",
            flush=True,
        )
        names.append(name)
    study_seconds = time.perf_counter() - t0

    from hpo.ensemble import build_ensemble

    storage = f"sqlite:///{workdir / 'hpo.db'}"
    top = args.top or args.trials * len(spaces)
    results = {}
    t1 = time.perf_counter()
    for label, method, metric in (
        ("caruana", "caruana", "nll"),
        ("caruana-accuracy", "caruana", "accuracy"),
        ("weights", "weights", "nll"),
    ):
        results[label] = build_ensemble(
            names,
            f"bench-{label}",
            method=method,
            metric=metric,
            top=top,
            size=args.size,
            storage=storage,
            seed=args.seed,
        )
    build_seconds = time.perf_counter() - t1
    caruana = results["caruana"].metrics["test"]
    rows = {
        "best single": caruana["best_single"],
        f"average of top {args.size}": caruana["average"],
        "caruana (NLL)": caruana["ensemble"],
        "caruana (accuracy)": results["caruana-accuracy"].metrics["test"]["ensemble"],
        "weights (simplex)": results["weights"].metrics["test"]["ensemble"],
    }
    single = caruana["best_single"]
    gain_points = 100 * (caruana["ensemble"]["accuracy"] - single["accuracy"])
    nll_drop = 1 - caruana["ensemble"]["nll"] / single["nll"]
    summary = {
        "studies": names,
        "candidates": len(results["caruana"].candidates),
        "caruana_members": len(results["caruana"].members),
        "test": rows,
        "accuracy_gain_points": gain_points,
        "nll_reduction": nll_drop,
        "targets_met": {"accuracy +0.5 points": gain_points >= 0.5, "nll -10%": nll_drop >= 0.10},
        "study_seconds": study_seconds,
        "build_seconds": build_seconds,
        "workdir": str(workdir),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(
        f"\ntest split ({summary['candidates']} candidates; caruana chose "
        f"{summary['caruana_members']} distinct trials in {args.size} rounds)"
    )
    print(f"{'':24} {'accuracy':>9} {'NLL':>8} {'ECE':>8}")
    for label, m in rows.items():
        print(f"{label:24} {m['accuracy']:9.4f} {m['nll']:8.4f} {m['ece']:8.4f}")
    print(
        f"\ncaruana vs best single: {gain_points:+.2f} accuracy points, NLL {-100 * nll_drop:+.1f}%"
    )
    for target, met in summary["targets_met"].items():
        print(f"  target {target}: {'met' if met else 'NOT met'}")
    print(f"studies {study_seconds:.0f} s, ensembles {build_seconds:.0f} s; folder {workdir}")


if __name__ == "__main__":
    main()
