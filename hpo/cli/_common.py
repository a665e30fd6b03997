"""Helpers shared by the CLI's commands: options, output, errors and exit codes, study set-up."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from hpo.storage import mask_url

if TYPE_CHECKING:
    from optuna.storages import RDBStorage

    from hpo.api import Study, StudyOptions

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
StudyNameOption = Annotated[
    str | None, typer.Option("--study", help="Study name (default: the space's).")
]
AlgorithmOption = Annotated[str | None, typer.Option("--algorithm", help="Search algorithm.")]
DatasetOption = Annotated[str | None, typer.Option("--dataset", help="Dataset override.")]
EpochsOption = Annotated[int | None, typer.Option("--epochs", min=1, help="Max epochs per trial.")]
SubsetOption = Annotated[
    int | None, typer.Option("--subset", min=1, help="Cap on training examples.")
]


def _seconds(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> float | None:
    """A time limit's text as seconds; anything else ends the command with one line (exit 2)."""
    if value is None:
        return None
    from hpo.api._setup import seconds_value
    from hpo.errors import UsageError

    option = "--" + str(param.name).replace("_", "-")
    try:
        return seconds_value(value, option, zero_ok=param.name == "study_timeout_grace")
    except UsageError as exc:
        fail(str(exc), exc.exit_code)


# Typed as text: a value that is not a number gets the same one-line error as one below 0.
TrialTimeoutOption = Annotated[
    str | None,
    typer.Option(
        "--trial-timeout",
        callback=_seconds,
        metavar="SECONDS",
        help="Stop a trial (FAIL) after this many seconds (default: the space's "
        "budget.trial_timeout, else none).",
    ),
]
StudyTimeoutOption = Annotated[
    str | None,
    typer.Option(
        "--study-timeout",
        callback=_seconds,
        metavar="SECONDS",
        help="Claim no trial this many seconds after the study's first one (default: the "
        "space's budget.study_timeout, else none).",
    ),
]
StudyTimeoutGraceOption = Annotated[
    str | None,
    typer.Option(
        "--study-timeout-grace",
        callback=_seconds,
        metavar="SECONDS",
        help="Seconds running trials may go on after the study's deadline (default: the "
        "space's budget.study_timeout_grace, else 60).",
    ),
]


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print ``message`` (plain text, never markup) as one error line and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {escape(one_line(mask_url(message)))}", highlight=False)
    raise typer.Exit(code)


def one_line(text: str) -> str:
    """``text`` with its line breaks shown as spaces: an error is one line."""
    return " ".join(text.splitlines()) if "\n" in text or "\r" in text else text


def format_time(seconds: float) -> str:
    """A moment (seconds since the epoch) as users read it: UTC, to the second.

    Example:
        >>> format_time(0)
        '1970-01-01 00:00:00 UTC'
    """
    import datetime

    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def print_json(data: Any) -> None:
    sys.stdout.write(mask_url(json.dumps(data, indent=2, default=str)) + "\n")


def print_table(table: Any) -> None:
    """Print a Rich table whole: where the terminal (80 columns when piped) is narrower than
    the table, print it at its own width. Rich would otherwise shrink columns and cut their
    cells ("0.81…"), which misreports a value."""
    from rich.measure import Measurement

    width = Measurement.get(console, console.options.update_width(1 << 16), table).maximum
    if width <= console.width:
        console.print(table)
    else:
        Console(width=width).print(table)


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


def study_options(params: Mapping[str, Any], **given: Any) -> StudyOptions:
    """The :class:`hpo.StudyOptions` of a command's parameters (``ctx.params``): those named as
    its fields, ``--skip-data-check`` as ``check_data``, then ``given``."""
    from hpo.api import StudyOptions

    names = {f.name for f in dataclasses.fields(StudyOptions)}
    values = {k: v for k, v in params.items() if k in names}
    values["check_data"] = not params.get("skip_data_check", False)
    return StudyOptions(**(values | given))


def create_study(space: Path, options: StudyOptions, **hooks: Any) -> Study:
    """:func:`hpo.create_study`, its notes (the data check) printed on stderr.

    Errors are raised (:class:`hpo.errors.HpoError`): call it inside :func:`handled_errors`.
    """
    import hpo

    return hpo.create_study(space, options, echo=_note, **hooks)


def _note(text: str) -> None:
    err_console.print(text, style="dim", highlight=False)
