"""What a process pays before it trains: importing hpo's dependencies, with and without .pyc.

Every hpo process (the CLI, each worker, each trial process) imports TensorFlow/Keras, MLflow
and Optuna. Where ``PYTHONDONTWRITEBYTECODE`` is set (CI machines, most Docker images) and the
install wrote no ``.pyc`` files (uv's default), Python compiles those sources again in every
process. ``make setup`` and the Dockerfile install with ``uv pip install --compile-bytecode``.

This script measures both ways in one run, alternating:

- *compiled*: the ``.pyc`` files of the install (``PYTHONDONTWRITEBYTECODE=1``, so nothing is
  written);
- *from source*: the same, with ``PYTHONPYCACHEPREFIX`` pointing at an empty folder, so that
  Python finds no ``.pyc`` and compiles every module it imports, as on an install without them.

It times (1) one process importing what a trial process imports (keras, mlflow, optuna, hpo's
runner) and (2) a whole ``hpo run`` of one tiny trial (dense_bn on 200 digits, 1 epoch: the
CLI, a worker and a trial process, SQLite and a local MLflow store), wall time and the CPU of
every process.

    .venv/bin/python bench/startup.py            # 5 rounds
    .venv/bin/python bench/startup.py --quick    # 2 rounds (about 5 minutes on 2 cores)

With ``--baseline DIR`` (another checkout of hpo, e.g. ``git archive``) it compares instead that
checkout's ``hpo run`` against this tree's, both compiled, alternating per round: one trial with
one worker, four trials with two workers (as ``hpo run --workers 2`` is used on 2 cores), and
twelve trials with one worker (what each further trial costs a warm trial process).

``--store-open`` and ``--tracking-open`` time one step of a study's start each, in fresh
processes, two ways alternating: a waiting worker's first open of the study store (with or
without the store's modules imported while it waited), and the first open of the MLflow store
in a new folder (copied from the empty store hpo keeps in its cache, or built by MLflow's
migrations).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _hpo_bench import machine

REPO = Path(__file__).resolve().parents[1]
IMPORTS = "import keras, mlflow, optuna, hpo.workers.runner"
SPACE = """
family: dense_bn
dataset: {name: digits, subset: 200}
objective: {metric: val_accuracy, direction: maximize}
budget: {max_epochs: 1}
defaults: {algorithm: optuna-random, pruner: none}
params:
  units: {type: int, low: 8, high: 32}
"""


def missing_pyc() -> tuple[int, int]:
    """(modules without an up-to-date-looking .pyc, modules) in this interpreter's site-packages."""
    import importlib.util
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"])
    total = missing = 0
    for top in ("keras", "mlflow", "optuna", "sqlalchemy", "sklearn", "pandas"):
        for source in (site / top).rglob("*.py"):
            total += 1
            if not Path(importlib.util.cache_from_source(str(source))).exists():
                missing += 1
    return missing, total


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall, CPU of the process and all its children) seconds of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{out.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


# A worker of `hpo run` waits for the study to be created before it opens the store. What that
# first open costs it after the wait (CPU seconds, printed), with or without the store's
# modules imported while it waited (hpo.storage.import_store_modules).
STORE_OPEN = """
import sys, time
import hpo.cli, hpo.workers.worker  # what a waiting worker has imported
from hpo.storage import import_store_modules, open_storage
if sys.argv[2] == "imported ahead":
    import_store_modules(sys.argv[1])
start = time.process_time()
open_storage(sys.argv[1])
print(time.process_time() - start)
"""


def alternate(code: str, modes: list[str], rounds: int, env: dict[str, str],
              args: list[str]) -> dict[str, list[float]]:  # fmt: skip
    """``python -c code *args MODE`` in a fresh process per round and mode, alternating which
    mode goes first; the CPU seconds each printed last, by mode."""
    seconds: dict[str, list[float]] = {mode: [] for mode in modes}
    for r in range(rounds):
        for mode in modes if r % 2 == 0 else list(reversed(modes)):
            out = subprocess.run([sys.executable, "-c", code, *args, mode], env=env,
                                 check=True, capture_output=True, text=True)  # fmt: skip
            seconds[mode].append(float(out.stdout.split()[-1]))
    return seconds


def report(what: str, seconds: dict[str, list[float]]) -> None:
    """Median, range and the ratio of the first mode to the second."""
    print(f"machine: {machine()}; {sys.executable}")
    print(f"{what}, median of {len(next(iter(seconds.values())))}:")
    width = max(15, *(len(mode) + 1 for mode in seconds))
    for mode, values in seconds.items():
        low, high = min(values), max(values)
        print(f"  {mode:{width}} {statistics.median(values):.3f}  ({low:.3f}-{high:.3f})")
    (new, new_values), (old, old_values) = list(seconds.items())[:2]
    ratio = statistics.median(new_values) / statistics.median(old_values)
    print(f"ratio: {new} / {old} {ratio:.2f}x")


def store_open(rounds: int, work: Path, base: dict[str, str]) -> None:
    """A waiting worker's first store open, alternating with and without its modules imported
    ahead, each in a fresh process, on a SQLite store created beforehand (as the CLI does)."""
    url = f"sqlite:///{work / 'store.db'}"
    env = dict(base, PYTHONPATH=str(REPO))
    subprocess.run(
        [sys.executable, "-c", STORE_OPEN, url, "-"], env=env, check=True, capture_output=True
    )
    seconds = alternate(STORE_OPEN, ["imported ahead", "not imported"], rounds, env, [url])
    report("a waiting worker's first store open (CPU s, SQLite)", seconds)


# The first study in a new folder opens a tracking store that does not exist yet. What opening
# it costs once MLflow is imported (CPU seconds, printed): hpo's client, which copies the empty
# store kept in its cache, or a plain MlflowClient, which runs MLflow's migrations.
TRACKING_OPEN = """
import sys, tempfile, time
from pathlib import Path
import mlflow, hpo.tracking
folder = Path(tempfile.mkdtemp(dir=sys.argv[1]))
uri = f"sqlite:///{folder / 'mlflow.db'}"
start = time.process_time()
if sys.argv[2] == "copied from the cache":
    hpo.tracking.new_client(uri).search_experiments()
else:
    mlflow.MlflowClient(uri).search_experiments()
print(time.process_time() - start)
"""


def tracking_open(rounds: int, work: Path, base: dict[str, str]) -> None:
    """A new folder's MLflow store, alternating hpo's copy and MLflow's own build."""
    env = dict(base, PYTHONPATH=str(REPO))
    modes = ["copied from the cache", "built by MLflow"]
    alternate(TRACKING_OPEN, modes[:1], 1, env, [str(work)])  # builds the cached store
    seconds = alternate(TRACKING_OPEN, modes, rounds, env, [str(work)])
    report("a new folder's first MLflow store open (CPU s, SQLite)", seconds)


STUDIES = {  # name: hpo run options
    "1 trial, 1 worker": ["--trials", "1", "--workers", "1"],
    "4 trials, 2 workers": ["--trials", "4", "--workers", "2"],
    "12 trials, 1 worker": ["--trials", "12", "--workers", "1"],
}


def compare_trees(baseline: Path, rounds: int, work: Path, base: dict[str, str]) -> None:
    """``hpo run`` of ``baseline`` against this tree's, alternating which goes first."""
    import compileall

    compileall.compile_dir(str(baseline / "hpo"), quiet=1)  # compiled, like this tree's install
    trees = {"baseline": str(baseline), "this tree": str(REPO)}
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for r in range(rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        for study, options in STUDIES.items():
            for tree in order:
                env = dict(base, PYTHONPATH=trees[tree])
                run_dir = work / f"run-{r}-{tree.replace(' ', '-')}-{options[1]}"
                run_dir.mkdir()
                run = timed([sys.executable, "-m", "hpo", "run", str(work / "tiny.yaml"),
                             *options, "--json"], env, run_dir)  # fmt: skip
                results.setdefault((tree, study), []).append(run)
                print(f"round {r + 1}/{rounds} {study:20} {tree:9}: {run[0]:5.1f} s wall / "
                      f"{run[1]:5.1f} s CPU", flush=True)  # fmt: skip
    print(f"\nmachine: {machine()}; {sys.executable}; baseline {baseline}")
    print(f"hpo run of a tiny study (dense_bn, 200 digits, 1 epoch a trial), median of {rounds}:")
    print(f"{'study':20} {'hpo':10} {'wall (s)':>9} {'CPU (s)':>8}")
    parts = []
    for study in STUDIES:
        med = {
            tree: [statistics.median(x[i] for x in results[(tree, study)]) for i in (0, 1)]
            for tree in trees
        }
        for tree in trees:
            print(f"{study:20} {tree:10} {med[tree][0]:9.1f} {med[tree][1]:8.1f}")
        parts.append(
            f"{study}: wall baseline / this tree {med['baseline'][0] / med['this tree'][0]:.2f}x "
            f"({med['baseline'][0] - med['this tree'][0]:+.1f} s), "
            f"CPU {med['baseline'][1] / med['this tree'][1]:.2f}x"
        )
    print("ratios: " + "; ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds instead of 5")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--baseline", type=Path, help="another hpo checkout to compare against")
    parser.add_argument(
        "--store-open",
        action="store_true",
        help="only a waiting worker's first store open, with or without its modules imported",
    )
    parser.add_argument(
        "--tracking-open",
        action="store_true",
        help="only a new folder's first MLflow store open, copied from hpo's cache or built by "
        "MLflow",
    )
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)

    work = Path(tempfile.mkdtemp(prefix="hpo-startup-"))
    (work / "tiny.yaml").write_text(SPACE)
    base = {k: v for k, v in os.environ.items() if k not in ("HPO_STORAGE", "MLFLOW_TRACKING_URI")}
    base.update(PYTHONDONTWRITEBYTECODE="1", TF_CPP_MIN_LOG_LEVEL="2",
                HPO_CACHE_DIR=str(work / "cache"), MLFLOW_DISABLE_TELEMETRY="true")  # fmt: skip
    for flag, measure in ((args.store_open, store_open), (args.tracking_open, tracking_open)):
        if flag:  # one step, so cheap that it gets twice as many rounds by default
            measure(args.rounds or rounds * 2, work, base)
            shutil.rmtree(work, ignore_errors=True)
            return
    if args.baseline:
        compare_trees(args.baseline.resolve(), rounds, work, base)
        shutil.rmtree(work, ignore_errors=True)
        return
    hpo = [sys.executable, "-m", "hpo"]
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for r in range(rounds):
        for mode in ("compiled", "from source"):  # alternating: drift hits both alike
            env = dict(base)
            empty = work / f"pycache-{r}"
            if mode == "from source":
                shutil.rmtree(empty, ignore_errors=True)
                empty.mkdir()
                env["PYTHONPYCACHEPREFIX"] = str(empty)
            imp = timed([sys.executable, "-c", IMPORTS], env, work)
            results.setdefault((mode, "imports"), []).append(imp)
            run_dir = work / f"run-{r}-{mode.replace(' ', '-')}"
            run_dir.mkdir()
            run = timed([*hpo, "run", str(work / "tiny.yaml"), "--trials", "1", "--workers", "1",
                         "--json"], env, run_dir)  # fmt: skip
            results.setdefault((mode, "hpo run"), []).append(run)
            print(f"round {r + 1}/{rounds} {mode:11}: imports {imp[0]:5.1f} s, "
                  f"hpo run {run[0]:5.1f} s wall / {run[1]:5.1f} s CPU", flush=True)  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)

    missing, total = missing_pyc()
    print(f"\nmachine: {machine()}; {sys.executable}")
    print(f"this install: {missing} of {total} modules of keras, mlflow, optuna, sqlalchemy, "
          "sklearn, pandas lack a .pyc")  # fmt: skip
    print(f"median of {rounds} rounds:")
    print(f"{'':12} {'imports (s)':>12} {'hpo run wall (s)':>17} {'hpo run CPU (s)':>16}")

    def med(mode: str, what: str, i: int) -> float:
        return statistics.median(x[i] for x in results[(mode, what)])

    for mode in ("compiled", "from source"):
        print(f"{mode:12} {med(mode, 'imports', 0):12.2f} {med(mode, 'hpo run', 0):17.1f} "
              f"{med(mode, 'hpo run', 1):16.1f}")  # fmt: skip
    ratio = {
        k: med("from source", *k) / med("compiled", *k)
        for k in (("imports", 0), ("hpo run", 0), ("hpo run", 1))
    }
    print(
        f"ratios: from source / compiled: imports {ratio[('imports', 0)]:.2f}x, "
        f"hpo run wall {ratio[('hpo run', 0)]:.2f}x, CPU {ratio[('hpo run', 1)]:.2f}x"
    )


if __name__ == "__main__":
    main()
