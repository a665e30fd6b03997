"""Bytes the retention policy saves on a tiny study: 30 digits trials, the best 5 kept.

One ``image_cnn`` study on scikit-learn's digits (1 epoch a trial, 300 training images) runs
with local workers, a SQLite store and a local MLflow store (``mlflow.db``, ``./mlruns``) in a
temporary folder. Then ``Study.retain(keep_best)`` deletes the model files of the other
trials; the script prints the bytes MLflow listed for the trial runs before, the bytes freed
and kept, and the share saved.

    .venv/bin/python bench/retention.py              # 30 trials, keep the best 5
    .venv/bin/python bench/retention.py --quick      # 6 trials, keep the best 2

The full run trains 30 small models: minutes on a 2-core CPU shared with other work.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "search_spaces" / "image_cnn_digits.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="6 trials, keep the best 2")
    parser.add_argument("--trials", type=int, default=None, help="trials (default 30)")
    parser.add_argument("--keep-best", type=int, default=None, help="kept (default 5)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    trials = args.trials or (6 if args.quick else 30)
    keep = args.keep_best or (2 if args.quick else 5)

    import hpo

    with tempfile.TemporaryDirectory(prefix="hpo-bench-retention-") as tmp:
        os.chdir(tmp)
        began = time.monotonic()
        study = hpo.create_study(
            str(SPACE),
            name="retention_bench",
            trials=trials,
            epochs=1,
            subset=300,
            pruner="none",
            seed=0,
            storage=f"sqlite:///{Path(tmp) / 'hpo.db'}",
            tracking_uri=f"sqlite:///{Path(tmp) / 'mlflow.db'}",
        )
        study.run(workers=args.workers, progress=False)
        trained = time.monotonic() - began
        before = study.artifact_usage()
        report = study.retain(keep)
        after = study.artifact_usage()
    saved = report.bytes_freed / before["bytes"] if before["bytes"] else 0.0
    print(
        json.dumps(
            {
                "trials": trials,
                "keep_best": keep,
                "train_seconds": round(trained, 1),
                "bytes_before": before["bytes"],
                "bytes_freed": report.bytes_freed,
                "bytes_kept": report.bytes_kept,
                "bytes_after": after["bytes"],
                "saved_share": round(saved, 3),
                "removed_trials": len(report.removed_trials),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
