"""``hpo ensemble`` (build, list, show), ``hpo export`` and ``hpo predict``."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.markup import escape
from rich.text import Text

from hpo.cli._common import (
    EXIT_RUNTIME,
    EXIT_USAGE,
    JsonOption,
    StorageOption,
    console,
    err_console,
    fail,
    print_json,
    print_table,
    tracking_uri_option,
)

app = typer.Typer(
    help="Weighted ensembles of the best trials, registered in the MLflow Model Registry.",
    no_args_is_help=True,
)

TrackingUri = Annotated[
    str | None,
    tracking_uri_option("MLflow tracking URI (default: the studies' own, else mlflow.db here)."),
]


@contextmanager
def _handled() -> Iterator[None]:
    """hpo's errors as :func:`handled_errors` maps them; MLflow failures: exit 1."""
    from hpo.cli._common import handled_errors

    try:
        with handled_errors():
            yield
    except typer.Exit:
        raise
    except Exception as exc:
        from mlflow.exceptions import MlflowException

        if isinstance(exc, MlflowException):
            fail(f"MLflow: {exc.message}", EXIT_RUNTIME)
        raise


@contextmanager
def _printed_warnings() -> Iterator[None]:
    """Show the ensemble's warnings (skipped candidates) as one line each on stderr."""
    from hpo.ensemble import EnsembleWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EnsembleWarning)
        try:
            yield
        finally:
            for w in caught:
                if issubclass(w.category, EnsembleWarning):
                    err_console.print(
                        f"[yellow]warning:[/] {escape(str(w.message))}", highlight=False
                    )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@app.command("build")
def build(
    studies: list[str] = typer.Argument(..., help="Studies whose trials are candidates."),
    name: str | None = typer.Option(
        None, "--name", help="Registered model name (default: STUDY-ensemble)."
    ),
    method: str = typer.Option(
        "caruana", "--method", help="caruana (greedy selection), weights (simplex fit), average."
    ),
    top: int = typer.Option(20, "--top", min=1, help="Candidates: the N best trials."),
    size: int = typer.Option(
        10, "--size", min=1, help="Greedy rounds (caruana) or members of the average."
    ),
    metric: str = typer.Option(
        "auto",
        "--metric",
        help="What caruana selects on (validation): accuracy, nll, or auto (accuracy when "
        "the studies optimized an accuracy, else nll).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of caruana's tie-breaking."),
    storage: StorageOption = None,
    tracking_uri: TrackingUri = None,
    json_out: JsonOption = False,
) -> None:
    """Build a weighted ensemble from stored validation predictions and register it.

    Candidates: the --top best COMPLETE trials of all STUDIES (one shared dataset).
    The weights are fitted on validation predictions; nothing is retrained.

    The test split is only scored. Its predictions are made here from the stored
    models of the members and baselines, so this machine needs the studies' data
    (as a worker does), and are kept in their runs for later builds.
    """
    from hpo.api import build_ensemble

    with _handled(), _printed_warnings():
        result = build_ensemble(
            studies,
            name,
            method=method,
            top=top,
            size=size,
            metric=metric,
            storage=storage,
            tracking_uri=tracking_uri,
            seed=seed,
        )
    if json_out:
        print_json(result.to_dict())
        return
    from rich.table import Table

    console.print(
        f"[bold]{escape(result.name)}[/] version {result.version}: {result.method} ensemble of "
        f"{len(result.members)} trials from {len(result.candidates)} candidates "
        f"(MLflow run {result.run_id})"
    )
    members = Table("study", "trial", "family", "weight", "MLflow run")
    for m in result.members:
        members.add_row(Text(m.study), str(m.trial), Text(m.family), f"{m.weight:.3f}", m.run_id)
    print_table(members)
    print_table(_metrics_table(result.metrics))
    if not result.exportable:
        err_console.print(f"[yellow]note:[/] not exportable: {escape(str(result.export_problem))}")


def _metrics_table(metrics: dict[str, Any]) -> Any:
    from rich.table import Table

    names = sorted({n for split in metrics.values() for kind in split.values() for n in kind})
    table = Table("split", "", *names)
    for split, by_kind in metrics.items():
        for kind in ("trial", "best_single", "average", "ensemble", "refit"):
            if kind in by_kind:
                table.add_row(
                    split, kind.replace("_", " "), *[_fmt(by_kind[kind].get(n)) for n in names]
                )
    return table


@app.command("list")
def list_command(tracking_uri: TrackingUri = None, json_out: JsonOption = False) -> None:
    """The registered ensembles, with their latest version."""
    from hpo.api import list_ensembles

    with _handled():
        rows = list_ensembles(tracking_uri)
    if json_out:
        print_json(rows)
        return
    from rich.table import Table

    table = Table("name", "versions", "method", "studies", "members", "test metrics (ensemble)")
    for r in rows:
        by_kind = r["metrics"].get("test", {})
        test = by_kind.get("ensemble") or by_kind.get("refit") or {}
        table.add_row(
            Text(r["name"]),
            str(r["versions"]),
            Text(str(r["method"])),
            Text(", ".join(r["studies"])),
            str(r["members"]),
            ", ".join(f"{k} {_fmt(v)}" for k, v in sorted(test.items())),
        )
    print_table(table)


@app.command("show")
def show(
    name: str = typer.Argument(..., help="Registered ensemble name."),
    version: int | None = typer.Option(None, "--version", min=1, help="Only this version."),
    tracking_uri: TrackingUri = None,
    json_out: JsonOption = False,
) -> None:
    """A registered ensemble's versions: method, members, weights and metrics."""
    from hpo.api import show_ensemble

    with _handled():
        info = show_ensemble(name, version, tracking_uri)
    if json_out:
        print_json(info)
        return
    from rich.table import Table

    for v in info["versions"]:
        console.print(
            f"[bold]{escape(info['name'])}[/] version {v['version']} ({v['created']}): "
            + escape(f"{_made_of(v)}; MLflow run {v['run_id']}")
            + ("" if v["exportable"] else " [yellow](not exportable)[/]")
        )
        members = Table("study", "trial", "weight", "MLflow run")
        for m in v["members"]:
            members.add_row(Text(m["study"]), str(m["trial"]), f"{m['weight']:.3f}", m["run_id"])
        print_table(members)
        print_table(_metrics_table(v["metrics"]))


def _made_of(version: dict[str, Any]) -> str:
    """What a registered version is: an ensemble of studies, or the refit of a trial."""
    studies = ", ".join(version["studies"])
    if version["method"] == "refit" and version["members"]:
        return f"refit of {studies} trial {version['members'][0]['trial']}"
    return f"{version['method']} ensemble of {studies}"


def export(
    name: str = typer.Argument(..., help="Registered ensemble name."),
    output: Path = typer.Option(..., "--output", "-o", help="File (.keras) or folder to write."),
    fmt: str = typer.Option("keras", "--format", help="keras, savedmodel or mlflow."),
    version: int | None = typer.Option(None, "--version", min=1, help="Version (latest)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    tracking_uri: TrackingUri = None,
) -> None:
    """Export a registered ensemble: one .keras file (loads without hpo, in safe mode), a
    TensorFlow SavedModel, or an MLflow model folder."""
    from hpo.api import export_ensemble

    with _handled():
        path = export_ensemble(name, output, fmt, version, tracking_uri, overwrite)
    console.print(f"wrote {path} ({fmt})", markup=False)


def predict(
    model: str = typer.Argument(
        ..., help="A .keras file, or a registered ensemble NAME[:VERSION]."
    ),
    input_file: Path = typer.Option(
        ...,
        "--input",
        "-i",
        help="Raw inputs as you hold them: a CSV of raw feature values with a header (columns "
        "matched by name; the label column is ignored), images or integer sequences as .npz "
        "(array x), .npy or CSV rows, text as a .txt file (one document per line), a folder of "
        ".txt files or a CSV/TSV with a text column.",
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write predictions to .npz, .csv or .json (else print)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --output."),
    text_column: str = typer.Option(
        "text", "--text-column", help="The CSV column holding the documents (text models)."
    ),
    vocabulary: Path | None = typer.Option(
        None,
        "--vocabulary",
        help="text_vocabulary.json of a .keras text model saved before models took raw text.",
    ),
    tracking_uri: TrackingUri = None,
    json_out: JsonOption = False,
) -> None:
    """Class probabilities, the predicted class and its name for each input example.

    Models take raw inputs (what the exported model's hpo.json, or NAME.hpo.json
    beside a .keras file, describes): the transformation the trials trained with
    is inside the model. Model files are loaded in safe mode: legacy .h5 files
    and files with a Lambda layer or other arbitrary code are refused.
    """
    from hpo.api import load_ensemble
    from hpo.ensemble import write_predictions

    if output is not None:
        _check_output(output, overwrite)
    with _handled():
        from hpo.ensemble._user_inputs import is_text_input

        ensemble = load_ensemble(
            model,
            tracking_uri=tracking_uri,
            vocabulary=vocabulary,
            want_text=is_text_input(input_file),
        )
        prediction = ensemble.predict(input_file, text_column=text_column)
        probs, names = prediction.probabilities, prediction.names
        if len(probs) == 0:
            fail(f"{input_file}: no examples to predict", EXIT_USAGE)
        if not np.all(np.isfinite(probs)):
            fail(
                f"{input_file}: the model gave non-finite probabilities (are the inputs in "
                "the range the model was trained on?)",
                EXIT_RUNTIME,
            )
        predicted, classes, labels = prediction.predicted, prediction.class_names, prediction.labels
        if output is not None:
            try:
                write_predictions(output, probs, predicted, labels)
            except OSError as exc:
                fail(f"cannot write {output}: {exc.strerror or exc}", EXIT_USAGE)
    if output is not None:
        console.print(f"wrote predictions of {len(probs)} examples to {output}", markup=False)
    elif json_out:
        print_json(
            {
                "probabilities": probs.tolist(),
                "predicted": predicted.tolist(),
                **({"predicted_class": labels, "class_names": classes} if labels else {}),
                **({"documents": names} if names else {}),
            }
        )
    else:
        # Plain lines (index, predicted class, its name where known, probabilities) that tools
        # can cut and paste.
        flat = probs.reshape(len(probs), -1)
        predicted_rows = predicted.reshape(len(probs), -1)
        for i, (row, cls) in enumerate(zip(flat, predicted_rows, strict=True)):
            name = f"{labels[i]}\t" if labels else ""
            sys.stdout.write(
                f"{i}\t{' '.join(map(str, cls))}\t{name}{' '.join(f'{p:.4f}' for p in row)}\n"
            )


def _check_output(output: Path, overwrite: bool) -> None:
    """Refuse before any work: an existing output without --overwrite, a missing folder."""
    if output.suffix.lower() not in (".npz", ".csv", ".json"):
        fail(f"{output}: write predictions to a .npz, .csv or .json file", EXIT_USAGE)
    if output.is_dir():
        fail(f"{output} is a folder; give a file name", EXIT_USAGE)
    if output.exists() and not overwrite:
        fail(f"{output} exists; remove it or pass --overwrite", EXIT_USAGE)
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        fail(f"{output}: the folder {parent} does not exist", EXIT_USAGE)
    if not os.access(parent, os.W_OK):
        fail(f"{output}: the folder {parent} is not writable", EXIT_USAGE)
