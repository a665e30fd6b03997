"""``hpo study``: create, list, inspect studies in the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from hpo.cli._common import console, handled_errors, prepare_study, print_json

app = typer.Typer(help="Create and inspect studies.", no_args_is_help=True)

StorageOpt = typer.Option(
    None, "--storage", envvar="HPO_STORAGE", help="Study store URL (default: sqlite hpo.db here)."
)


@app.command("create")
def create(
    space: Path = typer.Argument(..., help="Search-space file."),
    name: str | None = typer.Option(None, "--name", help="Study name (default: the space's)."),
    trials: int | None = typer.Option(None, "--trials", min=1, help="Trial budget."),
    algorithm: str | None = typer.Option(None, "--algorithm", help="Search algorithm."),
    pruner: str | None = typer.Option(None, "--pruner", help="Pruner."),
    seed: int | None = typer.Option(None, "--seed", help="Seed."),
    storage: str | None = StorageOpt,
    tracking_uri: str | None = typer.Option(
        None, "--tracking-uri", envvar="MLFLOW_TRACKING_URI", help="MLflow tracking URI."
    ),
    dataset: str | None = typer.Option(None, "--dataset", help="Dataset override."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Max epochs per trial."),
    subset: int | None = typer.Option(None, "--subset", min=1, help="Cap on training examples."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Create a study that workers (`hpo worker --study NAME`) can join from any machine."""
    with handled_errors():
        _, config, _ = prepare_study(
            space,
            name=name,
            trials=trials,
            algorithm=algorithm,
            pruner=pruner,
            seed=seed,
            storage=storage,
            tracking_uri=tracking_uri,
            dataset=dataset,
            epochs=epochs,
            subset=subset,
            resume=False,
        )
    if json_out:
        print_json(
            {
                "study": config.name,
                "n_trials": config.n_trials,
                "algorithm": config.algorithm,
                "pruner": config.pruner,
            }
        )
    else:
        console.print(
            f"created study [bold]{config.name}[/]: {config.n_trials} trials, "
            f"{config.algorithm}, pruner {config.pruner}"
        )


@app.command("list")
def list_studies(
    storage: str | None = StorageOpt,
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the studies in the store with their progress."""
    import optuna
    from rich.table import Table

    from hpo.storage import open_storage, resolve_storage
    from hpo.studies import StudyError, study_status

    store = open_storage(resolve_storage(storage))
    rows: list[dict[str, Any]] = []
    for summary in optuna.get_all_study_summaries(store):
        try:
            rows.append(study_status(store, summary.study_name).to_dict())
        except StudyError:
            rows.append({"name": summary.study_name, "foreign": True})
    if json_out:
        print_json(rows)
        return
    table = Table(
        "study",
        "family",
        "algorithm",
        "finished",
        "complete",
        "pruned",
        "failed",
        "running",
        "best",
    )
    for r in rows:
        if r.get("foreign"):
            table.add_row(r["name"], "(not an hpo study)", *[""] * 7)
            continue
        table.add_row(
            r["name"],
            r["family"],
            r["algorithm"],
            f"{r['finished']}/{r['n_trials']}",
            str(r["complete"]),
            str(r["pruned"]),
            str(r["failed"]),
            str(r["running"]),
            _fmt(r["best_values"]),
        )
    console.print(table)


def _fmt(values: list[float] | None) -> str:
    return ", ".join(f"{v:.4g}" for v in values) if values else "-"


@app.command("status")
def status(
    name: str = typer.Argument(..., help="Study name."),
    storage: str | None = StorageOpt,
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Trials finished, pruned, failed and running, and the best value so far."""
    from hpo.storage import open_storage, resolve_storage
    from hpo.studies import study_status

    with handled_errors():
        st = study_status(open_storage(resolve_storage(storage)), name)
    if json_out:
        print_json(st.to_dict())
        return
    console.print(
        f"[bold]{st.name}[/] ({st.family} on {st.dataset}, {st.algorithm}, pruner {st.pruner})\n"
        f"  finished {st.finished}/{st.n_trials}: {st.complete} complete, {st.pruned} pruned, "
        f"{st.failed} failed; {st.running} running\n"
        f"  best: {_fmt(st.best_values)}"
        + (f" (trial {st.best_trial})" if st.best_trial is not None else "")
    )


@app.command("best")
def best(
    name: str = typer.Argument(..., help="Study name."),
    storage: str | None = StorageOpt,
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The best trial: its values, parameters and MLflow run."""
    from hpo.cli._common import fail
    from hpo.storage import open_storage, resolve_storage
    from hpo.studies import load_config
    from hpo.study_report import best_trial_summary

    with handled_errors():
        store = open_storage(resolve_storage(storage))
        summary = best_trial_summary(store, load_config(store, name))
    if summary is None:
        fail(f"study {name!r} has no complete trial yet", 1)
    if json_out:
        print_json(summary)
        return
    for t in summary["best_trials"]:
        console.print(
            f"[bold]trial {t['number']}[/]: values {_fmt(t['values'])}, "
            f"{t['params_count']} parameters, MLflow run {t['mlflow_run_id']}"
        )
        for k, v in sorted(t["params"].items()):
            console.print(f"  {k} = {v!r}")
