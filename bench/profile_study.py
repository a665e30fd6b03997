"""Where the CPU of a study of short trials goes: every process of ``hpo run`` under cProfile.

Runs ``hpo run SPACE --json`` on a small study with every Python process it starts (the CLI,
its workers, their trial processes) profiled on CPU time (``time.process_time``: the process's
user + system seconds, all its threads, charged to the Python function that was running). A
``sitecustomize.py`` in a temporary folder put first on ``PYTHONPATH`` starts the profiler in
each process and writes its statistics when the process ends (``os._exit`` included, which a
trial process uses). hpo itself is not changed.

Prints, per kind of process, its profiled CPU seconds and the functions with the largest
cumulative share, then the shares of hpo's own costs across all processes (imports, MLflow,
model saving, plots, store calls, training). The profiler's own overhead inflates Python-heavy
parts (imports) more than TensorFlow's kernels: compare shares between runs, not seconds
against unprofiled runs.

``--baseline REV`` measures a change: the same study (space file, options, seed) runs with the
hpo of git revision REV, checked out in a temporary ``git worktree`` removed afterwards, and
with this checkout's, ``--rounds`` times each in alternating order, every run in a fresh work
folder and without the profiler. Prints each run's CPU seconds by process kind, then their
means and the ratio current/baseline per kind, in total and for wall time (with the range over
rounds: the noise to judge a ratio by).

    .venv/bin/python bench/profile_study.py                       # dense_bn_digits, 6 trials
    .venv/bin/python bench/profile_study.py --space image_cnn_digits --trials 4 --top 40
    .venv/bin/python bench/profile_study.py --baseline main --rounds 2 --cpu-only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _hpo_bench import space_path

REPO = Path(__file__).resolve().parents[1]

SITECUSTOMIZE = """
import atexit, cProfile, json, os, resource, sys, time
_out = os.environ.get("HPO_PROFILE_DIR")
if _out:
    _prof = None if os.environ.get("HPO_PROFILE_CPU_ONLY") else cProfile.Profile(time.process_time)
    _done = []
    def _dump():
        if _done:
            return
        _done.append(1)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        name = os.path.join(_out, str(os.getpid()))
        # orig_argv: the interpreter's own command line (a spawned child's is "python -c ...";
        # its sys.argv becomes its parent's).
        cpu = usage.ru_utime + usage.ru_stime
        info = {"argv0": sys.orig_argv[1:], "argv": sys.argv, "cpu": cpu}
        with open(name + ".cpu", "w") as f:
            json.dump(info, f)
        if _prof is not None:
            _prof.disable()
            _prof.dump_stats(name + ".prof")
    _exit = os._exit
    def _exit_dumping(code):
        _dump()
        _exit(code)
    os._exit = _exit_dumping
    atexit.register(_dump)
    if _prof is not None:
        _prof.enable()
"""

# Where the CPU goes, by the functions that hold it (cumulative time; a function nested in
# another of the list is counted in both, so the shares do not add up to 100%). A pattern ending
# in ":" is a whole file: the time spent inside it when called from outside it.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "trial process imports (warm_up)": ("hpo/workers/runner.py:warm_up",),
    "training (keras fit)": ("keras/src/backend/tensorflow/trainer.py:fit",),
    "  of which tf.function tracing": (
        "polymorphic_function/tracing_compilation.py:trace_function",
    ),
    "storing a trial (_record)": ("hpo/workers/runner.py:_record",),
    "  validation predictions": ("hpo/families/_base.py:predict",),
    "  model file (.keras)": (
        "hpo/families/_base.py:saved_model",
        "keras/src/saving/saving_api.py:save_model",
    ),
    "  learning-curve plot": ("hpo/workers/_trial_files.py:learning_curve_png",),
    "checkpoints": ("hpo/workers/checkpoints.py:save",),
    "epoch reports (store, MLflow)": ("hpo/workers/runner.py:report",),
    "study end (plots, summary)": ("hpo/tracking/study_report.py:finalize_study",),
    "MLflow client set-up": ("hpo/tracking/__init__.py:new_client",),
    "MLflow calls (all)": ("mlflow/tracking/client.py:",),
    "dataset check in hpo run": ("hpo/workers/preflight.py:check_study_data",),
    "store calls (Optuna RDB storage)": ("optuna/storages/_rdb/storage.py:",),
}


def _key(func: tuple[str, int, str]) -> str:
    filename, _, name = func
    return f"{filename}:{name}"


def category_seconds(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative CPU seconds of each of :data:`CATEGORIES` in ``stats``."""
    out: dict[str, float] = {}
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for label, patterns in CATEGORIES.items():
        total = 0.0
        for pattern in patterns:
            whole_file = pattern.endswith(":")
            for func, (_, _, _, cum, callers) in raw.items():
                key = _key(func)
                if whole_file and pattern in key:
                    # Only the calls from outside that file: its outermost calls.
                    total += sum(c[3] for f, c in callers.items() if pattern not in _key(f))
                elif not whole_file and key.endswith(pattern):
                    total += cum
        out[label] = total
    return out


def process_kind(argv0: list[str], argv: list[str]) -> str:
    """What a process of ``hpo run`` was, from its command line at start and at exit."""
    if "--multiprocessing-fork" in argv0:
        # A spawned child takes its parent's sys.argv: a worker's is its trial process.
        return "trial process" if "worker" in argv else "helper"
    if "-c" in argv0:
        return "helper"  # multiprocessing's resource tracker
    return "worker" if "worker" in argv else "cli (hpo run)"


def run_study(
    args: argparse.Namespace, space: Path, code: Path, workdir: Path, cpu_only: bool
) -> tuple[dict[str, Any], float, dict[str, float], dict[str, list[Path]]]:
    """Run the study with the hpo of ``code`` in ``workdir``: its summary, wall seconds, CPU
    seconds by process kind and the profiles by process kind (none when ``cpu_only``)."""
    site, profiles = workdir / "site", workdir / "profiles"
    workdir.mkdir(parents=True, exist_ok=True)
    site.mkdir(exist_ok=True)
    profiles.mkdir(exist_ok=True)
    for old in [*profiles.glob("*.prof"), *profiles.glob("*.cpu")]:
        old.unlink()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = dict(
        os.environ,
        HPO_PROFILE_DIR=str(profiles),
        PYTHONPATH=os.pathsep.join([str(site), str(code)]),
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    env.pop("HPO_PROFILE_CPU_ONLY", None)
    if cpu_only:
        env["HPO_PROFILE_CPU_ONLY"] = "1"
    # One name for every run in a fresh folder: Optuna's Hyperband puts a trial in a bracket by
    # a hash of the study's name, so runs under different names prune different trials.
    name = f"profile_{int(time.time())}" if (workdir / "hpo.db").exists() else "profile"
    cmd = [sys.executable, "-m", "hpo", *_hpo_args(args, space), "--study", name]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"hpo run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    roles: dict[str, list[Path]] = {}
    cpu: dict[str, float] = {}
    for path in sorted(profiles.glob("*.cpu")):
        info = json.loads(path.read_text())
        role = process_kind(info["argv0"], info["argv"])
        cpu[role] = cpu.get(role, 0.0) + info["cpu"]
        if path.with_suffix(".prof").exists():
            roles.setdefault(role, []).append(path.with_suffix(".prof"))
    return json.loads(proc.stdout), wall, cpu, roles


def trial_seconds(workdir: Path) -> dict[str, float]:
    """What the study's trials recorded (wall seconds, summed over trials): their training
    (``train_seconds``) and their checkpoints (``checkpoint_seconds``), from its SQLite store."""
    import sqlite3

    keys = ("train_seconds", "checkpoint_seconds")
    with contextlib.closing(sqlite3.connect(workdir / "hpo.db")) as db:
        rows = db.execute(
            "SELECT key, value_json FROM trial_user_attributes WHERE key IN (?, ?)", keys
        ).fetchall()
    return {k: sum(float(json.loads(v)) for key, v in rows if key == k) for k in keys}


def _counts(summary: dict[str, Any]) -> str:
    return f"{summary['complete']} complete, {summary['pruned']} pruned, {summary['failed']} failed"


def compare(args: argparse.Namespace, space: Path, workdir: Path) -> None:
    """The same study with the hpo of ``args.baseline`` (a temporary git worktree) and with
    this checkout's, alternating which goes first over ``args.rounds`` rounds, each run in a
    fresh work folder and without the profiler: CPU seconds by process kind and their ratio."""
    rev = subprocess.run(
        ["git", "rev-parse", "--short", args.baseline],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if rev.returncode != 0:
        sys.exit(f"--baseline: no revision {args.baseline!r}: {rev.stderr.strip()}")
    base_tree = Path(tempfile.mkdtemp(prefix="hpo-baseline-")) / "tree"
    subprocess.run(
        ["git", "worktree", "add", "--detach", "--quiet", str(base_tree), args.baseline],
        cwd=REPO,
        check=True,
    )
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()
    codes = {"baseline": base_tree, "current": REPO}
    for code in codes.values():
        # Bytecode first: the fresh worktree has none, and compiling it would count in its
        # first run only.
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(code / "hpo")], check=True)
    print(
        f"baseline {rev.stdout.strip()} (worktree {base_tree}); current {head}"
        f"{' with uncommitted changes' if dirty else ''} ({REPO})"
    )
    print("$ hpo", " ".join(_hpo_args(args, space)), flush=True)
    runs: dict[str, list[tuple[float, dict[str, float]]]] = {"baseline": [], "current": []}
    recorded: dict[str, list[dict[str, float]]] = {"baseline": [], "current": []}
    try:
        for round_ in range(args.rounds):
            order = ["baseline", "current"] if round_ % 2 == 0 else ["current", "baseline"]
            for label in order:
                folder = workdir / f"round{round_ + 1}-{label}"
                summary, wall, cpu, _ = run_study(args, space, codes[label], folder, True)
                runs[label].append((wall, cpu))
                recorded[label].append(trial_seconds(folder))
                kinds = ", ".join(f"{k} {v:.1f}" for k, v in sorted(cpu.items()))
                print(
                    f"round {round_ + 1} {label:8}: {_counts(summary)}; CPU s {kinds}; "
                    f"total {sum(cpu.values()):.1f}; wall {wall:.1f} s; trials recorded "
                    f"train {recorded[label][-1]['train_seconds']:.1f} s, checkpoints "
                    f"{recorded[label][-1]['checkpoint_seconds']:.2f} s",
                    flush=True,
                )
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(base_tree)], cwd=REPO, check=False
        )
        shutil.rmtree(base_tree.parent, ignore_errors=True)
    kinds = sorted({k for label in runs for _, cpu in runs[label] for k in cpu})
    n = args.rounds
    print(
        f"\nmean of {n} round(s): CPU seconds (getrusage at exit, no profiler), then wall "
        "seconds: the study's, and what its trials recorded"
    )
    print(f"   {'':16} {'baseline':>9} {'current':>9} {'current/baseline':>17}")
    rows = [
        (
            k,
            [cpu.get(k, 0.0) for _, cpu in runs["baseline"]],
            [cpu.get(k, 0.0) for _, cpu in runs["current"]],
        )
        for k in kinds
    ]
    rows.append(
        (
            "total CPU",
            [sum(c.values()) for _, c in runs["baseline"]],
            [sum(c.values()) for _, c in runs["current"]],
        )
    )
    rows.append(("wall", [w for w, _ in runs["baseline"]], [w for w, _ in runs["current"]]))
    for key, label in (
        ("train_seconds", "trials' training"),
        ("checkpoint_seconds", "  checkpoints"),
    ):
        rows.append(
            (label, [r[key] for r in recorded["baseline"]], [r[key] for r in recorded["current"]])
        )
    for kind, base, cur in rows:
        b, c = sum(base) / n, sum(cur) / n
        ratio = f"{c / b:17.2f}" if b > 0 else f"{'-':>17}"
        spread = ""
        if n > 1:
            spread = f"   (baseline {min(base):.1f}-{max(base):.1f}, "
            spread += f"current {min(cur):.1f}-{max(cur):.1f})"
        print(f"   {kind:16} {b:9.1f} {c:9.1f} {ratio}{spread}")


def _hpo_args(args: argparse.Namespace, space: Path) -> list[str]:
    cmd = ["run", str(space), "--json", "--trials", str(args.trials)]
    cmd += ["--workers", str(args.workers), "--algorithm", args.algorithm]
    cmd += ["--pruner", args.pruner, "--seed", "0"]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    if args.subset:
        cmd += ["--subset", str(args.subset)]
    return cmd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--space", type=space_path, default="dense_bn_digits", help="space name or file"
    )
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--epochs", type=int, help="max epochs a trial (the space's)")
    parser.add_argument("--subset", type=int, help="training examples (the space's)")
    parser.add_argument(
        "--cpu-only", action="store_true", help="no profiler: each process's CPU seconds only"
    )
    parser.add_argument("--algorithm", default="optuna-tpe")
    parser.add_argument("--pruner", default="none")
    parser.add_argument("--top", type=int, default=25, help="functions listed per process kind")
    parser.add_argument("--workdir", type=Path, help="keep the study and profiles here")
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run the study with the hpo of git revision REV (a temporary worktree) and "
        "print CPU seconds by process kind, baseline against current (no profiler)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="with --baseline: runs of each, order alternating"
    )
    args = parser.parse_args()
    space = args.space
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hpo-profile-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.baseline:
        compare(args, space.resolve(), workdir)
        return
    print("$ hpo", " ".join(_hpo_args(args, space)), flush=True)
    summary, wall, cpu, roles = run_study(args, space, REPO, workdir, args.cpu_only)
    profiles = workdir / "profiles"
    print(f"{_counts(summary)}; {wall:.1f} s wall; profiles in {profiles}")
    print("CPU seconds by process kind (getrusage at exit; profiler included unless --cpu-only):")
    for role, secs in cpu.items():
        print(f"   {role:16} {secs:7.1f} s {secs / sum(cpu.values()):6.1%}")
    grand: dict[str, float] = {}
    grand_total = 0.0
    for role, paths in roles.items():
        stats = pstats.Stats(*(str(p) for p in paths))
        total: float = stats.total_tt  # type: ignore[attr-defined]
        grand_total += total
        print(f"\n== {role}: {len(paths)} process(es), {total:.1f} CPU s profiled")
        for label, secs in category_seconds(stats).items():
            grand[label] = grand.get(label, 0.0) + secs
            if secs >= 0.05:
                print(f"   {label:32} {secs:7.2f} s {secs / total:6.1%}")
        stats.sort_stats("cumulative")
        rows = sorted(
            stats.stats.items(),  # type: ignore[attr-defined]
            key=lambda kv: kv[1][3],
            reverse=True,
        )
        print(f"   top {args.top} by cumulative CPU:")
        for func, (_, _, tt, ct, _) in rows[: args.top]:
            key = _key(func).replace(str(REPO) + "/", "")
            key = key.split("site-packages/")[-1]
            print(f"   {ct:7.2f} s {ct / total:6.1%} (self {tt:6.2f} s)  {key}:{func[1]}")
    if roles:
        print(f"\n== all processes: {grand_total:.1f} CPU s profiled")
        for label, secs in grand.items():
            print(f"   {label:32} {secs:7.2f} s {secs / grand_total:6.1%}")


if __name__ == "__main__":
    main()
