"""``hpo run``, ``hpo worker`` and ``hpo ui``."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.text import Text

from hpo.cli._common import (
    EXIT_OK,
    EXIT_RUNTIME,
    AlgorithmOption,
    DatasetOption,
    EpochsOption,
    StorageOption,
    StudyNameOption,
    StudyTimeoutGraceOption,
    StudyTimeoutOption,
    SubsetOption,
    TrialsOption,
    TrialTimeoutOption,
    console,
    create_study,
    fail,
    handled_errors,
    print_table,
    study_options,
    tracking_uri_option,
)

if TYPE_CHECKING:
    from hpo.api import Study

DEFAULT_SPACE = Path("search_spaces/image_cnn.yaml")


def run(
    ctx: typer.Context,
    space: Path = typer.Argument(DEFAULT_SPACE, help="Search-space file."),
    trials: TrialsOption = None,
    workers: int | None = typer.Option(None, "--workers", min=1, help="Local worker processes."),
    algorithm: AlgorithmOption = None,
    pruner: str | None = typer.Option(None, "--pruner", help="none, median, sha, hyperband."),
    storage: StorageOption = None,
    tracking_uri: Annotated[
        str | None, tracking_uri_option("MLflow tracking URI (default: mlflow.db here).")
    ] = None,
    name: StudyNameOption = None,
    dataset: DatasetOption = None,
    epochs: EpochsOption = None,
    subset: SubsetOption = None,
    trial_timeout: TrialTimeoutOption = None,
    study_timeout: StudyTimeoutOption = None,
    study_timeout_grace: StudyTimeoutGraceOption = None,
    seed: int | None = typer.Option(None, "--seed", help="Seed (one worker: reproducible)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an existing study."),
    skip_data_check: bool = typer.Option(
        False, "--skip-data-check", help="Do not load and check the dataset before the workers."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the final summary as JSON."),
    gpus: str | None = typer.Option(
        None, "--gpus", help="GPUs for every worker's trials, e.g. 0,1 (see hpo worker)."
    ),
    trials_per_gpu: int = typer.Option(
        1, "--trials-per-gpu", min=1, help="Concurrent trials per GPU and worker."
    ),
    backend: str | None = typer.Option(
        None, "--backend", help="Keras backend of the trials (default: $KERAS_BACKEND)."
    ),
) -> None:
    """Create (or resume) a study and run it with local worker processes."""
    from hpo.api import LocalWorkers, WorkersFailedError
    from hpo.cli._quiet import quiet_native_stderr
    from hpo.workers.slots import SlotError

    try:
        launch = LocalWorkers(
            storage, workers, gpus=gpus, trials_per_gpu=trials_per_gpu, backend=backend
        )
    except SlotError as exc:
        fail(str(exc), exc.exit_code)
    try:
        # Checking a space may import Keras here (a family's own checks), whose native notices
        # would print around a one-line error; the workers log to their files, not to this.
        with quiet_native_stderr(), handled_errors():
            study = create_study(
                space, study_options(ctx.params), on_valid=launch.start, name_option="--study"
            )
    except BaseException:
        launch.cancel()
        raise
    if not json_out:
        config = study.config
        verb = "created" if study.created else "resuming"
        console.print(
            f"{verb} study [bold]{escape(config.name)}[/]: {config.n_trials} trials, "
            f"{escape(config.algorithm)}, pruner {escape(config.pruner)}, "
            f"{len(launch.procs)} worker(s)"
        )
    try:
        st = study.run(local_workers=launch, progress=not json_out, console=console)
        ok = True
    except WorkersFailedError:
        ok, st = False, study.status()
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    _summary(study, st, launch.logs, json_out)
    raise typer.Exit(EXIT_OK if ok and st.done else EXIT_RUNTIME)


def _summary(study: Study, st: Any, logs: list[Path], json_out: bool) -> None:
    from rich.table import Table

    from hpo.cli._common import format_time, print_json
    from hpo.storage import mask_url
    from hpo.storage.deadlines import DEADLINE_REASON
    from hpo.storage.feasibility import FEASIBLE_ATTR

    config = study.config
    trials = study.trials
    page = study.mlflow_page
    if json_out:
        print_json(
            st.to_dict()
            | {
                "tracking_uri": mask_url(config.tracking_uri or ""),
                "experiment_id": config.experiment_id,
                "parent_run_id": config.parent_run_id,
                "mlflow_page": page,
                "logs": [str(p) for p in logs],
            }
        )
        return
    sign = -1.0 if st.directions[0] == "maximize" else 1.0
    # Trials that broke a constraint after the feasible ones: they are never the best.
    ranked = sorted(
        trials,
        key=lambda t: (
            t.values is None,
            t.user_attrs.get(FEASIBLE_ATTR) is False,
            sign * (t.values or [0.0])[0],
        ),
    )
    table = Table(
        "trial",
        "state",
        *[escape(m) for m in config.spec().metrics],
        "epochs",
        "params",
        "note",
        title=escape(f"{config.name}: best trials"),
    )
    for t in ranked[:8]:
        values = [f"{v:.4f}" for v in t.values] if t.values else ["-"] * len(st.directions)
        table.add_row(
            str(t.number),
            t.state,
            *values,
            str(t.user_attrs.get("epochs", "")),
            str(t.user_attrs.get("params_count", "")),
            Text(
                str(
                    t.user_attrs.get("fail_reason")
                    or t.user_attrs.get("stop_reason")
                    or _infeasible(t)
                )[:60]
            ),
        )
    print_table(table)
    console.print(
        f"finished {st.finished}/{st.n_trials}: {st.complete} complete, {st.pruned} pruned, "
        f"{st.failed} failed"
        + (f", {st.infeasible} infeasible (not best)" if st.infeasible else "")
        + "\n"
        f"MLflow: experiment [bold]{escape(config.name)}[/] in "
        f"{escape(mask_url(config.tracking_uri or ''))}"
        + ("" if page else " (browse it with [bold]hpo ui[/])")
        + f"\nworker logs: {escape(', '.join(str(p) for p in logs))}"
    )
    if st.end_reason == DEADLINE_REASON and st.deadline is not None:
        never = st.n_trials - st.finished
        console.print(
            f"{DEADLINE_REASON} ({format_time(st.deadline)}): no trial started after it"
            + (f"; {never} of the {st.n_trials} trials never ran" if never > 0 else ""),
            markup=False,
            soft_wrap=True,
        )
    if page:  # one unbroken line, to click or copy
        console.print(f"its trials in the MLflow UI: {page}", markup=False, soft_wrap=True)
    from hpo import tracking

    pending = tracking.pending_operations(config.tracking_uri or "")
    if pending:
        console.print(
            f"[yellow]{pending} MLflow writes wait in the local outbox (the tracking "
            "server did not answer): run [bold]hpo sync[/] when it is back[/]"
        )


def _infeasible(t: Any) -> str:
    """The note of a trial that broke a constraint of the space (else nothing)."""
    from hpo.storage.feasibility import INFEASIBLE_ATTR

    why = t.user_attrs.get(INFEASIBLE_ATTR)
    return f"infeasible: {why}" if why else ""


def worker(
    study: str | None = typer.Option(
        None, "--study", help="Study to work on (default: every active study with budget left)."
    ),
    storage: StorageOption = None,
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="CPU threads per trial (default: all cores)."
    ),
    worker_index: int | None = typer.Option(None, "--worker-index", hidden=True),
    max_trials: int | None = typer.Option(
        None, "--max-trials", min=1, help="Stop after this many trials."
    ),
    max_trials_per_process: int = typer.Option(
        25,
        "--max-trials-per-process",
        min=1,
        help="Replace the trial process after this many trials (bounds memory).",
    ),
    heartbeat: int = typer.Option(
        10, "--heartbeat", min=1, help="Seconds between heartbeats of the running trial."
    ),
    grace_period: int = typer.Option(
        30,
        "--grace-period",
        min=2,
        help="A running trial without a heartbeat for this long is failed and requeued.",
    ),
    stop_grace: float = typer.Option(
        20.0, "--stop-grace", min=0, help="On SIGTERM/Ctrl-C, seconds the running trial may finish."
    ),
    exit_when_idle: bool | None = typer.Option(
        None,
        "--exit-when-idle/--wait-for-work",
        help="Exit when no study has work (default: exit with --study, wait without it).",
    ),
    gpus: str | None = typer.Option(
        None,
        "--gpus",
        help="Run trials on these GPUs, e.g. 0,1: each trial process sees one GPU "
        "(default: one trial at a time, no GPU pinning).",
    ),
    trials_per_gpu: int = typer.Option(
        1,
        "--trials-per-gpu",
        min=1,
        help="Concurrent trials per GPU, each with 0.9/K of its memory (needs --gpus).",
    ),
    backend: str | None = typer.Option(
        None,
        "--backend",
        help="Keras backend of the trial processes: tensorflow, jax or torch "
        "(default: $KERAS_BACKEND, else tensorflow).",
    ),
    compile_cache: str | None = typer.Option(
        None,
        "--compile-cache",
        help="JAX compile cache shared by GPU slots (default ~/.cache/hpo/jax; '' turns it off).",
    ),
    allow_family_module: list[str] | None = typer.Option(
        None,
        "--allow-module",
        "--allow-family-module",
        help="Import a study's own family, dataset, algorithm or pruner (module:attr) only "
        "from this module or package; repeat for several (default: "
        "$HPO_ALLOWED_FAMILY_MODULES, else any). Built-in names are always allowed.",
    ),
    wait_for_go: bool = typer.Option(
        False,
        "--wait-for-go",
        hidden=True,
        help="Start the trial processes, then wait for a line 'go' on stdin (hpo run).",
    ),
) -> None:
    """Take trials from the store and run them; serves every active study without --study."""
    from hpo.names import name_problem
    from hpo.storage import mask_url, resolve_storage
    from hpo.workers.slots import SlotError, parse_gpus, plan_slots, resolve_backend
    from hpo.workers.worker import Worker, WorkerOptions

    problem = name_problem(study, "study") if study is not None else None
    if problem:
        fail(f"--study: {problem}")
    try:
        gpu_list = parse_gpus(gpus)
        plan_slots(gpu_list, trials_per_gpu)
        backend = resolve_backend(backend)
    except SlotError as exc:
        fail(str(exc))

    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    from hpo.families import ALLOWED_MODULES_ENV

    if allow_family_module is not None:
        # In the environment: the trial processes inherit it and check it before any import.
        os.environ[ALLOWED_MODULES_ENV] = ",".join(allow_family_module)
    os.environ.setdefault("PYTHONSAFEPATH", "1")  # trial processes: nothing from the cwd
    url = resolve_storage(storage)
    logger = logging.getLogger("hpo.worker")
    logger.info(
        "worker %d on %s, %s",
        os.getpid(),
        mask_url(url),
        f"study {study}" if study else "every active study",
    )
    with handled_errors():
        w = Worker(
            WorkerOptions(
                url,
                study,
                threads=threads,
                worker_index=worker_index,
                max_trials=max_trials,
                max_trials_per_process=max_trials_per_process,
                heartbeat_interval=heartbeat,
                grace_period=grace_period,
                stop_grace=stop_grace,
                exit_when_idle=exit_when_idle,
                gpus=gpu_list,
                trials_per_gpu=trials_per_gpu,
                backend=backend,
                compile_cache=compile_cache,
                start_gate=_stdin_says_go if wait_for_go else None,
            )
        )
        w.install_signal_handlers()
        n = w.run()
    logger.info("worker %d done after %d trial(s)", os.getpid(), n)


def _stdin_says_go() -> bool:
    """True once stdin gives the line ``go``; False at its end (the parent gave up or died)."""
    return sys.stdin.readline().strip() == "go"


def ui(
    tracking_uri: Annotated[
        str | None, tracking_uri_option("Tracking store (default: mlflow.db here).")
    ] = None,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(5000, "--port", help="Port."),
) -> None:
    """Serve the MLflow UI on the local tracking store; print where each study's trials are."""
    from importlib.metadata import entry_points

    from hpo.storage import mask_url
    from hpo.tracking import mlflow_ui, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    base = f"http://{host}:{port}/"
    console.print(
        f"MLflow UI for {mask_url(uri)} on {base}{mlflow_ui.home_page()}",
        markup=False,
        soft_wrap=True,
    )
    for study, page in mlflow_ui.study_pages(uri, base.rstrip("/")):
        console.print(f"  study {study}: {page}", markup=False, soft_wrap=True)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--host", host, "--port", str(port)]
    # hpo's server app (hpo.tracking.mlflow_app): the UI opens experiments on their training
    # runs. An install without hpo's entry points (hpo run from a source tree) serves MLflow's
    # own app; the printed addresses select the training pages anyway.
    if entry_points(group="mlflow.app", name="hpo"):
        cmd += ["--app-name", "hpo"]
    # The store URI goes through the environment (mlflow reads it there): a command line is
    # visible to every user of the machine (ps), and the URI may hold a password.
    env = dict(os.environ, MLFLOW_BACKEND_STORE_URI=uri)
    raise typer.Exit(subprocess.call(cmd, env=env))
