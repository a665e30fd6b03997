"""``hpo sync``: send the MLflow writes kept on local disk while the server was unreachable."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from hpo.cli._common import (
    EXIT_OK,
    EXIT_RUNTIME,
    JsonOption,
    console,
    err_console,
    print_json,
    tracking_uri_option,
)


def sync(
    tracking_uri: Annotated[
        str | None,
        tracking_uri_option(
            "Replay only this tracking URI's outbox (default: every outbox on this machine)."
        ),
    ] = None,
    wait: float = typer.Option(
        300.0, "--wait", min=0, help="Seconds to wait for a replay already running elsewhere."
    ),
    json_out: JsonOption = False,
) -> None:
    """Replay MLflow writes kept in the local outbox; exit 1 if some are still pending.

    Trials go on when the MLflow server is unreachable: their runs, metrics, parameters and
    artifacts wait in an outbox on local disk (``$HPO_OUTBOX_DIR``, default
    ``~/.cache/hpo/outbox``) and are sent, in order and exactly once, when a later write finds
    the server answering again. This command does it now and says what is left.
    """
    from hpo import tracking

    if tracking_uri:
        results = [tracking.sync(tracking_uri, timeout=wait)]
    else:
        results = tracking.sync_all(timeout=wait)
    pending = any(r.pending for r in results)
    if json_out:
        print_json({"outboxes": [r.to_dict() for r in results], "pending": pending})
    elif not results:
        console.print("nothing to sync: no outbox on this machine")
    else:
        for r in results:
            _print(r.to_dict())
    raise typer.Exit(EXIT_RUNTIME if pending else EXIT_OK)


def _print(r: dict[str, Any]) -> None:
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(r["replayed_by_kind"].items()))
    line = f"[bold]{escape(r['tracking_uri'])}[/]: replayed {r['replayed']} write(s)"
    console.print(line + (f" ({kinds})" if kinds else ""), highlight=False)
    for placeholder, real in sorted(r["mapped"].items()):
        console.print(f"  {placeholder} -> {real}", highlight=False, markup=False)
    for d in r["dropped"]:
        err_console.print(
            f"  [yellow]dropped[/] {escape(str(d['operation']))}: {escape(str(d['error']))}",
            highlight=False,
        )
    if r["pending"]:
        why = "another process is replaying it" if r["busy"] else (r["error"] or "")
        err_console.print(
            f"  [bold red]still pending:[/] {r['pending']} write(s), "
            f"{r['pending_runs']} run(s) not created yet" + (f" ({escape(why)})" if why else ""),
            highlight=False,
        )
    else:
        console.print("  nothing pending", highlight=False)
