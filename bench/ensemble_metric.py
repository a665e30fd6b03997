"""What caruana should select on: validation log loss or accuracy, on studies already run.

Rebuilds the ensemble of every study in a work folder (its ``hpo.db``, and the MLflow store its
studies logged to) once per selection metric, from the stored predictions (nothing is trained),
and prints, per study, the validation and test accuracy and log loss of the best single trial
and of each ensemble. It ends with the mean test accuracy points of each ensemble over the best
single trial. Classifier studies only.

    .venv/bin/python bench/ensemble_metric.py /tmp/kt8          # the studies of a bench run
    .venv/bin/python bench/ensemble_metric.py W --size 20 --study kt_optuna_tpe_0

The work folder of ``bench/vs_keras_tuner.py --workdir W`` or ``bench/ensemble_quality.py
--workdir W`` serves; so does any folder where ``hpo run`` was used with its defaults.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path

METRICS = ("nll", "accuracy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workdir", type=Path, help="folder holding hpo.db")
    parser.add_argument("--study", action="append", help="study (repeatable; default: all)")
    parser.add_argument("--size", type=int, default=20, help="caruana rounds (20)")
    parser.add_argument("--top", type=int, default=20, help="candidates (20)")
    args = parser.parse_args()

    os.chdir(args.workdir)  # the studies' relative MLflow store, as hpo run left it
    from hpo.ensemble import EnsembleWarning, build_ensemble
    from hpo.storage import open_storage

    storage = f"sqlite:///{Path('hpo.db').resolve()}"
    names = args.study or sorted(s.study_name for s in open_storage(storage).get_all_studies())
    print(f"work folder {args.workdir}, {len(names)} studies, caruana, size {args.size}")
    print(f"{'study':22} {'kind':17} {'val acc':>8} {'test acc':>8} {'val nll':>8} {'test nll':>8}")
    gains: dict[str, list[float]] = {m: [] for m in METRICS}
    t0 = time.perf_counter()
    stamp = time.strftime("%H%M%S")
    for study in names:
        single: dict[str, dict[str, float]] = {}
        for metric in METRICS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", EnsembleWarning)  # the table shows it all
                result = build_ensemble(
                    [study],
                    f"{study}-{metric}-{stamp}",
                    metric=metric,
                    top=args.top,
                    size=args.size,
                    storage=storage,
                )
            m = result.metrics
            if not single:
                single = {s: m[s]["best_single"] for s in ("validation", "test")}
                _row(study, "best single", single)
            ens = {s: m[s]["ensemble"] for s in ("validation", "test")}
            _row("", f"ensemble {metric}", ens)
            gains[metric].append(100 * (ens["test"]["accuracy"] - single["test"]["accuracy"]))
    builds = len(names) * len(METRICS)
    print(f"{len(names)} studies, {builds} builds in {time.perf_counter() - t0:.0f} s")
    print(
        "ratios (ensemble test accuracy minus the best single trial's, points, mean over "
        "studies): "
        + "; ".join(
            f"{m}: {statistics.mean(g):+.2f} (worst {min(g):+.2f})" for m, g in gains.items()
        )
    )


def _row(study: str, kind: str, by_split: dict[str, dict[str, float]]) -> None:
    v, t = by_split["validation"], by_split["test"]
    print(
        f"{study:22} {kind:17} {v['accuracy']:8.4f} {t['accuracy']:8.4f} "
        f"{v['nll']:8.4f} {t['nll']:8.4f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
