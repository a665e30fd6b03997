"""``hpo refit``: a trial's configuration trained again on training + validation data."""

from __future__ import annotations

import typer
from rich.markup import escape

from hpo.cli._common import JsonOption, StorageOption, console, err_console, print_json
from hpo.cli._ensemble import TrackingUri, _handled, _metrics_table, _printed_warnings


def refit(
    study: str = typer.Argument(..., help="The study whose trial is refit."),
    trial: int | None = typer.Option(
        None, "--trial", min=0, help="The trial's number (default: the study's best trial)."
    ),
    name: str | None = typer.Option(
        None, "--name", help="Registered model name (default: STUDY-refit)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the training (weights, shuffling)."),
    storage: StorageOption = None,
    tracking_uri: TrackingUri = None,
    json_out: JsonOption = False,
) -> None:
    """Train a trial's configuration again on training + validation data and register it.

    It trains for as many epochs as led to the model the trial kept (its best epoch),
    with the study's family and data, here (this machine needs the study's data, as a
    worker does). It is scored on the test split beside the trial itself, logged as its
    own MLflow run in the study's experiment, and registered like an ensemble of one
    member: `hpo export`, `hpo predict` and serving take its name.
    """
    from hpo.api import refit as refit_trial

    with _handled(), _printed_warnings():
        result = refit_trial(
            study, trial, name, seed=seed, storage=storage, tracking_uri=tracking_uri
        )
    if json_out:
        print_json(result.to_dict())
        return
    console.print(
        f"[bold]{escape(result.name)}[/] version {result.version}: refit of study "
        f"{escape(result.study)} trial {result.trial} on {result.train_size} training + "
        f"validation examples, {result.epochs} epochs (MLflow run {result.run_id})"
    )
    console.print(_metrics_table(result.metrics))
    if not result.exportable:
        err_console.print(f"[yellow]note:[/] not exportable: {escape(str(result.export_problem))}")
