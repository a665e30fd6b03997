"""The ``hpo`` command line. Commands import heavy libraries only when they run."""

from __future__ import annotations

import typer

from hpo.cli import _ensemble, _generate, _run, _sample, _spaces, _study, _sync

app = typer.Typer(
    name="hpo",
    help="Hyperparameter optimization for Keras models: Optuna and hyperopt over one study "
    "store, trials in MLflow, weighted ensembles exported as one model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("run")(_run.run)
app.command("worker")(_run.worker)
app.command("ui")(_run.ui)
app.add_typer(_spaces.app, name="spaces")
app.add_typer(_study.app, name="study")
app.add_typer(_ensemble.app, name="ensemble")
app.command("export")(_ensemble.export)
app.command("predict")(_ensemble.predict)
app.command("generate")(_generate.generate)
app.command("sample")(_sample.sample)
app.command("sync")(_sync.sync)


def main() -> None:
    app()
