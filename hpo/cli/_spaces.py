"""``hpo spaces``: list, validate and show search-space files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from hpo.cli._common import (
    EXIT_USAGE,
    JsonOption,
    console,
    err_console,
    handled_errors,
    print_json,
    print_table,
)

app = typer.Typer(help="List, validate and show search-space files.", no_args_is_help=True)


@app.command("list")
def list_spaces(
    directory: Path = typer.Argument(Path("search_spaces"), help="Folder of space files."),
    json_out: JsonOption = False,
) -> None:
    """List the space files in a folder with their family, dataset and objective."""
    from rich.table import Table
    from rich.text import Text

    from hpo.spaces import SpaceError, load_spec

    rows: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.y*ml")):
        try:
            spec = load_spec(path)
            rows.append(
                {
                    "file": str(path),
                    "name": spec.name,
                    "family": spec.family,
                    "dataset": spec.dataset.name,
                    "objective": ", ".join(f"{o.direction} {o.metric}" for o in spec.objectives),
                    "params": len(spec.space.searched_nodes()),
                    "valid": True,
                }
            )
        except SpaceError as exc:
            rows.append(
                {
                    "file": str(path),
                    "name": path.stem,
                    "valid": False,
                    "errors": [str(i) for i in exc.issues],
                }
            )
    if json_out:
        print_json(rows)
        return
    table = Table("file", "family", "dataset", "objective", "params", "valid")
    for r in rows:
        table.add_row(
            Text(r["file"]),
            Text(r.get("family", "")),
            Text(r.get("dataset", "")),
            Text(r.get("objective", "")),
            str(r.get("params", "")),
            "yes" if r["valid"] else "[red]no[/]",
        )
    print_table(table)


@app.command("validate")
def validate(
    files: list[Path] = typer.Argument(..., help="Space files to check."),
    json_out: JsonOption = False,
) -> None:
    """Check space files; every problem names the file, the key path and the line."""
    from hpo.spaces import SpaceError, load_spec

    results = []
    bad = False
    for path in files:
        try:
            spec = load_spec(path)
            results.append(
                {"file": str(path), "valid": True, "name": spec.name, "params": spec.space.names()}
            )
            if not json_out:
                console.print(
                    f"[green]ok[/] {escape(str(path))} ({len(spec.space.names())} parameters)"
                )
        except SpaceError as exc:
            bad = True
            results.append(
                {
                    "file": str(path),
                    "valid": False,
                    "errors": [
                        {"file": i.file, "path": i.path, "line": i.line, "message": i.message}
                        for i in exc.issues
                    ],
                }
            )
            if not json_out:
                for issue in exc.issues:
                    err_console.print(f"[bold red]error:[/] {escape(str(issue))}", highlight=False)
    if json_out:
        print_json(results)
    if bad:
        raise typer.Exit(EXIT_USAGE)


@app.command("show")
def show(
    file: Path = typer.Argument(..., help="Space file."),
    json_out: JsonOption = False,
) -> None:
    """Show a space as a tree, conditional branches visible."""
    from hpo.spaces import load_spec
    from hpo.spaces._render import space_tree

    with handled_errors():
        spec = load_spec(file)
    if json_out:
        print_json(
            {
                "name": spec.name,
                "family": spec.family,
                "dataset": spec.dataset.model_dump(),
                "objectives": [o.model_dump() for o in spec.objectives],
                "budget": spec.budget.model_dump(),
                "defaults": spec.defaults.model_dump(),
                "retention": spec.retention.model_dump() if spec.retention else None,
                "params": [
                    {
                        "name": n.name,
                        "kind": n.param.type,
                        "spec": n.param.model_dump(exclude={"choices"})
                        | (
                            {"choices": [c.value for c in n.param.choices]}
                            if n.param.type == "categorical"
                            else {}
                        ),
                        "conditions": [list(c) for c in n.conditions],
                    }
                    for n in spec.space.nodes()
                ],
            }
        )
        return
    console.print(space_tree(spec))
