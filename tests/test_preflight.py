"""Bad data stops `hpo run` / `hpo study create` before any trial, with exit status 2.

Each case runs the real command line (in process, through Typer's runner) on a real loader and
checks the message names what is wrong and that nothing was written: no study store, no MLflow
store, no study.
"""

from __future__ import annotations

import json
from pathlib import Path
from textwrap import dedent

import psutil
import pytest
from typer.testing import CliRunner

from hpo.cli import app

OBJECTIVE = "objective: {metric: val_accuracy, direction: maximize}\nbudget: {max_epochs: 1}\n"


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def write_space(root: Path, family: str, dataset: str, params: str = "units: 8") -> Path:
    path = root / "space.yaml"
    path.write_text(
        f"name: pre\nfamily: {family}\ndataset: {dataset}\n{OBJECTIVE}params: {{{params}}}\n"
    )
    return path


def assert_nothing_written(root: Path) -> None:
    assert not (root / "hpo.db").exists(), "the study store was written before the data check"
    assert not (root / "mlflow.db").exists(), "MLflow was written before the data check"
    # hpo run starts its workers before the data check: they are gone, and so are their logs.
    assert not (root / "hpo-logs").exists()
    workers = [c for c in psutil.Process().children(recursive=True) if "worker" in c.cmdline()]
    assert not workers, [c.cmdline() for c in workers]


@pytest.mark.parametrize("command", ["run", "create"])
def test_images_given_to_a_text_family(workdir: Path, command: str) -> None:
    space = write_space(workdir, "text_conv1d", "{name: digits}")
    args = ["run", str(space), "--trials", "1"] if command == "run" else ["study", "create"]
    if command == "create":
        args.append(str(space))
    code, _, err = invoke(*args)
    assert code == 2, err
    assert "text_conv1d" in err and "digits" in err
    assert "integer token sequences" in err or "token" in err
    assert_nothing_written(workdir)


def test_missing_tabular_file_names_where_it_looked(workdir: Path) -> None:
    missing = workdir / "nowhere" / "data.csv"
    space = write_space(workdir, "dense_bn", f"{{name: tabular, options: {{path: {missing}}}}}")
    code, _, err = invoke("run", str(space), "--trials", "1")
    assert code == 2
    assert str(missing) in err.replace("\n", "")
    assert_nothing_written(workdir)


def test_csv_without_the_label_column(workdir: Path) -> None:
    csv = workdir / "data.csv"
    csv.write_text("a,b,kind\n1,2,x\n3,4,y\n5,6,x\n7,8,y\n")
    space = write_space(
        workdir, "dense_bn", f"{{name: tabular, options: {{path: {csv}, label: label}}}}"
    )
    code, _, err = invoke("study", "create", str(space))
    assert code == 2
    flat = err.replace("\n", " ")
    assert "'label'" in flat and "kind" in flat  # the missing column and the columns found
    assert_nothing_written(workdir)


def test_empty_text_file_for_a_language_model(workdir: Path) -> None:
    empty = workdir / "empty.txt"
    empty.write_text("")
    space = workdir / "lm.yaml"
    space.write_text(
        dedent(
            f"""\
            name: lm
            family: char_lstm
            dataset: {{name: text_corpus, options: {{path: {empty}, maxlen: 10, step: 3}}}}
            objective: {{metric: val_loss, direction: minimize}}
            budget: {{max_epochs: 1}}
            params: {{units: 8, learning_rate: 0.01}}
            """
        )
    )
    code, _, err = invoke("run", str(space), "--trials", "1")
    assert code == 2
    assert str(empty) in err.replace("\n", "") and "empty" in err
    assert_nothing_written(workdir)


def test_good_data_is_described_and_the_check_can_be_skipped(workdir: Path) -> None:
    space = write_space(workdir, "dense_bn", "{name: digits}")
    code, out, err = invoke("study", "create", str(space), "--json")
    assert code == 0, err
    assert json.loads(out)["study"] == "pre"
    assert "data: digits (classification): " in err and "10 classes" in err
    # An operator creating a study from a machine without the data (only workers have it).
    bad = write_space(workdir, "text_conv1d", "{name: digits}")
    code, out, err = invoke("study", "create", str(bad), "--name", "later", "--skip-data-check")
    assert code == 0, err
    assert "data:" not in err


def test_a_resumed_study_checks_the_data_it_was_created_with(workdir: Path) -> None:
    """Resuming needs no --subset again; the check describes the study's own data."""
    import hpo

    space = write_space(workdir, "dense_bn", "{name: digits}")
    code, _, err = invoke("study", "create", str(space), "--subset", "100")
    assert code == 0, err
    assert "100 train" in err, err
    notes: list[str] = []
    study = hpo.create_study(str(space), resume=True, echo=notes.append)
    assert not study.created
    assert len(notes) == 1 and "100 train" in notes[0], notes
