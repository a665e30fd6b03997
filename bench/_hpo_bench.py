"""What the search benchmarks share: run a real ``hpo run``, measure it, read its trials back."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
        metric="nll",
        top=top,
        size=size,
        storage=runs[0].storage,
        seed=seed,
    )
