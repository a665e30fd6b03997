"""Helpers shared by the CLI's commands: options, output, errors and exit codes, study set-up."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from hpo.names import name_problem
from hpo.storage import mask_url

if TYPE_CHECKING:
    from optuna.storages import RDBStorage

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2

STORAGE_HELP = "Study store URL (default: sqlite hpo.db here)."


def storage_option(help: str = STORAGE_HELP) -> Any:
    """The ``--storage`` option (else ``$HPO_STORAGE``), for ``Annotated[str | None, ...]``."""
    return typer.Option("--storage", envvar="HPO_STORAGE", help=help)


def tracking_uri_option(help: str = "MLflow tracking URI.") -> Any:
    """The ``--tracking-uri`` option (else ``$MLFLOW_TRACKING_URI``), for ``Annotated``.

    Commands give their own ``help`` where the default differs (the study's, the local store).
    """
    return typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", help=help)


# Options that several commands share. Typer takes the default from the parameter, as in
# ``storage: StorageOption = None``.
StorageOption = Annotated[str | None, storage_option()]
TrackingUriOption = Annotated[str | None, tracking_uri_option()]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
# What defines a study, the same in ``hpo run`` and ``hpo study create``.
TrialsOption = Annotated[int | None, typer.Option("--trials", min=1, help="Trial budget.")]
AlgorithmOption = Annotated[str | None, typer.Option("--algorithm", help="Search algorithm.")]
DatasetOption = Annotated[str | None, typer.Option("--dataset", help="Dataset override.")]
EpochsOption = Annotated[int | None, typer.Option("--epochs", min=1, help="Max epochs per trial.")]
SubsetOption = Annotated[
    int | None, typer.Option("--subset", min=1, help="Cap on training examples.")
]


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print ``message`` (plain text, never markup) as one error line and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {escape(one_line(mask_url(message)))}", highlight=False)
    raise typer.Exit(code)


def one_line(text: str) -> str:
    """``text`` with its line breaks shown as spaces: an error is one line."""
    return " ".join(text.splitlines()) if "\n" in text or "\r" in text else text


def print_json(data: Any) -> None:
    sys.stdout.write(mask_url(json.dumps(data, indent=2, default=str)) + "\n")


@contextmanager
def handled_errors() -> Iterator[None]:
    """Turn the product's own errors into a message and their exit status, in one place.

    Every :class:`hpo.errors.HpoError` carries its status (2: usage, 1: runtime); a space
    file's errors are printed one line per issue.
    """
    from hpo.errors import HpoError
    from hpo.spaces import SpaceError

    try:
        yield
    except SpaceError as exc:
        for issue in exc.issues:
            err_console.print(f"[bold red]error:[/] {escape(str(issue))}", highlight=False)
        raise typer.Exit(exc.exit_code) from None
    except HpoError as exc:
        fail(str(exc), exc.exit_code)


def open_store(
    storage: str | None,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    *,
    study: str | None = None,
) -> RDBStorage:
    """The study store of ``--storage``: that URL, else ``$HPO_STORAGE``, else hpo.db here.

    With ``study`` (a command that reads or changes that study) a SQLite file that does not
    exist is not created: the study is not there. A URL that is not one, or a store that does
    not answer, ends the command with one line (exit 2 or 1).
    """
    from hpo.storage import StorageError, open_storage, resolve_storage, store_exists

    url = resolve_storage(storage)
    if study is not None and not store_exists(url):
        fail(f"no study named {study!r}: the study store {url} does not exist")
    try:
        return open_storage(url, heartbeat_interval, grace_period)
    except StorageError as exc:
        fail(str(exc), exc.exit_code)


def load_checked_spec(path: Path) -> Any:
    from hpo.spaces import load_spec

    return load_spec(path)


def prepare_study(
    space: Path,
    *,
    name: str | None,
    trials: int | None,
    algorithm: str | None,
    pruner: str | None,
    seed: int | None,
    storage: str | None,
    tracking_uri: str | None,
    dataset: str | None,
    epochs: int | None,
    subset: int | None,
    resume: bool,
    priority: int = 0,
    max_retries: int = 1,
    check_data: bool = True,
    on_valid: Callable[[Any, str], None] | None = None,
    name_option: str = "--study",
) -> tuple[Any, Any, bool]:
    """Validate the space, options and data, then create the study (or load it with ``resume``).

    With ``check_data`` the dataset is loaded once and checked against the family (see
    :mod:`hpo.preflight`). ``on_valid(spec, study_name)`` is called once the space and the
    options are valid, before the data check and before anything is written (``hpo run``
    starts its workers there). Returns ``(storage, config, created)``. Nothing is written
    before everything is valid.
    """
    from hpo.spaces import SpaceError, SpaceIssue, check_run_options
    from hpo.storage import open_storage, resolve_storage
    from hpo.studies import StudyConfig, StudyError, apply_overrides, create_study, load_config
    from hpo.tracking import resolve_tracking_uri

    spec = load_checked_spec(space)
    if tracking_uri:
        tracking_uri = _credentials_to_env(tracking_uri)
    overrides = {
        k: v for k, v in {"dataset": dataset, "epochs": epochs, "subset": subset}.items() if v
    }
    spec_run = apply_overrides(spec, overrides)
    given = {"algorithm": algorithm, "pruner": pruner, "seed": seed}
    algorithm = algorithm or spec.defaults.algorithm
    pruner = pruner or spec.defaults.pruner
    if dataset:
        from hpo.datasets import DATASETS

        if dataset not in DATASETS:
            fail(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS.names())}")
    problems = check_run_options(spec_run, algorithm, pruner)
    if problems:
        raise SpaceError([SpaceIssue(str(space), "", None, p) for p in problems])
    study_name = name if name is not None else spec.name
    from hpo.spaces._spec import MAX_SEED

    problem = name_problem(study_name, "study")
    if problem:
        where = f"{name_option}: " if name is not None else f"{space}: name: "
        fail(f"{where}{problem}")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        fail(f"--seed: must be between 0 and {MAX_SEED}, got {seed}")
    if on_valid is not None:
        on_valid(spec, study_name)
    if check_data:
        from hpo.preflight import check_study_data, describe

        err_console.print(describe(check_study_data(spec_run)), style="dim", highlight=False)
    url = resolve_storage(storage)
    store = open_storage(url)
    import optuna

    exists = study_name in [s.study_name for s in optuna.get_all_study_summaries(store)]
    if exists:
        if not resume:
            how = (
                "continue it with hpo run --resume"
                if name_option == "--name"
                else "add --resume to continue it"
            )
            raise StudyError(
                f"study {study_name!r} already exists in {url}: {how}, "
                f"or give another name with {name_option}"
            )
        config = load_config(store, study_name)
        from hpo.studies import get_study_state

        state = get_study_state(store, study_name)
        if state == "cancelled":
            raise StudyError(
                f"study {study_name!r} was cancelled (hpo study cancel) and cannot be resumed: "
                "create a new study with another --study name"
            )
        differences = _resume_differences(config, spec, given, overrides)
        if differences:
            raise StudyError(
                f"--resume: study {study_name!r} was created with other settings: "
                f"{'; '.join(differences)}. Resume it with the same ones, or give another "
                "name with --study"
            )
        if state == "creating":
            # An earlier creation stopped before its MLflow set-up: finish it now.
            _start_tracking(store, config, spec_run, algorithm, pruner, space)
        if trials and trials != config.n_trials:
            from hpo.studies import save_config

            config.n_trials = trials
            save_config(store, optuna.load_study(study_name=study_name, storage=store), config)
        return store, config, False
    n_trials = trials or spec.defaults.trials
    if algorithm == "optuna-grid":
        from hpo.engines import grid_size

        size = grid_size(spec_run.space)
        if n_trials > size:
            # The grid ends the study: a budget beyond it could never be reached.
            err_console.print(f"note: the grid has {size} points; the study runs {size} trials")
            n_trials = size
    config = StudyConfig(
        name=study_name,
        source=spec.source,
        filename=str(space),
        algorithm=algorithm,
        pruner=pruner,
        n_trials=n_trials,
        seed=seed if seed is not None else spec.defaults.seed,
        overrides=overrides,
        priority=priority,
        max_retries=max_retries,
        tracking_uri=_credentials_to_env(resolve_tracking_uri(tracking_uri)),
    )
    create_study(store, config)
    _start_tracking(store, config, spec_run, algorithm, pruner, space)
    return store, config, True


def _resume_differences(
    config: Any, spec: Any, given: dict[str, Any], overrides: dict[str, Any]
) -> list[str]:
    """What a ``--resume`` asks for that the stored study was not created with.

    The space is compared as parsed (comments and layout may differ); ``given`` holds the
    flags given on the command line (None: not given, the stored value goes on).
    """
    import dataclasses

    from hpo.spaces import parse_spec

    def meaning(s: Any) -> Any:
        return dataclasses.replace(
            s, name="", description="", source="", filename="", defaults=None
        )

    out = []
    if meaning(spec) != meaning(parse_spec(config.source, config.filename)):
        out.append(
            f"the space file differs from the one the study was created from ({config.filename})"
        )
    for key in ("algorithm", "pruner", "seed"):
        value, stored = given[key], getattr(config, key)
        if value is not None and value != stored:
            out.append(f"--{key} {value} instead of {stored}")
    if overrides and overrides != config.overrides:
        asked = ", ".join(f"--{k} {v}" for k, v in sorted(overrides.items()))
        kept = ", ".join(f"--{k} {v}" for k, v in sorted(config.overrides.items())) or "none"
        out.append(f"{asked} instead of {kept}")
    return out


def _credentials_to_env(uri: str) -> str:
    """``uri`` without its password, which moves to ``$MLFLOW_TRACKING_URI`` of this process.

    The study stores the URI without the password; this process and the workers it starts
    (they inherit the environment; nothing goes on a command line) connect with it.
    """
    from hpo.storage import has_password, strip_password
    from hpo.tracking import TRACKING_ENV

    if has_password(uri):
        os.environ[TRACKING_ENV] = uri
    return strip_password(uri)


def _start_tracking(
    store: Any, config: Any, spec_run: Any, algorithm: str, pruner: str, space: Path
) -> None:
    """Create the study's MLflow experiment and run, store their ids, then open the study."""
    import optuna

    from hpo import tracking
    from hpo.studies import save_config, set_study_state

    config.experiment_id, config.parent_run_id = tracking.start_study_run(
        config.tracking_uri or "",
        config.name,
        tags={
            "hpo.family": spec_run.family,
            "hpo.algorithm": config.algorithm,
            "hpo.pruner": config.pruner,
            "hpo.dataset": spec_run.dataset.name,
        },
        params={
            "algorithm": config.algorithm,
            "pruner": config.pruner,
            "n_trials": config.n_trials,
            "seed": config.seed,
            "family": spec_run.family,
            "dataset": spec_run.dataset.name,
            "subset": spec_run.dataset.subset,
            "max_epochs": spec_run.budget.max_epochs,
            "space_file": str(space),
        },
    )
    save_config(store, optuna.load_study(study_name=config.name, storage=store), config)
    set_study_state(store, config.name, "active")
