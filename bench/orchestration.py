"""Orchestration cost per trial: an objective that does no training, through the real worker loop.

A "trial" here is everything ``hpo worker`` does around training, through the real store and
the real :class:`hpo.workers.worker.Worker` loop: candidate studies and their state, the sampler's
proposal (``optuna-random``, so the sampler's own cost does not grow with the study), claiming
within the budget, ``suggest``, heartbeat and worker attribute, the trial process's store writes
(one intermediate value, the ``params_count``/``epochs`` user attributes), ``tell`` and the
"is the study done?" check. Only the trial process is replaced by an in-process stub that
computes a quadratic instead of training (no Keras, no pipe). MLflow is off in that loop; what
one MLflow trial run costs (start + params + end) is measured separately against a file store
and a real ``mlflow server`` over HTTP, so it can be added honestly.

Per-trial time = from the start of the claim to the end of the tell, per worker. Printed: p50 and
p95 over windows of trial numbers (so growth with the study size shows), on SQLite with one
worker and on PostgreSQL with 4 worker processes (a fresh database, dropped afterwards).

    .venv/bin/python bench/orchestration.py            # 1,000 trials per store, MLflow 50 runs
    .venv/bin/python bench/orchestration.py --quick    # 200 trials per store, MLflow 20 runs
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from _hpo_bench import StubTrialProcess, make_study

SPACE = """
family: image_cnn
dataset: {name: digits}
objective: {metric: val_accuracy, direction: maximize}
budget: {max_epochs: 1}
params:
  x: {type: float, low: -5.0, high: 5.0}
  y: {type: int, low: 1, high: 64, log: true}
  kind: {type: categorical, choices: [a, b, c]}
"""
POSTGRES = os.environ.get(
    "HPO_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _objective(p: Any) -> float:
    return -((p["x"] - 1.0) ** 2) - abs(p["y"] - 8) / 64 + (p["kind"] == "b") * 0.1


def run_worker(url: str, study: str, index: int, out: str) -> None:
    """One worker with the no-training trial process; writes ``[[number, ms], ...]`` to ``out``."""
    from hpo.workers.worker import Worker, WorkerOptions

    times: list[tuple[int, float]] = []

    class TimedWorker(Worker):
        t0 = 0.0

        def _claim(self) -> Any:
            self.t0 = time.perf_counter()
            return super()._claim()

        def _run_trial(self, slot: Any, served: Any, trial: Any) -> None:
            super()._run_trial(slot, served, trial)
            times.append((trial.number, (time.perf_counter() - self.t0) * 1000))

    worker = TimedWorker(WorkerOptions(url, study, worker_index=index, poll_interval=0.2))
    for slot in worker.slots:  # one slot: the worker has no --gpus
        slot.process = StubTrialProcess(_objective)  # type: ignore[assignment]
    worker.run()
    Path(out).write_text(json.dumps(times))


def measure_store(
    url: str, n_trials: int, workers: int, tmp: Path, tree: str | None = None
) -> tuple[list[tuple[int, float]], float]:
    """Per-trial ``(number, ms)`` of a fresh study, and the wall time, with hpo from ``tree``.

    Runs in a subprocess so that ``--baseline`` can measure another checkout of hpo.
    """
    name = f"orch-{uuid.uuid4().hex[:6]}"
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = tree
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, __file__, "--measure", url, name, str(n_trials), str(workers), str(tmp)],
        env=env,
        check=True,
    )
    wall = time.perf_counter() - t0
    times: list[tuple[int, float]] = []
    for i in range(workers):
        out = tmp / f"{name}-{i}.json"
        times.extend((int(n), float(ms)) for n, ms in json.loads(out.read_text()))
    return sorted(times), wall


def _measure(url: str, name: str, n_trials: int, workers: int, tmp: Path) -> None:
    store, _ = make_study(url, name, SPACE, n_trials)
    store.engine.dispose()
    outs = [str(tmp / f"{name}-{i}.json") for i in range(workers)]
    if workers == 1:
        run_worker(url, name, 0, outs[0])
        return
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=run_worker, args=(url, name, i, outs[i])) for i in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()


@contextmanager
def fresh_postgres() -> Iterator[str]:
    import sqlalchemy as sa

    engine = sa.create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    name = f"hpo_bench_{uuid.uuid4().hex[:8]}"
    with engine.connect() as conn:
        conn.execute(sa.text(f'create database "{name}"'))
    try:
        yield POSTGRES.rsplit("/", 1)[0] + "/" + name
    finally:
        with engine.connect() as conn:
            conn.execute(sa.text(f'drop database if exists "{name}" with (force)'))
        engine.dispose()


def pct(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def windows(n: int) -> list[tuple[int, int]]:
    """Windows of 100 trial numbers (1-based, inclusive): start, around 100, middle, end."""
    w = [(1, min(100, n))]
    if n >= 300:
        w.append((51, 150))
    if n >= 600:
        w.append((n // 2 - 49, n // 2 + 50))
    w.append((n - 99, n))
    return w


def mlflow_costs(runs: int, tmp: Path) -> dict[str, list[float]]:
    """ms per MLflow trial run (start + params + end), file store and HTTP server."""
    from hpo import tracking

    out: dict[str, list[float]] = {}
    server = None
    port = 0
    try:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        server = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("mlflow")),
                "server",
                "--backend-store-uri",
                f"sqlite:///{tmp / 'mlflow-server.db'}",
                "--serve-artifacts",
                "--artifacts-destination",
                str(tmp / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            cwd=tmp,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        import urllib.request

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with suppress(OSError):
                if (
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status
                    == 200
                ):
                    break
            time.sleep(0.5)
        uris = {
            "file store (sqlite:///mlflow.db)": f"sqlite:///{tmp / 'mlflow.db'}",
            "HTTP mlflow server (1 gunicorn worker, SQLite backend)": f"http://127.0.0.1:{port}",
        }
        params = {"x": 0.5, "y": 8, "kind": "a"}
        for label, uri in uris.items():
            exp, parent = tracking.start_study_run(uri, f"orch-{uuid.uuid4().hex[:6]}", {}, {})
            c = tracking.client(uri)
            times = []
            for i in range(runs + 2):
                t0 = time.perf_counter()
                run_id = tracking.start_trial_run(
                    c, exp, parent, "orch", i, {"hpo.family": "x"}, params
                )
                tracking.log_metrics(c, run_id, {"val_accuracy": 0.5}, 1)
                tracking.end_trial_run(c, run_id, "COMPLETE")
                if i >= 2:  # the first runs pay connection set-up and lazy imports
                    times.append((time.perf_counter() - t0) * 1000)
            out[label] = times
    finally:
        if server is not None:
            with suppress(ProcessLookupError):
                os.killpg(server.pid, 15)
            server.wait(timeout=30)
    return out


def main() -> None:
    if len(sys.argv) == 7 and sys.argv[1] == "--measure":
        url, name, n_trials, workers, tmp = sys.argv[2:]
        _measure(url, name, int(n_trials), int(workers), Path(tmp))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 trials per store, 20 MLflow runs")
    parser.add_argument("--trials", type=int, default=None, help="trials per store (default 1000)")
    parser.add_argument("--workers", type=int, default=4, help="PostgreSQL worker processes")
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="another checkout of hpo (e.g. `git archive main`): measured alternately, same table",
    )
    parser.add_argument("--skip-mlflow", action="store_true", help="no MLflow run timing")
    parser.add_argument("--skip-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args()
    n = args.trials or (200 if args.quick else 1000)
    runs = 20 if args.quick else 50
    trees: dict[str, str | None] = {"this tree": None}
    if args.baseline:
        trees = {"baseline": str(Path(args.baseline).resolve()), "this tree": None}
    results: dict[tuple[str, str], list[tuple[int, float]]] = {}
    walls: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        stores = ["SQLite, 1 worker"]
        if not args.skip_postgres:
            stores.append(f"PostgreSQL, {args.workers} workers")
        for store in stores:
            for tree_label, tree in trees.items():
                key = (store, tree_label)
                if store.startswith("SQLite"):
                    url = f"sqlite:///{tmp / f'orch-{len(results)}.db'}"
                    results[key], walls[key] = measure_store(url, n, 1, tmp, tree)
                else:
                    with fresh_postgres() as url:
                        results[key], walls[key] = measure_store(url, n, args.workers, tmp, tree)
        costs = {} if args.skip_mlflow else mlflow_costs(runs, tmp)

    print(f"Orchestration per trial (ms; no training, MLflow off), {n} trials per store")
    print(f"{'store':<24} {'hpo':<10} {'trials':>9} {'p50':>7} {'p95':>7} {'max':>7}")
    growth: dict[tuple[str, str], float] = {}
    p95_all: dict[tuple[str, str], float] = {}
    p50_all: dict[tuple[str, str], float] = {}
    for (store, tree_label), times in results.items():
        key = (store, tree_label)
        for lo, hi in windows(n):
            ms = [t for num, t in times if lo <= num + 1 <= hi]
            if ms:
                print(
                    f"{store:<24} {tree_label:<10} {f'{lo}-{hi}':>9} {pct(ms, 50):>7.1f} "
                    f"{pct(ms, 95):>7.1f} {max(ms):>7.1f}"
                )
        ms_all = [t for _, t in times]
        p50_all[key], p95_all[key] = pct(ms_all, 50), pct(ms_all, 95)
        print(
            f"{store:<24} {tree_label:<10} {'all':>9} {p50_all[key]:>7.1f} {p95_all[key]:>7.1f} "
            f"{max(ms_all):>7.1f}  ({len(ms_all)} trials in {walls[key]:.1f} s with start-up)"
        )
        lo_first = 51 if n >= 300 else 1  # trials 51-150 ("around trial 100"), else 1-100
        first = [t for num, t in times if lo_first <= num + 1 <= lo_first + 99]
        last = [t for num, t in times if n - 99 <= num + 1 <= n]
        growth[key] = pct(last, 50) / pct(first, 50)
    if costs:
        print(f"\nMLflow trial run (start + params + 1 metric + end), ms, {runs} runs")
        print(f"{'tracking store':<56} {'p50':>7} {'p95':>7}")
        for label, ms in costs.items():
            print(f"{label:<56} {pct(ms, 50):>7.1f} {pct(ms, 95):>7.1f}")
    parts = []
    for store in dict.fromkeys(s for s, _ in results):
        key = (store, "this tree")
        part = (
            f"{store}: p95 {p95_all[key]:.1f} ms (goal <= 50), growth p50 last 100 / p50 "
            f"trials {51 if n >= 300 else 1}-{150 if n >= 300 else 100} {growth[key]:.2f} "
            "(goal < 2)"
        )
        if (store, "baseline") in results:
            part += f", p50 baseline / this tree {p50_all[(store, 'baseline')] / p50_all[key]:.1f}x"
        parts.append(part)
    print("ratios: " + "; ".join(parts))


if __name__ == "__main__":
    main()
