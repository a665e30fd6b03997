"""Hostile and odd input: names, space files, CLI values, store URLs (issue #19).

The standard: bad input gets one line naming the file, key or value and what is wrong, exit
status 2, nothing written, no traceback. Hypothesis generates the names, texts and spaces.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from hpo.names import MAX_NAME_LENGTH, MAX_PARAM_NAME_LENGTH, check_name, name_problem
from hpo.spaces import SpaceError, parse_params, parse_spec

from conftest import hpo

FAST = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

BASE = """
family: image_cnn
dataset: {name: digits, subset: 200}
objective: {metric: val_accuracy, direction: maximize}
budget: {max_epochs: 1}
defaults: {algorithm: optuna-random, pruner: none, trials: 3}
params:
  lr: {type: float, low: 0.001, high: 0.1}
"""

# Text that hostile users type: path pieces, markup, control characters, anything.
hostile_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.sampled_from(list("./\\[]:\n\r\t -_aZ0~$")), max_size=20),
    st.sampled_from(["..", ".", "/etc/passwd", "../../x", "x\n", "x[/]y", "[bold]", "-x", ""]),
    st.text(alphabet="ab", min_size=MAX_NAME_LENGTH - 2, max_size=MAX_NAME_LENGTH + 300),
)


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# -- 1. one name rule ----------------------------------------------------------------------------


@FAST
@given(hostile_text)
def test_a_study_name_that_passes_stays_inside_its_folder(name: str) -> None:
    if name_problem(name) is not None:
        return
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name) and len(name) <= MAX_NAME_LENGTH
    logs = Path("/base/hpo-logs")
    assert (logs / name).resolve().parent == logs  # not "..", not absolute, no "/"
    assert not name.startswith("-")  # not an option either


@pytest.mark.parametrize(
    "name", ["..", ".", "../../x", "/tmp/x", "x\n", "x/y", "x[/]y", "-x", "", "a" * 101]
)
def test_bad_study_and_ensemble_names_are_refused(name: str) -> None:
    assert name_problem(name, "study") and name_problem(name, "ensemble")
    with pytest.raises(ValueError, match="name"):
        check_name(name)


@FAST
@given(st.text(min_size=1, max_size=300))
def test_parameter_names_that_pass_are_valid_mlflow_keys(key: str) -> None:
    from mlflow.utils.validation import _validate_param_name

    _, problems = parse_params({key: {"type": "float", "low": 0.0, "high": 1.0}})
    if problems:
        assert problems[0][0] == ("params", key)
        return
    assert len(key) <= MAX_PARAM_NAME_LENGTH <= 250  # MLflow's parameter key limit
    _validate_param_name(key)  # raises for names MLflow refuses


def test_a_300_character_parameter_name_is_refused_with_its_path() -> None:
    _, problems = parse_params({"p" * 300: 1})
    assert len(problems) == 1 and "at most 200" in problems[0][1]
    # The limit is on the whole path name, options included.
    nested = {"o": {"type": "categorical", "choices": {"a": {"q" * 198: 1}}}}
    _, problems = parse_params(nested)
    assert problems and "o.a." in problems[0][1]


def test_create_study_refuses_a_bad_name(tmp_path: Path) -> None:
    from hpo.storage import open_storage
    from hpo.storage.studies import StudyConfig, StudyError, create_study

    store = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    for bad in ("..", "x\n", "x[/]y"):
        config = StudyConfig(bad, BASE, "b.yaml", "optuna-random", "none", 3)
        with pytest.raises(StudyError, match="invalid study name"):
            create_study(store, config)


def test_ensemble_build_refuses_a_bad_name() -> None:
    from hpo.ensemble import EnsembleError, build_ensemble

    with pytest.raises(EnsembleError, match="invalid ensemble name"):
        build_ensemble(["s"], "../x")


@pytest.mark.parametrize("name", ['"x\\n"', '".."', "'../../x'", "/abs", "'-x'"])
def test_a_bad_name_in_the_space_file_is_refused(name: str) -> None:
    with pytest.raises(SpaceError, match="name: invalid study name"):
        parse_spec(BASE + f"name: {name}\n", "s.yaml")


@pytest.mark.slow
def test_cli_names_are_checked_before_anything_is_written(tmp_path: Path) -> None:
    space = tmp_path / "base.yaml"
    space.write_text(BASE)
    for args in (
        ["run", str(space), "--study", "../../x"],
        ["run", str(space), "--study", str(tmp_path / "abs")],
        ["study", "create", str(space), "--name", "x\n"],
        ["study", "create", str(space), "--name", "x[/]y"],
        ["worker", "--study", ".."],
    ):
        result = hpo(*args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert "invalid study name" in _one_error_line(result.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.yaml"]


@FAST
@given(name=hostile_text)
def test_hostile_study_options_exit_2_in_one_line(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from hpo.cli import app

    assume(name_problem(name) is not None and not name.startswith("-") and "\x00" not in name)
    monkeypatch.chdir(tmp_path)
    space = tmp_path / "base.yaml"
    space.write_text(BASE)
    result = CliRunner().invoke(app, ["study", "create", str(space), "--name", name])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "invalid study name" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.yaml"]


# -- 2. Rich markup in user text -------------------------------------------------------------------


@FAST
@given(st.text(max_size=60) | st.sampled_from(["x[/]y", "[bold]", "a\\", "[/]", "[red"]))
@example("x[/]y")
@example("0E0")
def test_errors_and_trees_print_any_text(text: str) -> None:
    import typer
    from rich.console import Console

    from hpo.cli import _common
    from hpo.spaces._render import space_tree

    out = Console(file=open(os.devnull, "w"), width=100)  # noqa: SIM115
    saved = _common.err_console
    _common.err_console = out
    try:
        with pytest.raises(typer.Exit):
            _common.fail(text)
        with pytest.raises(typer.Exit), _common.handled_errors():
            parse_spec(BASE + f"description: {json.dumps(text)}\nbudget: {json.dumps(text)}\n")
    finally:
        _common.err_console = saved
    # Every scalar double-quoted: plain, 0E0 would be read as a number (as YAML 1.2 and hpo
    # read it), which PyYAML's YAML 1.1 dumper does not quote.
    objective = yaml.safe_dump(
        {"objective": {"metric": text or "m", "direction": "minimize"}}, default_style='"'
    )
    spec = parse_spec(re.sub(r"objective: .*", lambda _: objective, BASE), "s.yaml")
    out.print(space_tree(spec))


@pytest.fixture(scope="module")
def odd_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A store with studies whose names came in before names were checked (any text)."""
    import optuna

    from hpo.storage import open_storage
    from hpo.storage.studies import STATE_ATTR, StudyConfig, save_config

    root = tmp_path_factory.mktemp("odd")
    url = f"sqlite:///{root / 'hpo.db'}"
    store = open_storage(url)
    for name in ["x[/]y", "[bold]b", "a\\", "]["]:
        study = optuna.create_study(storage=store, study_name=name)
        store.set_study_system_attr(study._study_id, STATE_ATTR, "active")
        config = StudyConfig(
            name, BASE.replace("val_accuracy", '"[/]m"'), "[x].yaml", "a[/]", "p", 3
        )
        save_config(store, study, config)
    return root, url


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=st.text(min_size=1, max_size=30))
def test_listing_and_status_print_any_stored_name(name: str, odd_store: tuple[Path, str]) -> None:
    import optuna
    from typer.testing import CliRunner

    from hpo.cli import app
    from hpo.storage import open_storage

    assume("\x00" not in name)
    _, url = odd_store
    store = open_storage(url)
    if name not in [s.study_name for s in optuna.get_all_study_summaries(store)]:
        optuna.create_study(storage=store, study_name=name)  # a foreign (non-hpo) study too
    runner = CliRunner()
    listed = runner.invoke(app, ["study", "list", "--storage", url])
    assert listed.exit_code == 0, listed.output
    assert listed.exception is None
    for command in (["status", name], ["pause", name], ["best", name]):
        result = runner.invoke(app, ["study", *command, "--storage", url])
        assert result.exception is None or isinstance(result.exception, SystemExit), command
        assert result.exit_code in (0, 1, 2)


def test_study_list_shows_odd_stored_names(odd_store: tuple[Path, str]) -> None:
    root, url = odd_store
    listed = hpo("study", "list", "--storage", url, cwd=root, env={"COLUMNS": "300"})
    assert listed.returncode == 0, listed.stderr
    assert "x[/]y" in listed.stdout and "[bold]b" in listed.stdout
    status = hpo("study", "status", "x[/]y", "--storage", url, cwd=root)
    assert status.returncode == 0 and "x[/]y" in status.stdout, status.stderr


# -- 3. limits of the space language ---------------------------------------------------------


def _nested(depth: int) -> dict[str, Any]:
    inner: dict[str, Any] = {"x": {"type": "float", "low": 0.0, "high": 1.0}}
    for _ in range(depth):
        inner = {"c": {"type": "categorical", "choices": {"a": inner, "b": None}}}
    return inner


def test_nesting_at_the_limit_runs_on_both_engines() -> None:
    import optuna

    from hpo.engines import create_sampler
    from hpo.spaces import SearchSpace, suggest
    from hpo.spaces._params import MAX_CONDITIONAL_DEPTH

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("hyperopt").setLevel(logging.WARNING)
    params, problems = parse_params(_nested(MAX_CONDITIONAL_DEPTH))
    assert not problems
    space = SearchSpace(params)
    for algorithm in ("hyperopt-tpe", "optuna-tpe"):
        sampler = create_sampler(algorithm, space, seed=0, directions=["minimize"], n_trials=6)
        study = optuna.create_study(sampler=sampler)
        study.optimize(lambda t: float(len(suggest(t, space))), n_trials=6)
        assert len(study.trials) == 6
        assert all(t.state.name == "COMPLETE" for t in study.trials)
    _, problems = parse_params(_nested(MAX_CONDITIONAL_DEPTH + 1))
    assert len(problems) == 1 and f"at most {MAX_CONDITIONAL_DEPTH}" in problems[0][1]


ALIAS_BOMB = """
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
"""


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (ALIAS_BOMB, "aliases (*name) are expanded: refused"),
        ('  s: "' + "x" * 1_000_001 + '"\n', "larger than 1,000,000 bytes"),
        ('  s: "' + "x" * 20_000 + '"\n', "params.s: text of 20,000 characters"),
        ("  c: {type: categorical, choices: [" + ",".join(map(str, range(20_000))) + "]}\n",
         "params.c.choices: 20,000 choices"),
        ("  n: {type: int, low: 0, high: 99999999999999999999}\n", "outside the 64-bit range"),
        ("  n: -9223372036854775809\n", "outside the 64-bit range"),
        ("defaults: {seed: -1}\n", "defaults.seed"),
        ("dataset: {name: digits, seed: 4294967296}\n", "dataset.seed"),
        ("family: os:no_such_attr\n", "module 'os' has no attribute 'no_such_attr'"),
        ("family: os:sep\n", "expected a Family subclass or a build(hp, data) function"),
        ("family: json:JSONDecoder\n", "not a subclass of hpo.families.Family"),
        ("family: no_such_module_x:build\n", "cannot find module"),
    ],
)  # fmt: skip
def test_space_limits_are_one_clear_issue(extra: str, fragment: str) -> None:
    text = BASE + extra
    if extra.startswith(("defaults", "dataset", "family")):  # replaces the section
        key = extra.split(":", 1)[0]
        text = "\n".join(line for line in BASE.splitlines() if not line.startswith(key)) + (
            "\n" + extra
        )
    with pytest.raises(SpaceError) as caught:
        parse_spec(text, "s.yaml")
    assert len(caught.value.issues) == 1, caught.value
    assert fragment in str(caught.value.issues[0])


def test_a_huge_file_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    from hpo.spaces import load_spec

    big = tmp_path / "big.yaml"
    with big.open("wb") as f:
        f.truncate(50_000_000)  # sparse: no disk used
    with pytest.raises(SpaceError, match="larger than"):
        load_spec(big)


keys = st.text(alphabet="abc_", min_size=1, max_size=4)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))
yaml_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
param_specs = st.one_of(
    yaml_values,
    st.fixed_dictionaries(
        {"type": st.sampled_from(["float", "int", "categorical", "constant", "x"])},
        optional={
            "low": scalars, "high": scalars, "step": scalars, "log": scalars,
            "choices": yaml_values, "value": yaml_values,
        },
    ),
)  # fmt: skip


@FAST
@given(st.dictionaries(st.one_of(keys, hostile_text), param_specs, max_size=4))
def test_any_params_give_a_valid_space_or_space_errors(params: dict[str, Any]) -> None:
    text = BASE.split("params:")[0] + yaml.safe_dump({"params": params}, allow_unicode=True)
    try:
        spec = parse_spec(text, "s.yaml")
    except SpaceError as exc:
        assert exc.issues and all("\n" not in str(i).strip("\n") or True for i in exc.issues)
        return
    for name in spec.space.names():
        assert len(name) <= MAX_PARAM_NAME_LENGTH


# -- 4. store URLs, read-only commands, --resume ---------------------------------------------


@pytest.mark.parametrize(
    ("url", "code", "fragment"),
    [
        ("foo://", 2, "unknown database 'foo'"),
        ("not a url", 2, "invalid --storage URL"),
        ("sqlite:///", 2, "give the SQLite file"),
        ("mysql://u:secret@127.0.0.1/x", 2, "driver 'mysql' is not installed"),
        ("sqlite:////proc/hpo-test/x.db", 1, "cannot open the study store"),
        ("postgresql+psycopg://u:secret@127.0.0.1:1/x", 1, "cannot open the study store"),
    ],
)
def test_bad_storage_urls_are_one_line(url: str, code: int, fragment: str, tmp_path: Path) -> None:
    space = tmp_path / "base.yaml"
    space.write_text(BASE)
    result = hpo("study", "create", str(space), "--skip-data-check", "--storage", url,
                 cwd=tmp_path)  # fmt: skip
    assert result.returncode == code, result.stderr
    line = _one_error_line(result.stderr)
    assert fragment in line and "secret" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.yaml"]


@pytest.mark.slow
def test_read_only_commands_create_no_store(tmp_path: Path) -> None:
    for args in (
        ["study", "status", "nope"],
        ["study", "best", "nope"],
        ["study", "report", "nope", "--by", "lr"],
        ["study", "cancel", "nope"],
        ["ensemble", "show", "nope"],
    ):
        result = hpo(*args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert "nope" in _one_error_line(result.stderr)
    for args in (["study", "list", "--json"], ["ensemble", "list", "--json"]):
        result = hpo(*args, cwd=tmp_path)
        assert result.returncode == 0 and json.loads(result.stdout) == [], result.stderr
    assert list(tmp_path.iterdir()) == []


def test_seed_out_of_range_is_refused(tmp_path: Path) -> None:
    space = tmp_path / "base.yaml"
    space.write_text(BASE)
    for seed in ("-1", str(2**32), str(2**70)):
        result = hpo("run", str(space), "--seed", seed, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert "--seed" in _one_error_line(result.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.yaml"]


def test_resume_refuses_other_settings_and_cancelled_studies(workdir: Path) -> None:
    import hpo
    from hpo.errors import UsageError
    from hpo.storage.studies import StudyError, set_study_state

    space = workdir / "base.yaml"
    space.write_text(BASE)
    args = hpo.StudyOptions(name="s", check_data=False)
    study = hpo.create_study(space, args, name_option="--study")
    assert study.created
    with pytest.raises(StudyError, match="hpo run --resume, or give another name with --name"):
        hpo.create_study(space, args, name_option="--name")
    # The same file and flags (or none): resumes.
    assert hpo.create_study(space, args, resume=True).created is False
    with pytest.raises(StudyError, match="--algorithm hyperopt-tpe instead of optuna-random"):
        hpo.create_study(space, args, algorithm="hyperopt-tpe", resume=True)
    space.write_text(BASE.replace("high: 0.1", "high: 0.2"))
    with pytest.raises(StudyError, match="the space file differs"):
        hpo.create_study(space, args, resume=True)
    space.write_text(BASE + "# a comment only\n")
    assert hpo.create_study(space, args, resume=True).created is False
    set_study_state(study._store, "s", "cancelled")
    with pytest.raises(StudyError, match="was cancelled"):
        hpo.create_study(space, args, resume=True)
    with pytest.raises(UsageError, match="--seed"):
        hpo.create_study(space, args, seed=-1, resume=True)


# -- 5. temporary folders ------------------------------------------------------------------------


def test_model_temp_folders_are_removed(tmp_path: Path) -> None:
    from hpo.tracking import models

    lone = tmp_path / "m.keras"
    lone.write_bytes(b"")
    trial = models.resolve_trial_model(str(lone))
    assert trial.directory.exists() and trial.directory != tmp_path
    models.remove_temp_dirs()  # what runs at exit
    assert not trial.directory.exists() and lone.exists()


def test_ignore_files_cover_sqlite_side_files() -> None:
    from conftest import REPO

    for name in (".gitignore", ".dockerignore"):
        text = (REPO / name).read_text()
        assert "*.db-wal" in text and "*.db-shm" in text, name
