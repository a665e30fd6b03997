"""Test accuracy of the best text_conv1d and text_dense trials on Reuters topics.

Runs real studies with the real command line (``hpo run`` with worker processes, SQLite study
store, MLflow tracking) on the shipped spaces ``search_spaces/text_conv1d.yaml`` and
``search_spaces/text_dense.yaml``, then scores the best trial's TEST predictions, made from
its stored model by ``hpo.ensemble.trial_predictions`` (LEWISSPLIT=TEST, 2,977 newswires,
never used by the search, which only sees validation accuracy). Goal: text_conv1d reaches a
test accuracy of at least 0.78 with 20 trials.

    .venv/bin/python bench/quality_text.py            # 20 trials per family, the spaces' epochs
    .venv/bin/python bench/quality_text.py --quick    # 6 trials per family, at most 4 epochs
    .venv/bin/python bench/quality_text.py --families text_conv1d --trials 30 --workdir runs/

Needs the Reuters-21578 archive (see :mod:`hpo.datasets.reuters`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ("text_conv1d", "text_dense")
GOALS = {"text_conv1d": 0.78}


def hpo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real ``hpo`` command line in a subprocess; its error output goes to ours."""
    result = subprocess.run(
        [sys.executable, "-m", "hpo", *args], cwd=cwd, capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        raise SystemExit(f"hpo {' '.join(args)} failed with exit status {result.returncode}")
    return result


def stored_accuracy(name: str, trial: int, workdir: Path, tracking_uri: str) -> tuple[float, float]:
    """(validation, test) accuracy of a trial of study ``name`` (its test predictions made
    from its stored model by :func:`hpo.ensemble.trial_predictions`).

    Example:
        >>> uri = "sqlite:///mlflow.db"
        >>> stored_accuracy("text_dense_bench", 3, Path("."), uri)  # doctest: +SKIP
        (0.8424, 0.8012)
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep output a table
    from hpo.ensemble import trial_predictions

    preds = trial_predictions(
        name,
        trial,
        storage=f"sqlite:///{workdir / 'hpo.db'}",
        tracking_uri=tracking_uri,
    )
    return tuple(  # type: ignore[return-value]
        float(np.mean(preds[s].argmax(axis=1) == preds[f"{s}_true"]))
        for s in ("validation", "test")
    )


def study(
    family: str, trials: int, workers: int, epochs: int | None, workdir: Path
) -> dict[str, Any]:
    """Run one study and score its best trial."""
    name = f"{family}_bench"
    args = ["run", str(REPO / "search_spaces" / f"{family}.yaml"), "--study", name,
            "--trials", str(trials), "--workers", str(workers), "--json"]  # fmt: skip
    if epochs:
        args += ["--epochs", str(epochs)]
    t0 = time.perf_counter()
    summary = json.loads(hpo(*args, cwd=workdir).stdout)
    minutes = (time.perf_counter() - t0) / 60
    best = json.loads(hpo("study", "best", name, "--json", cwd=workdir).stdout)["best_trials"][0]
    val, test = stored_accuracy(name, int(best["number"]), workdir, summary["tracking_uri"])
    return {
        "family": family,
        "trials": f"{summary['complete']}/{summary['pruned']}/{summary['failed']}",
        "minutes": minutes,
        "best_trial": best["number"],
        "val_accuracy": val,
        "test_accuracy": test,
        "params": best["params"],
        "command": "hpo " + " ".join(args),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="6 trials, at most 4 epochs")
    parser.add_argument("--trials", type=int, help="trials per family (default 20; quick 6)")
    parser.add_argument("--epochs", type=int, help="max epochs (default: the space's; quick 4)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--workdir", type=Path, help="keep hpo.db and mlflow.db here")
    args = parser.parse_args()
    trials = args.trials or (6 if args.quick else 20)
    epochs = args.epochs or (4 if args.quick else None)
    with tempfile.TemporaryDirectory(prefix="quality_text_") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        rows = []
        for family in args.families:
            row = study(family, trials, args.workers, epochs, workdir)
            rows.append(row)
            print(f"{family}: {row['command']}", flush=True)
            print(f"  best trial {row['best_trial']}: {json.dumps(row['params'])}", flush=True)
    print(
        f"\n{'family':<12} {'trials c/p/f':>12} {'minutes':>8} {'val acc':>8} {'TEST acc':>9}  goal"
    )
    for r in rows:
        goal = GOALS.get(r["family"])
        verdict = (
            ""
            if goal is None
            else f">= {goal}: {'met' if r['test_accuracy'] >= goal else 'MISSED'}"
        )
        print(f"{r['family']:<12} {r['trials']:>12} {r['minutes']:>8.1f} {r['val_accuracy']:>8.4f} "
              f"{r['test_accuracy']:>9.4f}  {verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
