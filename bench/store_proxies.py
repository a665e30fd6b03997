"""Which component bounds the store's connections: PgBouncer or Optuna's gRPC storage proxy.

The same Optuna trial loop (``ask``, suggest 2 parameters, one intermediate value, ``tell``)
from ``--clients`` threads, each with a storage of its own, against one PostgreSQL cluster of
its own (``initdb``): directly, through PgBouncer in transaction mode (``--pool-size``
server connections), and through Optuna's gRPC proxy (``run_grpc_proxy_server`` in a process of
its own over one RDB storage). Per trial: ms p50/p95 from ask to tell; trials per second;
PostgreSQL client connections at peak; and whether the storage clients get offers Optuna's
heartbeat interface (``BaseHeartbeat``: ``record_heartbeat``, stale trials), which hpo's workers
need for their heartbeats and reaper.

    .venv/bin/python bench/store_proxies.py            # 8 clients, 400 trials each way
    .venv/bin/python bench/store_proxies.py --quick    # 4 clients, 100 trials
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _hpo_bench import machine
from _store_servers import free_port, pgbouncer, scratch_postgres, wait_accepting


def _serve_grpc(url: str, port: int) -> None:
    import optuna
    from optuna.storages import RDBStorage, run_grpc_proxy_server

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = RDBStorage(url, engine_kwargs={"pool_size": 8, "max_overflow": 0})
    run_grpc_proxy_server(storage, host="127.0.0.1", port=port)


def _loop(make_storage: Callable[[], Any], study: str, clients: int, trials: int) -> dict[str, Any]:
    import optuna

    times: list[float] = []
    lock = threading.Lock()
    per_client = trials // clients

    def client() -> None:
        storage = make_storage()
        s = optuna.load_study(study_name=study, storage=storage)
        for _ in range(per_client):
            t0 = time.perf_counter()
            trial = s.ask()
            x = trial.suggest_float("x", -5, 5)
            trial.suggest_int("y", 1, 64, log=True)
            trial.report(x, 1)
            s.tell(trial, -(x**2))
            with lock:
                times.append((time.perf_counter() - t0) * 1000)
        engine = getattr(storage, "engine", None)
        if engine is not None:  # its connections must not count in the next run's peak
            engine.dispose()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = statistics.quantiles(times, n=100, method="inclusive")
    return {"p50": q[49], "p95": q[94], "per_s": len(times) / wall, "n": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 clients, 100 trials")
    parser.add_argument("--clients", type=int, default=None)
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--pool-size", type=int, default=4, help="PgBouncer server connections")
    args = parser.parse_args()
    clients = args.clients or (4 if args.quick else 8)
    trials = args.trials or (100 if args.quick else 400)

    import optuna
    import sqlalchemy as sa
    from optuna.storages import GrpcStorageProxy
    from optuna.storages._heartbeat import BaseHeartbeat

    from hpo.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"machine: {machine()}")
    print(f"{clients} client threads, {trials} trials each way, PgBouncer pool {args.pool_size}")
    print(f"{'store':<28} {'p50 ms':>7} {'p95 ms':>7} {'trials/s':>8} {'peak conn':>9} heartbeats")
    with scratch_postgres(100) as pg:
        admin = sa.create_engine(pg.url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        with admin.connect() as conn:
            conn.execute(sa.text("create database proxies"))
        direct = pg.url.rsplit("/", 1)[0] + "/proxies"
        with pgbouncer(pg.port, args.pool_size) as bouncer:
            # Started for its own run only: its pool must not count in the others' peaks.
            grpc_port = free_port()
            server = mp.get_context("spawn").Process(target=_serve_grpc, args=(direct, grpc_port))
            ways: dict[str, Callable[[], Any]] = {
                "PostgreSQL directly": lambda: open_storage(direct),
                "PgBouncer (transaction)": lambda: open_storage(bouncer.url("proxies")),
                "Optuna gRPC proxy": lambda: GrpcStorageProxy(host="127.0.0.1", port=grpc_port),
            }
            try:
                for label, make in ways.items():
                    name = f"s{len(label)}"
                    creator = open_storage(direct)
                    optuna.create_study(study_name=name, storage=creator)
                    creator.engine.dispose()
                    peak, done = 0, threading.Event()
                    result: dict[str, Any] = {}

                    def run(
                        make: Callable[[], Any] = make,
                        name: str = name,
                        result: dict[str, Any] = result,
                        done: threading.Event = done,
                    ) -> None:
                        try:
                            result.update(_loop(make, name, clients, trials))
                        finally:
                            done.set()

                    worker = threading.Thread(target=run)
                    if "gRPC" in label:
                        server.start()
                        wait_accepting(grpc_port, 120, "the gRPC proxy", Path("/dev/null"))
                    query = sa.text(
                        "select count(*) from pg_stat_activity where datname = 'proxies'"
                    )
                    with admin.connect() as watch:
                        worker.start()
                        while not done.wait(0.1) and worker.is_alive():
                            peak = max(peak, int(watch.execute(query).scalar_one()))
                    worker.join()
                    client = make()
                    beats = isinstance(client, BaseHeartbeat)
                    if hasattr(client, "engine"):
                        client.engine.dispose()
                    print(
                        f"{label:<28} {result['p50']:>7.1f} {result['p95']:>7.1f} "
                        f"{result['per_s']:>8.1f} {peak:>9} {'yes' if beats else 'NO'}",
                        flush=True,
                    )
            finally:
                if server.is_alive():
                    server.terminate()
                    server.join()
        admin.dispose()


if __name__ == "__main__":
    main()
