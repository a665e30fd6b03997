"""Sample efficiency: how many trials TPE needs to reach random search's best of N.

For each seed s, random search (``optuna-random``, seed s + 1000) runs N trials; its best
validation accuracy is the target. TPE (``optuna-tpe`` and ``hyperopt-tpe``, seed s, same
space) runs N trials too, and we record the first trial (1-based) whose best-so-far reaches the
target. A seed that never reaches it within N trials counts as N + 1 (reported as "> N"). The
median over seeds is the figure; the goal is at most N / 2.

The objective is the real one: the built-in ``dense_bn`` family trained with Keras on
scikit-learn's digits (``search_spaces/dense_bn_digits.yaml``), validation accuracy after the
space's epochs, no pruning. Trials run through hpo's library, the pieces its workers use
(``hpo.engines.create_sampler``, ``hpo.spaces.suggest``, ``hpo.families``, ``hpo.datasets``),
in two processes that each import Keras once; MLflow logging and the worker's trial process
are left out, since they cost about 10 s a trial on the shared 2-core machine and do not change
what the samplers propose. ``--cli`` runs every study with ``hpo run --json`` instead (one
worker, ``--pruner none``, SQLite store and MLflow in a temp folder): the same proposals with
the whole service around them, much slower.

    .venv/bin/python bench/sample_efficiency.py --quick   # N = 20, 5 seeds
    .venv/bin/python bench/sample_efficiency.py           # N = 50, 5 seeds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SPACE = REPO / "search_spaces" / "dense_bn_digits.yaml"
BASELINE = "optuna-random"
CHALLENGERS = ("optuna-tpe", "hyperopt-tpe")
# TPE starts with random proposals (a quarter of N, 3 to 10 for Optuna and 3 to 20 for
# hyperopt: hpo.engines.startup_trials) from the same seeded generator as random search:
# the baseline takes seed + 1000 so it is not TPE's own prefix.
BASELINE_SEED_OFFSET = 1000


def _init_worker() -> None:
    # One core per process: two processes share the 2-core machine.
    for var in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
        os.environ[var] = "1"
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run_library(algorithm: str, seed: int, n_trials: int, space: str) -> list[float]:
    """Objective values of ``n_trials`` trials, in trial order, run in this process."""
    import keras
    import optuna

    from hpo.datasets import load_dataset
    from hpo.engines import create_sampler
    from hpo.families import get_family
    from hpo.spaces import Params, load_spec, suggest

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_spec(space)
    data = load_dataset(spec.dataset)
    family = get_family(spec.family)
    metric = spec.metrics[0]
    # With the study's budget, as a worker builds it (TPE's random start sized to N).
    sampler = create_sampler(
        algorithm, spec.space, seed=seed, directions=spec.directions, n_trials=n_trials
    )
    study = optuna.create_study(directions=spec.directions, sampler=sampler)

    def objective(trial: optuna.Trial) -> float:
        hp = Params(suggest(trial, spec.space))
        keras.backend.clear_session()
        keras.utils.set_random_seed((seed * 100_003 + trial.number) % 2**31)  # as hpo's runner
        model = family.build(hp, data)
        logs: dict[str, float] = {}
        record = keras.callbacks.LambdaCallback(on_epoch_end=lambda _e, lg: logs.update(lg))
        family.fit(model, hp, data, spec.budget.max_epochs, [record])
        return float(logs[metric])

    study.optimize(objective, n_trials=n_trials)
    return [float(t.value) for t in sorted(study.trials, key=lambda t: t.number)]


def run_cli(algorithm: str, seed: int, n_trials: int, space: str) -> list[float]:
    """The same study through ``hpo run --json`` (one worker, no pruning)."""
    import optuna

    workdir = Path(tempfile.mkdtemp(prefix="hpo-sample-eff-"))
    name = f"eff_{algorithm}_{seed}"
    cmd = [
        sys.executable, "-m", "hpo", "run", space, "--study", name, "--trials", str(n_trials),
        "--workers", "1", "--algorithm", algorithm, "--pruner", "none", "--seed", str(seed),
        "--json",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'hpo.db'}")
    done = [t for t in study.trials if t.value is not None]
    return [float(t.value) for t in sorted(done, key=lambda t: t.number)]


def trials_to_reach(values: list[float], target: float) -> int:
    """1-based index of the first trial whose best-so-far reaches ``target``; len + 1 if none.

    Example:
        >>> trials_to_reach([0.5, 0.9, 0.8], 0.85), trials_to_reach([0.5], 0.9)
        (2, 2)
    """
    best = float("-inf")
    for i, v in enumerate(values, start=1):
        best = max(best, v)
        if best >= target:
            return i
    return len(values) + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 20 trials per study")
    parser.add_argument("--trials", type=int, help="N, trials per study (50; quick 20)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--space", type=Path, default=DEFAULT_SPACE)
    parser.add_argument("--processes", type=int, default=2, help="studies run at once")
    parser.add_argument("--cli", action="store_true", help="run studies with `hpo run`")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--save", type=Path, help="also write the summary as JSON here")
    args = parser.parse_args()
    n = args.trials or (20 if args.quick else 50)
    seeds = list(range(args.seeds))
    algorithms = (BASELINE, *CHALLENGERS)
    run = run_cli if args.cli else run_library
    t0 = time.perf_counter()
    jobs = [(a, s) for a in algorithms for s in seeds]

    def seed_of(a: str, s: int) -> int:
        return s + BASELINE_SEED_OFFSET if a == BASELINE else s

    with ProcessPoolExecutor(args.processes, initializer=_init_worker) as pool:
        futures = {job: pool.submit(run, job[0], seed_of(*job), n, str(args.space)) for job in jobs}
        values = {job: f.result() for job, f in futures.items()}
    seconds = time.perf_counter() - t0

    rows: dict[str, dict[str, Any]] = {}
    targets = {s: max(values[(BASELINE, s)]) for s in seeds}
    for a in algorithms:
        reach = [trials_to_reach(values[(a, s)], targets[s]) for s in seeds]
        rows[a] = {
            "best_of_n": [max(values[(a, s)]) for s in seeds],
            "trials_to_reach": reach,
            "median": statistics.median(reach),
        }
    summary = {
        "space": str(args.space),
        "n_trials": n,
        "seeds": seeds,
        "mode": "cli" if args.cli else "library",
        "rows": rows,
        "values": {f"{a}/{s}": v for (a, s), v in values.items()},
        "seconds": seconds,
    }
    if args.save:
        args.save.write_text(json.dumps(summary, indent=2))
    if args.json:
        print(json.dumps(summary, indent=2))
        return

    def fmt(k: float) -> str:
        return f">{n}" if k > n else f"{k:g}"

    print(f"space {args.space.name}, N = {n} trials per study, seeds {seeds}, {summary['mode']}")
    print(f"target per seed s = best of {BASELINE}'s {n} trials (seed s + {BASELINE_SEED_OFFSET});"
          f" '>{n}' = never reached within N, counted as N + 1")  # fmt: skip
    print(f"\n{'algorithm':14} {'best of N per seed':44} {'trials to reach target':28} median")
    for a, r in rows.items():
        best = " ".join(f"{b:.4f}" for b in r["best_of_n"])
        reach = " ".join(fmt(k) for k in r["trials_to_reach"])
        print(f"{a:14} {best:44} {reach:28} {fmt(r['median'])}")
    print(f"\n{len(jobs)} studies, {len(jobs) * n} trials in {seconds:.0f} s")
    ratios = ", ".join(f"{a} {fmt(rows[a]['median'])}/{n} = {rows[a]['median'] / n:.2f}"
                       for a in CHALLENGERS)  # fmt: skip
    print(f"ratios (median trials to reach random's best-of-{n}, / N; goal <= 0.50): {ratios}")


if __name__ == "__main__":
    main()
