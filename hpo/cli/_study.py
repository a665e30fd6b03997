"""``hpo study``: create, list, inspect studies in the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.text import Text

from hpo.cli._common import (
    AlgorithmOption,
    DatasetOption,
    EpochsOption,
    JsonOption,
    StorageOption,
    StudyNameOption,
    StudyTimeoutGraceOption,
    StudyTimeoutOption,
    SubsetOption,
    TrackingUriOption,
    TrialsOption,
    TrialTimeoutOption,
    console,
    create_study,
    handled_errors,
    print_json,
    print_table,
    study_options,
)

app = typer.Typer(help="Create and inspect studies.", no_args_is_help=True)


@app.command("create")
def create(
    ctx: typer.Context,
    space: Path = typer.Argument(..., help="Search-space file."),
    name: StudyNameOption = None,
    old_name: str | None = typer.Option(
        None, "--name", hidden=True, help="Old spelling of --study."
    ),
    trials: TrialsOption = None,
    algorithm: AlgorithmOption = None,
    pruner: str | None = typer.Option(None, "--pruner", help="Pruner."),
    seed: int | None = typer.Option(None, "--seed", help="Seed."),
    storage: StorageOption = None,
    tracking_uri: TrackingUriOption = None,
    dataset: DatasetOption = None,
    epochs: EpochsOption = None,
    subset: SubsetOption = None,
    trial_timeout: TrialTimeoutOption = None,
    study_timeout: StudyTimeoutOption = None,
    study_timeout_grace: StudyTimeoutGraceOption = None,
    priority: int = typer.Option(0, "--priority", help="Workers serve higher priority first."),
    max_retries: int = typer.Option(
        1, "--max-retries", min=0, help="Retries of a trial whose worker died."
    ),
    skip_data_check: bool = typer.Option(
        False,
        "--skip-data-check",
        help="Do not load the dataset here first (when only the workers' machines have it).",
    ),
    json_out: JsonOption = False,
) -> None:
    """Create a study that workers (`hpo worker --study NAME`) can join from any machine."""
    with handled_errors():
        config = create_study(
            space,
            study_options(ctx.params, name=name or old_name),
            name_option="--name" if name is None and old_name is not None else "--study",
            resume_hint="continue it with hpo run --resume",
        ).config
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
            f"created study [bold]{escape(config.name)}[/]: {config.n_trials} trials, "
            f"{escape(config.algorithm)}, pruner {escape(config.pruner)}"
        )


@app.command("list")
def list_studies(
    storage: StorageOption = None,
    json_out: JsonOption = False,
) -> None:
    """List the studies in the store with their progress."""
    from rich.table import Table

    from hpo.api import list_studies

    with handled_errors():
        rows = list_studies(storage)
    if json_out:
        print_json(rows)
        return
    table = Table(
        "study",
        "state",
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
            table.add_row(Text(r["name"]), "", "(not an hpo study)", *[""] * 7)
            continue
        table.add_row(
            Text(r["name"]),
            Text(r["state"]),
            Text(r["family"]),
            Text(r["algorithm"]),
            f"{r['finished']}/{r['n_trials']}",
            str(r["complete"]),
            str(r["pruned"]),
            str(r["failed"]),
            str(r["running"]),
            _fmt(r["best_values"]),
        )
    print_table(table)
    for r in rows:
        if r.get("broken_reason"):
            console.print(f"{escape(r['name'])} is broken: {escape(r['broken_reason'])}")


def _fmt(values: list[float] | None) -> str:
    return ", ".join(f"{v:.4g}" for v in values) if values else "-"


@app.command("status")
def status(
    name: str = typer.Argument(..., help="Study name."),
    storage: StorageOption = None,
    json_out: JsonOption = False,
) -> None:
    """Trials finished, pruned, failed and running, the best value so far, and the bytes the
    trial runs hold in MLflow (with what the retention policy freed)."""
    from hpo.api import load_study
    from hpo.storage.unread_params import describe_unread_params

    with handled_errors():
        study = load_study(name, storage)
        st = study.status()
    artifacts = _artifact_usage(study)
    if json_out:
        print_json({**st.to_dict(), "artifacts": artifacts})
        return
    console.print(
        f"[bold]{escape(st.name)}[/] "
        + escape(f"({st.family} on {st.dataset}, {st.algorithm}, pruner {st.pruner})")
        + "\n"
        f"  finished {st.finished}/{st.n_trials}: {st.complete} complete, {st.pruned} pruned, "
        f"{st.failed} failed; {st.running} running"
        + (f"; {st.infeasible} infeasible (not best)" if st.infeasible else "")
        + "\n"
        f"  best: {_fmt(st.best_values)}"
        + (f" (trial {st.best_trial})" if st.best_trial is not None else "")
        + f"\n  state: {st.state}"
        + (f": {escape(st.broken_reason)}" if st.broken_reason else "")
        + ("\n  fix the cause, then `hpo study resume` serves it again" if st.broken_reason else "")
        + (f"\n  {escape(describe_unread_params(st.unread_params))}" if st.unread_params else "")
        + f"\n  artifacts: {escape(_describe_usage(artifacts))}"
        + _deadline_line(st)
        + (f"\n  ended: {st.end_reason}" if st.end_reason else "")
    )


def _deadline_line(st: Any) -> str:
    """The study's deadline, when it has one: passed, or how long is left."""
    import time

    from hpo.cli._common import format_time

    if st.deadline is None:
        if st.study_timeout is None:
            return ""
        return f"\n  deadline: {st.study_timeout:g} s after the first claimed trial (none yet)"
    if st.deadline_reached:
        return f"\n  deadline: {format_time(st.deadline)} (reached: no new trials)"
    return f"\n  deadline: {format_time(st.deadline)} (in {st.deadline - time.time():.0f} s)"


def _artifact_usage(study: Any) -> dict[str, Any]:
    """What the study's trial runs hold in MLflow, or why that is unknown (status still shows)."""
    from hpo.errors import HpoError
    from hpo.storage import mask_url

    try:
        return dict(study.artifact_usage())
    except HpoError as exc:
        return {"bytes": None, "unknown": mask_url(str(exc))}
    except Exception as exc:  # the store's own errors: status must still show the rest
        return {"bytes": None, "unknown": mask_url(f"{type(exc).__name__}: {exc}")[:500]}


def _describe_usage(usage: dict[str, Any]) -> str:
    if usage.get("bytes") is None:
        return f"unknown ({usage.get('unknown')})"
    text = (
        f"{_size(usage['bytes'])} in {usage['runs']} trial runs, "
        f"{usage['runs_with_model']} with a model"
    )
    if usage["removed_runs"]:
        text += (
            f"; model files of {usage['removed_runs']} trials removed by the retention policy "
            f"({_size(usage['freed_bytes'])} freed)"
        )
    return text


def _size(n: int) -> str:
    """Bytes, and the same in kB/MB/GB when large (decimal units)."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n:,} bytes ({n / scale:.1f} {unit})"
    return f"{n:,} bytes"


def _whole_number(text: str) -> int | str:
    """``text`` as an int when it is one (else as given, for the error to quote)."""
    try:
        return int(text)
    except ValueError:
        return text


@app.command("retain")
def retain(
    name: str = typer.Argument(..., help="Study name."),
    keep_best: str | None = typer.Option(
        None,
        "--keep-best",
        help="Trials whose model files are kept (default: the space's retention.keep_best).",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Report what would go; delete nothing."),
    storage: StorageOption = None,
    json_out: JsonOption = False,
) -> None:
    """Delete the model files of trials neither among the best K nor in a registered ensemble.

    Their runs keep metrics, parameters, history and curves; only the model and its
    prediction files go. `--dry-run` lists what would be deleted.
    """
    from hpo.api import load_study
    from hpo.cli._common import fail
    from hpo.tracking.retention import check_keep_best

    with handled_errors():
        keep = None if keep_best is None else check_keep_best(_whole_number(keep_best))
        report = load_study(name, storage).retain(keep, dry_run=dry_run)
    if json_out:
        print_json(report.to_dict())
    else:
        verb = "would delete" if dry_run else "deleted"
        console.print(
            f"study [bold]{escape(name)}[/]: kept the model files of the best "
            f"{len(report.best_trials)} trial(s) {report.best_trials}"
            + (f" and of ensemble members {report.member_trials}" if report.member_trials else "")
            + f"; {verb} those of {len(report.removed_trials)} trial(s) "
            + f"{report.removed_trials}: {_size(report.bytes_freed)} "
            + ("would be freed, " if dry_run else "freed, ")
            + f"{_size(report.bytes_kept)} "
            + ("would be kept" if dry_run else "kept"),
            highlight=False,
        )
    if report.problems:
        fail("; ".join(report.problems), 1)


@app.command("best")
def best(
    name: str = typer.Argument(..., help="Study name."),
    storage: StorageOption = None,
    json_out: JsonOption = False,
) -> None:
    """The best trial: its values, parameters and MLflow run."""
    from hpo.api import load_study
    from hpo.cli._common import fail

    with handled_errors():
        study = load_study(name, storage)
        summary = study.best_summary()
        constrained = bool(summary is None and study.config.spec().constraints)
    if summary is None:
        meets = " that meets its constraints" if constrained else ""
        fail(f"study {name!r} has no complete trial{meets} yet", 1)
    if json_out:
        print_json(summary)
        return
    for t in summary["best_trials"]:
        console.print(
            f"[bold]trial {t['number']}[/]: values {_fmt(t['values'])}, "
            + escape(f"{t['params_count']} parameters, MLflow run {t['mlflow_run_id']}")
        )
        for k, v in sorted(t["params"].items()):
            console.print(f"  {k} = {v!r}", markup=False, highlight=False)


@app.command("pareto")
def pareto(
    name: str = typer.Argument(..., help="Study name."),
    output: Path = typer.Option(
        Path("pareto_front.png"), "--output", "-o", help="The PNG to write."
    ),
    storage: StorageOption = None,
    tracking_uri: TrackingUriOption = None,
) -> None:
    """Draw the Pareto front's generated images (style_transfer studies) in one PNG.

    One row ordered by the first objective, each image captioned with its trial number.
    """
    from hpo.api import load_study

    with handled_errors():
        numbers = load_study(name, storage).pareto_grid(output, tracking_uri)
    console.print(
        escape(f"wrote {output}: Pareto trials {', '.join(f'#{n}' for n in numbers)}"),
        highlight=False,
    )


@app.command("report")
def report(
    name: str = typer.Argument(..., help="Study name."),
    by: str = typer.Option(..., "--by", help="A categorical (or any) parameter to group by."),
    storage: StorageOption = None,
    json_out: JsonOption = False,
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="Do not attach the plot."),
) -> None:
    """Compare the values of one parameter: trials, best and median objective, epoch time, size.

    For example `hpo study report image_cnn --by conv_type` tells whether SeparableConv2D
    trains faster than Conv2D and how accurate each is. The plot is attached to the study's
    MLflow run as `report_by_<param>.png`.
    """
    from rich.table import Table

    from hpo.api import load_study

    with handled_errors():
        study = load_study(name, storage)
        rows = study.report(by, log_plot=not no_mlflow)
        metric = study.metrics[0]
    if json_out:
        print_json({"study": name, "by": by, "metric": metric, "rows": rows})
        return
    table = Table(
        escape(by),
        "trials",
        "complete",
        "pruned",
        "failed",
        "infeasible",
        escape(f"best {metric}"),
        escape(f"median {metric}"),
        "median s/epoch",
        "median params",
        title=escape(f"{name}: by {by}"),
    )

    def cell(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    for r in rows:
        table.add_row(
            Text(str(r["value"])),
            str(r["trials"]),
            str(r["complete"]),
            str(r["pruned"]),
            str(r["failed"]),
            str(r["infeasible"]),
            cell(r[f"best_{metric}"], ".4f"),
            cell(r[f"median_{metric}"], ".4f"),
            cell(r["median_epoch_seconds"], ".2f"),
            cell(r["median_params_count"], ",.0f"),
        )
    print_table(table)


def _set_state(name: str, storage: str | None, state: str, json_out: bool) -> None:
    from hpo.api import Study, load_study

    change = {"paused": Study.pause, "active": Study.resume, "cancelled": Study.cancel}[state]
    with handled_errors():
        change(load_study(name, storage))
    if json_out:
        print_json({"study": name, "state": state})
    else:
        console.print(f"study [bold]{escape(name)}[/] is {state}")


@app.command("enqueue")
def enqueue(
    name: str = typer.Argument(..., help="Study name."),
    params: list[str] = typer.Option(
        [],
        "--params",
        help="One configuration as JSON, e.g. '{\"learning_rate\": 0.01}' (repeatable).",
    ),
    file: Path | None = typer.Option(
        None, "--file", help="A JSON or YAML file with a list of configurations."
    ),
    from_study: str | None = typer.Option(
        None, "--from-study", help="Another study in the store: start from its best trials."
    ),
    top: int = typer.Option(1, "--top", help="How many of --from-study's best trials."),
    storage: StorageOption = None,
    json_out: JsonOption = False,
) -> None:
    """Queue known configurations into a study: workers train them before the sampler proposes.

    Every configuration is checked against the study's space and budget before any is queued.
    """
    import json

    from hpo.api import load_study
    from hpo.errors import UsageError

    with handled_errors():
        given = []
        for i, text in enumerate(params):
            try:
                given.append(json.loads(text))
            except ValueError as exc:
                raise UsageError(f"--params #{i + 1}: not valid JSON: {exc}") from None
        if not given and file is None and from_study is None:
            raise UsageError("give configurations with --params, --file or --from-study")
        study = load_study(name, storage)
        queued = study.enqueue(given or None, file=file, from_study=from_study, top=top)
    if json_out:
        print_json({"study": name, "enqueued": queued})
    else:
        console.print(f"queued {queued} configuration(s) into study [bold]{escape(name)}[/]")


@app.command("pause")
def pause(
    name: str = typer.Argument(..., help="Study name."),
    storage: StorageOption = None,
    json_out: JsonOption = False,
) -> None:
    """Stop handing out new trials of a study (running trials finish)."""
    _set_state(name, storage, "paused", json_out)


@app.command("resume")
def resume(
    name: str = typer.Argument(..., help="Study name."),
    storage: StorageOption = None,
    json_out: JsonOption = False,
) -> None:
    """Hand out trials of a paused study again."""
    _set_state(name, storage, "active", json_out)


@app.command("cancel")
def cancel(
    name: str = typer.Argument(..., help="Study name."),
    storage: StorageOption = None,
    json_out: JsonOption = False,
) -> None:
    """End a study for good: no new trials (running trials finish)."""
    _set_state(name, storage, "cancelled", json_out)


@app.command("reap")
def reap(
    name: str = typer.Argument(..., help="Study name."),
    storage: StorageOption = None,
    grace_period: int = typer.Option(
        30, "--grace-period", min=2, help="Seconds without heartbeat that make a trial stale."
    ),
    json_out: JsonOption = False,
) -> None:
    """Fail and requeue trials whose worker died (what every worker's reaper does)."""
    from hpo.api import load_study

    with handled_errors():
        reaped = load_study(name, storage).reap(grace_period)
    if json_out:
        print_json({"study": name, "reaped": reaped})
    else:
        console.print(f"reaped {len(reaped)} trial(s): {reaped}")
