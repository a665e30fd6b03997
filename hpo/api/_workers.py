"""Local worker processes of a study, as ``hpo run`` and :meth:`hpo.Study.run` start them,
and the progress shown while they work (Rich in a terminal and in Jupyter)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo.errors import HpoError

if TYPE_CHECKING:
    from rich.console import Console

    from hpo.storage.status import StudyStatus
    from hpo.storage.studies import StudyConfig

LOG_DIR = Path("hpo-logs")


class LocalWorkers:
    """A study's local worker processes, which can start while the study is being created.

    A worker's start-up (imports, and its trial processes importing Keras and MLflow) takes
    seconds, as do the data check and the MLflow set-up of :func:`hpo.create_study`; given as
    its ``on_valid``, :meth:`start` starts the workers as soon as the space and options are
    valid. They wait with their trial processes ready for ``go`` on their stdin, and open the
    store only then (a worker whose stdin ends without ``go`` exits, as when this process
    dies). :meth:`Study.run` with ``local_workers`` sends ``go`` and watches them; ``cancel``
    (an error before the study is ready) stops them, having written nothing, and removes the
    log files made for them.

    ``workers`` defaults to the space's ``defaults.workers`` (one with ``gpus``); ``gpus``,
    ``trials_per_gpu`` and ``backend`` are those of ``hpo worker``.

    Raises:
        hpo.workers.slots.SlotError: invalid GPUs, trials per GPU or backend (a UsageError).

    Example:
        >>> import hpo
        >>> local = hpo.LocalWorkers("sqlite:///hpo.db", workers=2)
        >>> local.slots
        1
        >>> study = hpo.create_study("search_spaces/image_cnn_digits.yaml",
        ...                          on_valid=local.start)  # doctest: +SKIP
        >>> study.run(local_workers=local)  # doctest: +SKIP
    """

    def __init__(
        self,
        storage: str | None = None,
        workers: int | None = None,
        *,
        gpus: str | None = None,
        trials_per_gpu: int = 1,
        backend: str | None = None,
    ) -> None:
        from hpo.storage import resolve_storage

        self.url, self.workers, self.gpus = resolve_storage(storage), workers, bool(gpus)
        self.slot_args, self.slots = slot_args(gpus, trials_per_gpu, backend)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self._new_paths: list[Path] = []  # made by start: removed by cancel

    def start(self, spec: Any, name: str) -> None:
        # GPU slots make one worker enough; several workers would each take a GPU's full share.
        n = self.workers or (1 if self.gpus else spec.defaults.workers) or 1
        log_dir = LOG_DIR / name
        self._new_paths = [p for p in (LOG_DIR, log_dir) if not p.exists()]
        self._new_paths += [
            p for p in (log_dir / f"worker-{i}.log" for i in range(n)) if not p.exists()
        ]
        self.procs, self.logs = start_workers(name, self.url, n, self.slot_args, self.slots)

    def go(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError):  # a worker that died already: watch reports it
                assert proc.stdin is not None
                proc.stdin.write(b"go\n")
                proc.stdin.close()

    def cancel(self) -> None:
        # Before go a worker has opened no store: killing it (its trial processes die with
        # it) loses nothing and does not keep the user waiting for its imports to finish.
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait()
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
        for path in reversed(self._new_paths):  # the files, then the folders made for them
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() else path.unlink()


def slot_args(gpus: str | None, trials_per_gpu: int, backend: str | None) -> tuple[list[str], int]:
    """``hpo worker`` options for the slots, and the slots per worker.

    Raises:
        hpo.workers.slots.SlotError: invalid GPUs, trials per GPU or backend.
    """
    from hpo.workers.slots import parse_gpus, plan_slots, resolve_backend

    n_slots = len(plan_slots(parse_gpus(gpus), trials_per_gpu))
    args = ["--trials-per-gpu", str(trials_per_gpu)]
    if gpus:
        args += ["--gpus", gpus]
    if backend:
        args += ["--backend", resolve_backend(backend)]
    return args, n_slots


def start_workers(
    name: str, url: str, n: int, slot_args: list[str], slots: int
) -> tuple[list[subprocess.Popen[bytes]], list[Path]]:
    """``n`` ``hpo worker --study NAME --wait-for-go`` processes, logging to hpo-logs/NAME/."""
    log_dir = LOG_DIR / name
    log_dir.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // (n * slots))
    # The store URL goes in the environment, not on the command line: it may hold a password.
    # PYTHONSAFEPATH/-P: the workers and their trial processes never import from the working
    # directory (a `typer.py` there would run in every one of them).
    env = dict(os.environ, HPO_STORAGE=url, PYTHONSAFEPATH="1")
    procs, logs = [], []
    for i in range(n):
        log_path = log_dir / f"worker-{i}.log"
        with open(log_path, "ab") as log_file:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-P",
                        "-m",
                        "hpo",
                        "worker",
                        "--study",
                        name,
                        "--threads",
                        str(threads),
                        "--worker-index",
                        str(i),
                        "--wait-for-go",
                        *slot_args,
                    ],
                    stdin=subprocess.PIPE,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            )
        logs.append(log_path)
    return procs, logs


def stop_workers(procs: list[subprocess.Popen[bytes]], grace: float = 30) -> None:
    """Ask the workers to stop (their running trials may finish), then kill what is left."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            p.kill()


def _status_line(st: StudyStatus) -> str:
    best = ", ".join(f"{v:.4f}" for v in st.best_values) if st.best_values else "-"
    return (
        f"{st.complete} done, {st.pruned} pruned, {st.failed} failed, {st.running} running "
        + (f"({st.infeasible} infeasible) " if st.infeasible else "")
        + f"| best {best}"
    )


def _rich_live_works(console: Console) -> bool:
    """Rich's live display needs ipywidgets in Jupyter; a terminal (or a file) needs nothing."""
    if not console.is_jupyter:
        return True
    import importlib.util

    return importlib.util.find_spec("ipywidgets") is not None


def watch(
    store: Any,
    name: str,
    procs: list[subprocess.Popen[bytes]],
    *,
    progress: bool = True,
    console: Console | None = None,
) -> bool:
    """Show progress until every worker has exited; True when all exited cleanly.

    The progress is a Rich bar (in a terminal, and in Jupyter where ipywidgets is installed);
    in a notebook without ipywidgets one line is printed each time a trial finishes. On
    Ctrl-C (KeyboardInterrupt, the kernel's interrupt) the workers are stopped and the
    interrupt goes on.
    """
    from rich.console import Console

    console = console or Console()
    try:
        if not progress:  # nothing to show: only wait (reading the study costs CPU)
            for p in procs:
                p.wait()
        elif _rich_live_works(console):
            _rich_progress(store, name, procs, console)
        else:
            _line_progress(store, name, procs, console)
    except KeyboardInterrupt:
        console.print("stopping workers...")
        stop_workers(procs)
        raise
    return all(p.returncode == 0 for p in procs)


def _wait_a_little(alive: list[subprocess.Popen[bytes]]) -> None:
    # Wakes as soon as a worker exits: the last one to exit ends the study.
    with contextlib.suppress(subprocess.TimeoutExpired):
        alive[0].wait(timeout=1.0)


def _rich_progress(
    store: Any, name: str, procs: list[subprocess.Popen[bytes]], console: Console
) -> None:
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from hpo.storage.status import study_status

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    )
    warned: list[str] = []
    with bar:
        st = study_status(store, name)
        task = bar.add_task(escape(name), total=st.n_trials, info="")
        while True:
            alive = [p for p in procs if p.poll() is None]
            st = study_status(store, name)
            _warn_unread(st, console, warned)
            bar.update(task, completed=st.finished, total=st.n_trials, info=_status_line(st))
            if not alive:
                break
            _wait_a_little(alive)


def _line_progress(
    store: Any, name: str, procs: list[subprocess.Popen[bytes]], console: Console
) -> None:
    from hpo.storage.status import study_status

    shown = -1
    warned: list[str] = []
    while True:
        alive = [p for p in procs if p.poll() is None]
        st = study_status(store, name)
        _warn_unread(st, console, warned)
        if st.finished != shown:
            shown = st.finished
            console.print(f"{name}: {st.finished}/{st.n_trials} | {_status_line(st)}", markup=False)
        if not alive:
            break
        _wait_a_little(alive)


def _warn_unread(st: StudyStatus, console: Console, warned: list[str]) -> None:
    """Print once (after the first complete trial) the parameters no trial's family read."""
    if st.unread_params and not warned:
        from hpo.storage.unread_params import describe_unread_params

        warned.extend(st.unread_params)
        console.print(f"warning: {describe_unread_params(st.unread_params)}", markup=False)


def finish(store: Any, name: str) -> tuple[StudyConfig, StudyStatus]:
    """The study's configuration and status once its workers are gone; a study that is done
    is finalized (plots, the MLflow run ended) if the worker with its last trial did not."""
    from hpo.storage.status import study_status
    from hpo.storage.studies import load_config
    from hpo.tracking.study_report import finalize_study

    config = load_config(store, name)
    st = study_status(store, name)
    study_id = store.get_study_id_from_name(name)
    if st.done and not store.get_study_system_attrs(study_id).get("hpo:finalized"):
        finalize_study(store, config)  # normally the worker with the last trial did it
    return config, st


def run_workers(
    store: Any,
    launch: LocalWorkers,
    name: str,
    *,
    progress: bool = True,
    console: Console | None = None,
) -> tuple[bool, StudyConfig, StudyStatus]:
    """Let ``launch``'s started workers go, watch them, then :func:`finish` the study.

    Returns ``(all workers exited cleanly, config, status)``.
    """
    launch.go()
    ok = watch(store, name, launch.procs, progress=progress, console=console)
    config, st = finish(store, name)
    return ok, config, st


class WorkersFailedError(HpoError):
    """A worker process exited with an error; its log (hpo-logs/STUDY/) says why."""
