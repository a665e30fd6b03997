"""The ``hpo`` command line. Commands import heavy libraries only when they run."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from hpo.cli import _ensemble, _generate, _refit, _run, _sample, _spaces, _study, _sync

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


class _TextByDefault(TyperGroup):
    """``hpo generate MODEL ...`` without a subcommand is ``hpo generate text MODEL ...``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["text", *args]
        return super().parse_args(ctx, args)


# One command for what generative families make, so that "sample" means hyperparameters alone.
generate = typer.Typer(
    cls=_TextByDefault,
    help="Generate from a trained generative model: text from a language model, images from "
    "a VAE or GAN.",
    no_args_is_help=True,
)
generate.command("text")(_generate.generate)
generate.command("images")(_sample.sample)
app.add_typer(generate, name="generate")
# `hpo sample` was the name of `hpo generate images`; kept for scripts that use it.
app.command("sample", hidden=True)(_sample.sample)
app.command("refit")(_refit.refit)
app.command("sync")(_sync.sync)


# Commands that load models and print results; they start no long-lived child process.
QUIET_COMMANDS = frozenset({"predict", "export", "ensemble", "refit", "generate", "sample"})


def main() -> None:
    """Run one ``hpo`` command, then exit without tearing the interpreter down."""
    import contextlib
    import sys

    from hpo.cli._quiet import quiet_native_stderr

    _quiet_tensorflow()
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    code: object = 0
    with quiet_native_stderr() if command in QUIET_COMMANDS else contextlib.nullcontext():
        try:
            app()
        except SystemExit as exc:
            code = exc.code
    _exit(code)


def _quiet_tensorflow() -> None:
    """TensorFlow's start-up notices (absl, oneDNN, retracing) are not for users of hpo."""
    import logging
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def _exit(code: object) -> None:
    """Exit with ``code`` (as ``sys.exit`` would) once exit handlers ran and output is flushed.

    Tearing down an interpreter that has loaded TensorFlow or MLflow takes about a second of
    native clean-up with nothing left to clean: every command and worker pays it at the end. The
    shortcut is taken only when no other non-daemon thread runs (a normal exit would wait for it).
    """
    import atexit
    import contextlib
    import logging
    import os
    import sys
    import threading

    others = [
        t
        for t in threading.enumerate()
        if t is not threading.main_thread() and not t.daemon and t.is_alive()
    ]
    if others:
        sys.exit(code)  # type: ignore[arg-type]
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): print it, exit 1
        print(code, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing to flush to
            stream.flush()
    os._exit(status)
