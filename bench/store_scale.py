"""Many workers on one study store: PostgreSQL directly and through PgBouncer (transaction mode).

The real :class:`hpo.workers.worker.Worker` loop (candidate studies, claim within the budget,
heartbeats, reaper, ``suggest``, the trial's store writes, ``tell``, the "is the study done?"
check) with the trial process replaced by a stub that sleeps ``--trial-seconds`` and writes
what a trial process writes (as ``bench/orchestration.py`` does). Each worker has its own
store connection pools, for itself and for its stub trial process, as a real worker and its
trial process do; workers run as threads, ``--threads-per-process`` to a process (200 worker
processes with Optuna imported would not fit in this machine's memory), which changes neither
their connections nor their store traffic.

The store is a PostgreSQL cluster of its own (``initdb``, ``max_connections`` 100 as
PostgreSQL's default, ``--max-connections``), so the shared test server is never loaded.
Through the pooler, PgBouncer holds at most ``--pool-size`` server connections.

Per run: peak PostgreSQL client connections (``pg_stat_activity``, polled every 0.1 s),
claim and tell p50/p95 (ms, per trial: ``Worker._claim`` and ``Worker._record``), trials per
second (budget / wall time from the first claim to the last worker's exit), workers that
died (e.g. "too many clients"), whether the study holds exactly its budget of COMPLETE
trials, duplicates (a trial told twice, or two trials numbered alike), and PostgreSQL
transactions per trial (``pg_stat_database``: the store's work per trial, whatever the machine).

    .venv/bin/python bench/store_scale.py                # 10, 50, 100, 200 workers
    .venv/bin/python bench/store_scale.py --quick        # 10 and 50 workers, smaller budgets
    .venv/bin/python bench/store_scale.py --workers 30 --max-connections 20 --pool-size 10 \\
        --modes pgbouncer --json                         # the CI check (tests/test_bench.py)
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _hpo_bench import StubTrialProcess, machine, make_study
from _store_servers import pgbouncer, scratch_postgres

SPACE = """
family: image_cnn
dataset: {name: digits}
objective: {metric: val_accuracy, direction: maximize}
budget: {max_epochs: 1}
params:
  x: {type: float, low: -5.0, high: 5.0}
  y: {type: int, low: 1, high: 64, log: true}
"""
DATABASE = "hpo_scale"


def _objective(p: Any) -> float:
    return -((p["x"] - 1.0) ** 2)


@dataclass
class ProcessResult:
    """What the workers of one process measured."""

    claims_ms: list[float] = field(default_factory=list)
    tells_ms: list[float] = field(default_factory=list)
    told: list[int] = field(default_factory=list)  # trial ids told by this process's workers
    first_claim: float | None = None  # time.time()
    errors: list[str] = field(default_factory=list)  # one line per worker that died
    retries: int = 0  # store calls retried after a dropped connection or refused login


class _CountRetries(logging.Handler):
    def __init__(self, result: ProcessResult) -> None:
        super().__init__(logging.WARNING)
        self.result = result

    def emit(self, record: logging.LogRecord) -> None:
        self.result.retries += 1


def _worker_process(
    url: str,
    study: str,
    first_index: int,
    n: int,
    trial_seconds: float,
    ready: Any,
    start: Any,
    out: str,
) -> None:
    """``n`` workers as threads of this process; writes a :class:`ProcessResult` to ``out``."""
    from hpo.workers.worker import Worker, WorkerOptions

    result = ProcessResult()
    lock = threading.Lock()
    logging.getLogger("hpo.retry").addHandler(_CountRetries(result))
    logging.getLogger("hpo.retry").propagate = False

    class TimedWorker(Worker):
        def _claim(self) -> Any:
            t0 = time.perf_counter()
            claimed = super()._claim()
            if claimed is not None:
                with lock:
                    result.claims_ms.append((time.perf_counter() - t0) * 1000)
                    if result.first_claim is None:
                        result.first_claim = time.time()
            return claimed

        def _record(self, served: Any, trial: Any, outcome: Any) -> None:
            t0 = time.perf_counter()
            super()._record(served, trial, outcome)
            with lock:
                result.tells_ms.append((time.perf_counter() - t0) * 1000)
                result.told.append(trial._trial_id)

    def one(index: int) -> None:
        try:
            worker = TimedWorker(WorkerOptions(url, study, worker_index=index, poll_interval=0.5))
            for slot in worker.slots:
                slot.process = StubTrialProcess(_objective, trial_seconds, retry=True)  # type: ignore[assignment]
            worker.run()
        except Exception as exc:
            with lock:
                result.errors.append(f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")

    with ready.get_lock():
        ready.value += 1
    start.wait()
    threads = [threading.Thread(target=one, args=(first_index + i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    Path(out).write_text(json.dumps(asdict(result)))


def _client_connections(conn: Any) -> int:
    """Client connections of the server other than ``conn`` (held open: at the server's
    limit a new one would be refused)."""
    import sqlalchemy as sa

    query = sa.text(
        "select count(*) from pg_stat_activity "
        "where backend_type = 'client backend' and pid <> pg_backend_pid()"
    )
    return int(conn.execute(query).scalar_one())


def _transactions(admin: Any) -> int:
    """Transactions the study store's database has run, once no client holds it open (a
    backend reports its counts when it exits)."""
    import sqlalchemy as sa

    with admin.connect() as conn:
        while conn.execute(
            sa.text("select count(*) from pg_stat_activity where datname = :d"), {"d": DATABASE}
        ).scalar_one():
            time.sleep(0.1)
        query = "select xact_commit + xact_rollback from pg_stat_database where datname = :d"
        return int(conn.execute(sa.text(query), {"d": DATABASE}).scalar_one())


def pct(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def run_once(
    mode: str,
    workers: int,
    budget: int,
    args: argparse.Namespace,
    tmp: Path,
) -> dict[str, Any]:
    """One study of ``budget`` trials by ``workers`` workers; the figures of the run."""
    import sqlalchemy as sa

    from hpo.storage import open_storage
    from hpo.storage.studies import counted_trials

    with scratch_postgres(args.max_connections) as pg:
        admin = sa.create_engine(pg.url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        with admin.connect() as conn:
            conn.execute(sa.text(f"create database {DATABASE}"))
        direct = pg.url.rsplit("/", 1)[0] + f"/{DATABASE}"
        make_study(direct, "scale", SPACE, budget)[0].engine.dispose()
        xacts_before = _transactions(admin)
        with pgbouncer(pg.port, args.pool_size) as bouncer:
            url = direct if mode == "direct" else bouncer.url(DATABASE)
            ctx = mp.get_context("spawn")
            ready, start = ctx.Value("i", 0), ctx.Event()
            per = args.threads_per_process
            procs, outs = [], []
            for first in range(0, workers, per):
                out = tmp / f"{mode}-{workers}-{first}.json"
                n = min(per, workers - first)
                procs.append(
                    ctx.Process(
                        target=_worker_process,
                        args=(url, "scale", first, n, args.trial_seconds, ready, start, str(out)),
                    )
                )
                outs.append(out)
            for p in procs:
                p.start()
            # Every process has imported hpo: the workers start together.
            while ready.value < len(procs) and all(p.is_alive() for p in procs):
                time.sleep(0.1)
            peak = 0
            with admin.connect() as watch:
                start.set()
                while any(p.is_alive() for p in procs):
                    peak = max(peak, _client_connections(watch))
                    time.sleep(0.1)
            ended = time.time()
            for p in procs:
                p.join()
        xacts = _transactions(admin) - xacts_before
        results = [ProcessResult(**json.loads(o.read_text())) for o in outs if o.exists()]
        store = open_storage(direct)
        import optuna

        trials = optuna.load_study(study_name="scale", storage=store).get_trials()
        store.engine.dispose()
        admin.dispose()
    claims = [ms for r in results for ms in r.claims_ms]
    tells = [ms for r in results for ms in r.tells_ms]
    told = [t for r in results for t in r.told]
    firsts = [r.first_claim for r in results if r.first_claim is not None]
    wall = ended - min(firsts) if firsts else float("nan")
    counted = counted_trials(trials)
    complete = [t for t in counted if t.state.name == "COMPLETE"]
    errors = [e for r in results for e in r.errors]
    return {
        "mode": mode,
        "workers": workers,
        "budget": budget,
        "peak_connections": peak,
        "claim_p50_ms": pct(claims, 50),
        "claim_p95_ms": pct(claims, 95),
        "tell_p50_ms": pct(tells, 50),
        "tell_p95_ms": pct(tells, 95),
        "trials_per_s": len(complete) / wall if wall == wall and wall > 0 else 0.0,
        "wall_s": wall,
        "complete": len(complete),
        "exact_budget": len(counted) == budget and len(complete) == budget,
        "duplicates": (len(told) - len(set(told)))
        + (len(counted) - len({t.number for t in counted})),
        "dead_workers": len(errors),
        "first_error": errors[0] if errors else None,
        "transactions_per_trial": xacts / len(complete) if complete else 0.0,
        "retries": sum(r.retries for r in results),
        "processes": len(procs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 and 50 workers, budget 2/worker")
    parser.add_argument("--workers", default=None, help="comma-separated (default 10,50,100,200)")
    parser.add_argument("--trials-per-worker", type=int, default=None, help="budget (default 4)")
    parser.add_argument("--trial-seconds", type=float, default=0.5, help="stub trial duration")
    parser.add_argument("--modes", default="direct,pgbouncer", help="direct and/or pgbouncer")
    parser.add_argument("--max-connections", type=int, default=100, help="PostgreSQL's setting")
    parser.add_argument("--pool-size", type=int, default=20, help="PgBouncer server connections")
    parser.add_argument("--threads-per-process", type=int, default=25, help="workers a process")
    parser.add_argument("--json", action="store_true", help="one JSON object per run, no table")
    args = parser.parse_args()
    default_sizes = "10,50" if args.quick else "10,50,100,200"
    sizes = [int(w) for w in (args.workers or default_sizes).split(",")]
    per_worker = args.trials_per_worker or (2 if args.quick else 4)
    modes = [m.strip() for m in args.modes.split(",")]
    if not args.json:
        print(f"machine: {machine()}", flush=True)
        print(
            f"PostgreSQL max_connections {args.max_connections}, PgBouncer pool {args.pool_size}, "
            f"stub trials {args.trial_seconds} s, budget {per_worker} trials per worker",
            flush=True,
        )
        print(
            f"{'store':<10} {'workers':>7} {'peak conn':>9} {'claim p50':>9} {'p95':>7} "
            f"{'tell p50':>8} {'p95':>7} {'trials/s':>8} {'xact/trial':>10} {'exact':>5} "
            f"{'dup':>3} {'dead':>4}",
            flush=True,
        )
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        for workers in sizes:
            for mode in modes:
                row = run_once(mode, workers, per_worker * workers, args, Path(tmp_name))
                rows.append(row)
                if args.json:
                    print(json.dumps(row), flush=True)
                    continue
                print(
                    f"{mode:<10} {workers:>7} {row['peak_connections']:>9} "
                    f"{row['claim_p50_ms']:>9.1f} {row['claim_p95_ms']:>7.1f} "
                    f"{row['tell_p50_ms']:>8.1f} {row['tell_p95_ms']:>7.1f} "
                    f"{row['trials_per_s']:>8.1f} {row['transactions_per_trial']:>10.1f} "
                    f"{'yes' if row['exact_budget'] else 'NO':>5} "
                    f"{row['duplicates']:>3} {row['dead_workers']:>4}",
                    flush=True,
                )
                if row["first_error"]:
                    print(f"  first error: {row['first_error']}", flush=True)
    if any(r["duplicates"] for r in rows):
        sys.exit("duplicates found")


if __name__ == "__main__":
    main()
