"""What checkpoints cost a trial per epoch, and how many epochs resuming saves after a kill.

1. **cost**: a small image_cnn on digits trains epoch by epoch in this process; after each
   epoch the trial's checkpoint (weights with the optimizer's state, history, RNG state) is
   stored in an MLflow run as a trial stores it (``hpo.workers.checkpoints.save``). Prints the
   median epoch, the median checkpoint and their ratio. ``--tracking-uri`` measures against a
   server (default: a SQLite store and local artifacts in a temporary folder).
2. **kill**: one trial of ``--epochs`` epochs on real ``hpo worker`` subprocesses, its worker
   killed with SIGKILL once the trial has reported ``--kill-after`` epochs; a second worker
   retries it. Once with a checkpoint after every epoch (``checkpoint_interval: 0``), once
   without (``budget.checkpoints: false``): prints the epochs each retry trained and the epochs
   resuming saved.

    PYTHONPATH=$PWD .venv/bin/python bench/resume.py --quick
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _hpo_bench import machine

SPACE = """
family: image_cnn
dataset: {name: digits, subset: SUBSET}
objective: {metric: val_accuracy, direction: maximize}
budget: {max_epochs: EPOCHS, checkpoints: CHECKPOINTS, checkpoint_interval: 0}
defaults: {algorithm: optuna-random, pruner: none}
params:
  conv_blocks: 1
  filters: 16
  kernel_size: 3
  dense_units: 32
  learning_rate: 1.0e-3
  batch_size: 32
  x: {type: float, low: 0.0, high: 1.0}
"""


def _space(epochs: int, subset: int, checkpoints: bool) -> str:
    return (
        SPACE.replace("EPOCHS", str(epochs))
        .replace("SUBSET", str(subset))
        .replace("CHECKPOINTS", "true" if checkpoints else "false")
    )


def cost(epochs: int, subset: int, tracking_uri: str | None) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from hpo import tracking
    from hpo.datasets import load_dataset
    from hpo.families import get_family
    from hpo.spaces import Params, parse_spec
    from hpo.workers import checkpoints

    spec = parse_spec(_space(epochs, subset, True), "resume.yaml")
    data = load_dataset(spec.dataset)
    family = get_family(spec.family)
    hp = Params({n.name: getattr(n.param, "value", None) for n in spec.space.nodes()} | {"x": 0.5})
    with tempfile.TemporaryDirectory() as tmp:
        uri = tracking_uri or f"sqlite:///{tmp}/mlflow.db"
        client = tracking.new_client(uri, root=Path(tmp) / "outbox")
        experiment = client.create_experiment(
            f"bench-resume-{os.getpid()}-{time.time_ns()}",
            artifact_location=None if tracking_uri else f"{tmp}/artifacts",
        )
        run_id = client.start_run(experiment, run_name="bench")
        keras.utils.set_random_seed(0)
        model = family.build(hp, data)
        fit_s, save_s, history, seconds = [], [], [], []
        for epoch in range(epochs):
            t0 = time.perf_counter()
            out = model.fit(
                data.train.x,
                data.train.y,
                validation_data=(data.validation.x, data.validation.y),
                batch_size=32,
                epochs=epoch + 1,
                initial_epoch=epoch,
                verbose=0,
            )
            fit_s.append(time.perf_counter() - t0)
            history.append({k: float(v[-1]) for k, v in out.history.items()})
            seconds.append(fit_s[-1])
            save_s.append(checkpoints.save(client, run_id, model, epoch + 1, history, seconds))
        size = sum(
            f.file_size or 0 for f in client.list_artifacts(run_id) if "weights" in f.path
        ) / len(checkpoints.CHECKPOINT_WEIGHTS_FILES)
        client.set_terminated(run_id)
    epoch_med, save_med = statistics.median(fit_s[1:]), statistics.median(save_s[1:])
    print(
        f"cost: {model.count_params():,} parameters, {len(data.train.y)} training images, "
        f"weights file {size / 1024:.0f} KiB, {'server' if tracking_uri else 'SQLite + files'}"
    )
    print(
        f"cost: median epoch {epoch_med * 1000:.0f} ms, median checkpoint {save_med * 1000:.0f} ms"
        f" = {100 * save_med / epoch_med:.1f}% of an epoch (epochs 2-{epochs})"
    )


def _hpo(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "hpo", *args], cwd=cwd, env=env, check=True)


def _retried_epochs(checkpointing: bool, epochs: int, kill_after: int, subset: int) -> int:
    """Epochs the retry of a trial killed after ``kill_after`` epochs trained."""
    import optuna

    from hpo.storage import open_storage

    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        storage = f"sqlite:///{cwd / 'studies.db'}"
        env = {
            **os.environ,
            "HPO_STORAGE": storage,
            "HPO_OUTBOX_DIR": str(cwd / "outbox"),
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        (cwd / "space.yaml").write_text(_space(epochs, subset, checkpointing))
        _hpo(["study", "create", "space.yaml", "--study", "bench", "--trials", "1"], cwd, env)
        worker = ["-m", "hpo", "worker", "--study", "bench", "--threads", "1"]
        worker += ["--heartbeat", "1", "--grace-period", "3"]
        store = open_storage(storage)

        def trials() -> list[optuna.trial.FrozenTrial]:
            return optuna.load_study(study_name="bench", storage=store).get_trials()

        log = open(cwd / "worker.log", "wb")  # noqa: SIM115
        victim = subprocess.Popen(
            [sys.executable, *worker], cwd=cwd, env=env, stdout=log, stderr=log
        )
        while not any(len(t.intermediate_values) >= kill_after for t in trials()):
            if victim.poll() is not None:
                raise SystemExit(
                    "the worker ended before the kill:\n" + (cwd / "worker.log").read_text()
                )
            time.sleep(0.2)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        subprocess.run(
            [sys.executable, *worker], cwd=cwd, env=env, stdout=log, stderr=log, check=True
        )
        [retry] = [t for t in trials() if t.system_attrs.get("failed_trial") is not None]
        return epochs - int(retry.user_attrs.get("resumed_from_epoch", 0))


def kill(epochs: int, kill_after: int, subset: int) -> None:
    trained = {on: _retried_epochs(on, epochs, kill_after, subset) for on in (True, False)}
    print(
        f"kill: a trial of {epochs} epochs killed after epoch {kill_after}: its retry trained "
        f"{trained[True]} epochs resuming, {trained[False]} from epoch 0; "
        f"{trained[False] - trained[True]} epochs saved"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 epochs on 500 digits")
    parser.add_argument("--epochs", type=int, default=None, help="default 10 (quick: 6)")
    parser.add_argument("--subset", type=int, default=None, help="default 1,437 (quick: 500)")
    parser.add_argument("--kill-after", type=int, default=None, help="default: epochs - 2")
    parser.add_argument("--tracking-uri", default=None, help="an MLflow server to measure")
    parser.add_argument("--skip-kill", action="store_true", help="the cost only")
    parser.add_argument("--skip-cost", action="store_true", help="the kill only")
    args = parser.parse_args()
    epochs = args.epochs or (6 if args.quick else 10)
    subset = args.subset or (500 if args.quick else 1437)
    print(machine())
    if not args.skip_cost:
        cost(epochs, subset, args.tracking_uri)
    if not args.skip_kill:
        kill(epochs, args.kill_after or epochs - 2, subset)


if __name__ == "__main__":
    main()
