"""The command line through real subprocesses: help, spaces, studies, exit statuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, hpo

GOOD = """
family: image_cnn
dataset: {name: digits, subset: 200}
objective: {metric: val_accuracy, direction: maximize}
budget: {max_epochs: 1}
defaults: {algorithm: optuna-random, pruner: none, trials: 3}
params:
  learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  optimizer:
    type: categorical
    choices:
      adam: {beta_1: {type: float, low: 0.8, high: 0.99}}
      sgd: {momentum: {type: float, low: 0.0, high: 0.9}}
"""


def test_help_imports_no_heavy_library(tmp_path: Path) -> None:
    code = (
        "import sys; import hpo.cli; "
        "print([m for m in ('tensorflow', 'keras', 'mlflow', 'optuna', 'hyperopt', 'torch') "
        "if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    result = hpo("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("run", "worker", "spaces", "study", "ui"):
        assert command in result.stdout


def _main_with(setup: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """``hpo.cli.main()`` in a fresh interpreter after running ``setup`` there."""
    code = f"import sys; sys.argv = {['hpo', *argv]!r}; {setup}; from hpo.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_the_fast_exit_keeps_exit_handlers_statuses_and_waiting_threads() -> None:
    # main() skips interpreter teardown; what a normal exit does for a user must still happen.
    handler = "import atexit; atexit.register(lambda: print('exit handler ran', flush=True))"
    done = _main_with(handler, "--help")
    assert done.returncode == 0
    assert "Usage" in done.stdout and done.stdout.rstrip().endswith("exit handler ran")
    assert _main_with(handler, "no-such-command").returncode == 2
    thread = (
        "import threading, time; threading.Thread(target=lambda: (time.sleep(1), "
        "print('thread finished', flush=True))).start()"
    )
    waited = _main_with(thread, "--help")
    assert waited.returncode == 0 and "thread finished" in waited.stdout


def test_spaces_validate_accepts_the_shipped_spaces(tmp_path: Path) -> None:
    files = sorted(str(p) for p in (REPO / "search_spaces").glob("*.yaml"))
    assert files
    result = hpo("spaces", "validate", *files, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("ok") == len(files)


def test_spaces_validate_names_file_key_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("low: 0.8, high: 0.99", "low: 0.99, high: 0.8"))
    result = hpo("spaces", "validate", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{bad}:12: params.optimizer.choices.adam.beta_1: empty range" in result.stderr
    as_json = hpo("spaces", "validate", str(bad), "--json", cwd=tmp_path)
    assert as_json.returncode == 2
    [entry] = json.loads(as_json.stdout)
    assert entry["errors"][0]["line"] == 12


def test_bad_space_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("family: image_cnn", "family: no_such_family"))
    result = hpo("run", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown family 'no_such_family'" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


@pytest.mark.slow
def test_bad_flags_exit_2_and_write_nothing(tmp_path: Path) -> None:
    space = tmp_path / "good.yaml"
    space.write_text(GOOD)
    for args in (
        ["--algorithm", "nope"],
        ["--pruner", "nope"],
        ["--dataset", "nope"],
        ["--algorithm", "optuna-grid"],
    ):
        result = hpo("run", str(space), *args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert "error" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.yaml"]


@pytest.mark.slow
def test_spaces_show_and_list(tmp_path: Path) -> None:
    space = tmp_path / "good.yaml"
    space.write_text(GOOD)
    shown = hpo("spaces", "show", str(space), cwd=tmp_path)
    assert shown.returncode == 0
    assert "if optimizer = adam" in shown.stdout and "beta_1" in shown.stdout
    data = json.loads(hpo("spaces", "show", str(space), "--json", cwd=tmp_path).stdout)
    names = {p["name"]: p for p in data["params"]}
    assert names["optimizer.sgd.momentum"]["conditions"] == [["optimizer", "sgd"]]
    listed = json.loads(hpo("spaces", "list", str(tmp_path), "--json", cwd=tmp_path).stdout)
    assert listed[0]["family"] == "image_cnn" and listed[0]["valid"] is True


@pytest.mark.slow
def test_study_create_list_status(tmp_path: Path) -> None:
    space = tmp_path / "good.yaml"
    space.write_text(GOOD)
    created = hpo(
        "study", "create", str(space), "--name", "s1", "--trials", "5", "--json", cwd=tmp_path
    )
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["n_trials"] == 5
    again = hpo("study", "create", str(space), "--name", "s1", cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    listed = json.loads(hpo("study", "list", "--json", cwd=tmp_path).stdout)
    assert [s["name"] for s in listed] == ["s1"]
    status = json.loads(hpo("study", "status", "s1", "--json", cwd=tmp_path).stdout)
    assert (status["n_trials"], status["finished"], status["algorithm"]) == (5, 0, "optuna-random")
    missing = hpo("study", "status", "nope", cwd=tmp_path)
    assert missing.returncode == 2 and "no study named 'nope'" in missing.stderr
    best = hpo("study", "best", "s1", cwd=tmp_path)
    assert best.returncode == 1 and "no complete trial" in best.stderr


@pytest.mark.slow
def test_ui_serves_the_local_tracking_store(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    # A study's experiment already there: `hpo ui` prints where its trials are.
    from mlflow import MlflowClient

    study = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").create_experiment(
        "s1", tags={"hpo.study": "s1"}
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo", "ui", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        body = ""
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    body = r.read().decode()
                    break
            except OSError:
                time.sleep(1)
        assert body.strip() == "OK", proc.stdout.read().decode() if proc.stdout else ""
        assert (tmp_path / "mlflow.db").exists()
        # hpo's server app: the UI page makes a new browser open experiments on their runs.
        from hpo.tracking.mlflow_app import remember_training_script

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
            assert remember_training_script() in r.read().decode()
    finally:
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    out = proc.stdout.read().decode() if proc.stdout else ""
    base = f"http://127.0.0.1:{port}/#/experiments"
    assert f"on {base}?workflowType=machine_learning\n" in out, out
    page = f"{base}/{study}/runs?workflowType=machine_learning&viewStateShareKey=hpo"
    assert f"  study s1: {page}\n" in out, out


@pytest.mark.slow
def test_study_create_spells_the_study_option_as_run_does(tmp_path: Path) -> None:
    space = tmp_path / "good.yaml"
    space.write_text(GOOD)
    created = hpo("study", "create", str(space), "--study", "s1", "--skip-data-check", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    # Each message names the option as it was given; --name is the earlier spelling.
    for option in ("--study", "--name"):
        again = hpo("study", "create", str(space), option, "s1", "--skip-data-check", cwd=tmp_path)
        assert again.returncode == 2
        assert again.stderr.rstrip().endswith(f"or give another name with {option}"), again.stderr
        bad = hpo("study", "create", str(space), option, "bad!", cwd=tmp_path)
        assert bad.returncode == 2 and f"{option}: invalid study name" in bad.stderr
    listed = json.loads(hpo("study", "list", "--json", cwd=tmp_path).stdout)
    assert [s["name"] for s in listed] == ["s1"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ["generate", "nosuch"],
        ["generate", "text", "nosuch:3"],
        ["generate", "images", "nosuch"],
        ["sample", "nosuch"],
        ["generate", "models:/nosuch/1"],
        ["export", "nosuch", "-o", "out.keras"],
        ["predict", "nosuch", "--input", "in.csv"],
        ["ensemble", "show", "nosuch"],
    ],
    ids=lambda a: "-".join(a[:2]),
)
def test_commands_that_read_a_missing_model_create_no_store(
    tmp_path: Path, args: list[str]
) -> None:
    # Looking up a name must not leave an empty hpo.db or mlflow.db behind.
    result = hpo(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "nosuch" in lines[0] and "does not exist" in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def test_generate_groups_text_and_images_and_keeps_the_old_spellings() -> None:
    from typer.testing import CliRunner

    from hpo.cli import app

    runner = CliRunner()
    top = runner.invoke(app, ["--help"]).output
    assert "generate" in top and " sample " not in top  # the old name is hidden
    group = runner.invoke(app, ["generate", "--help"]).output
    assert "text" in group and "images" in group
    # `hpo generate MODEL` is `hpo generate text MODEL`; `hpo sample` is `hpo generate images`.
    for old, new in ((["generate"], ["generate", "text"]), (["sample"], ["generate", "images"])):
        old_help = runner.invoke(
            app, [*old, "--help"] if old == ["sample"] else [*old, "x", "--help"]
        )
        new_help = runner.invoke(app, [*new, "--help"])
        assert old_help.exit_code == new_help.exit_code == 0
        assert (
            old_help.output.split("Usage:")[1].split("\n", 2)[2]
            == (new_help.output.split("Usage:")[1].split("\n", 2)[2])
        )
