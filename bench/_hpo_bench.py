"""What the benchmarks share: make a study for workers; run a real ``hpo run``, measure it, read
its trials back.

Scripts import it as ``from _hpo_bench import ...``: run as ``python bench/<script>.py``, their
own folder is first on ``sys.path``. It imports hpo only inside functions, so that each script
decides where hpo comes from (``PYTHONPATH``, ``orchestration.py --baseline``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def space_path(text: str) -> Path:
    """A space file, or the name of one in ``search_spaces/`` (``dense_bn``); an argparse type."""
    path = Path(text)
    if not path.exists() and (REPO / "search_spaces" / f"{text}.yaml").exists():
        path = REPO / "search_spaces" / f"{text}.yaml"
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no space file {text!r}")
    return path.resolve()


def machine() -> str:
    """nproc, CPU model and load average, for the report."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"nproc {os.cpu_count()}, {model}, load average {load}"


def children_cpu() -> float:
    """User + system seconds of every finished child process this process waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def make_study(
    url: str,
    name: str,
    source: str,
    n_trials: int,
    *,
    filename: str = "bench.yaml",
    seed: int = 0,
    tracking_uri: str | None = None,
    enqueue: Iterable[dict[str, Any]] = (),
) -> tuple[Any, Any]:
    """An active ``optuna-random`` study without pruner at ``url``, ready for ``hpo worker``.

    Args:
        url: The study store.
        name: The study's name.
        source: The search space (YAML text).
        n_trials: The budget.
        filename: The space's file name, as the study records it.
        seed: The study's seed.
        tracking_uri: Where trials log to MLflow: the study's experiment and parent run are
            created there first, as ``hpo study create`` does. None: no MLflow.
        enqueue: Trial parameters the workers take first, in this order.

    Returns:
        ``(store, config)``: the opened store and the study's ``StudyConfig``.
    """
    from hpo.storage import open_storage
    from hpo.storage.studies import StudyConfig, create_study, save_config, set_study_state

    store = open_storage(url)
    config = StudyConfig(
        name=name,
        source=source,
        filename=filename,
        algorithm="optuna-random",
        pruner="none",
        n_trials=n_trials,
        seed=seed,
        tracking_uri=tracking_uri,
    )
    study = create_study(store, config)
    if tracking_uri:
        from hpo import tracking

        config.experiment_id, config.parent_run_id = tracking.start_study_run(
            tracking_uri, name, {}, {}
        )
        save_config(store, study, config)
    for params in enqueue:
        study.enqueue_trial(params)
    # Last: workers take no trial of a study before it is active.
    set_study_state(store, name, "active")
    return store, config


@dataclass
class HpoRun:
    """One finished ``hpo run``: its ``--json`` summary, wall and CPU seconds, trials."""

    name: str
    storage: str
    summary: dict[str, Any]
    wall_seconds: float
    cpu_seconds: float
    trials: list[dict[str, Any]] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        """Epochs trained by every trial of the study (pruned ones included)."""
        return sum(int(t["epochs"] or 0) for t in self.trials)

    @property
    def best_value(self) -> float:
        return float(self.summary["best_values"][0])


def run_hpo(space: Path, name: str, workdir: Path, flags: dict[str, Any]) -> HpoRun:
    """``hpo run SPACE --study NAME --json`` plus ``flags`` in ``workdir``, measured.

    Wall time covers the whole command, process start-up included; CPU time is user + system
    time of the command and every process it waited for (workers and their trial processes),
    from ``getrusage(RUSAGE_CHILDREN)`` before and after (runs here go one at a time).
    """
    import optuna

    cmd = [sys.executable, "-m", "hpo", "run", str(space), "--study", name, "--json"]
    for flag, value in flags.items():
        if value is not None:
            cmd += [f"--{flag}", str(value)]
    print("$ hpo", " ".join(cmd[3:]), flush=True)
    cpu0, t0 = children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    if proc.returncode != 0:
        sys.exit(f"study {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    storage = f"sqlite:///{workdir / 'hpo.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=storage)
    trials = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value if t.values else None,
            "epochs": t.user_attrs.get("epochs"),
        }
        for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    ]
    run = HpoRun(name, storage, json.loads(proc.stdout), wall, cpu, trials)
    s = run.summary
    print(
        f"  {name}: {s['complete']} complete, {s['pruned']} pruned, {s['failed']} failed, "
        f"{run.epochs} epochs, best {s['best_values']}, {wall:.0f} s wall, {cpu:.0f} s CPU",
        flush=True,
    )
    return run


def build(runs: list[HpoRun], label: str, top: int, size: int, seed: int) -> Any:
    """``hpo.ensemble.build_ensemble`` over the studies of ``runs`` (one store)."""
    from hpo.ensemble import build_ensemble

    return build_ensemble(
        [r.name for r in runs],
        label,
        method="caruana",
        metric="auto",  # the product default: accuracy for these accuracy studies
        top=top,
        size=size,
        storage=runs[0].storage,
        seed=seed,
    )


class StubTrialProcess:
    """Stands in for a worker's trial process: sleeps ``seconds``, then writes what a trial
    process writes for one epoch (``params_count``, the epoch's value, ``epochs``), with no
    training. ``objective(params)`` is the trial's value. ``retry`` goes through hpo's retries
    of dropped store connections (absent from older versions: ``orchestration.py --baseline``).
    """

    def __init__(self, objective: Any, seconds: float = 0.0, *, retry: bool = False) -> None:
        self.objective, self.seconds, self.retry = objective, seconds, retry
        self._storages: dict[str, Any] = {}  # its own pool, as a trial process has

    def _storage(self, url: str) -> Any:
        from hpo.storage import open_storage

        if url not in self._storages:
            if self.retry:
                from hpo.storage._retry import with_db_retry

                self._storages[url] = with_db_retry(lambda: open_storage(url))
            else:
                self._storages[url] = open_storage(url)
        return self._storages[url]

    def run(self, task: Any, timeout: float | None = None, **_: Any) -> Any:
        from hpo.workers.runner import TrialResult  # (re-exported; older versions defined it there)

        storage = self._storage(task.storage_url)
        time.sleep(self.seconds)
        value = self.objective(task.params)

        def write() -> None:
            storage.set_trial_user_attr(task.trial_id, "params_count", 1)
            storage.set_trial_intermediate_value(task.trial_id, 1, value)
            storage.set_trial_user_attr(task.trial_id, "epochs", 1)

        if self.retry:
            from hpo.storage._retry import with_db_retry

            with_db_retry(write, what="the trial's writes")
        else:
            write()
        return TrialResult(state="COMPLETE", values=[value])

    def start(self) -> None:
        pass

    def finalize(self, task: Any, timeout: float = 300.0) -> str | None:
        # No warm process here: the worker ends the study's run itself.
        return "no trial process (benchmark stand-in)"

    def close(self, kill: bool = False) -> None:
        for storage in self._storages.values():
            storage.engine.dispose()
        self._storages.clear()
