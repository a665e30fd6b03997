"""A study's own dataset loader, sampler and pruner (``module:attribute``), from a module
outside the package: checked when the space is validated, refused by a worker's allow-list,
and used by a real ``hpo run``. Also the report of parameters no family reads."""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import optuna
import pytest

from hpo.datasets import DataError, from_arrays
from hpo.engines import create_pruner, create_sampler
from hpo.spaces import DatasetSpec, Params, SpaceError, parse_spec, suggest

from conftest import hpo

# The user's package: a loader of scikit-learn's wine data (178 wines, 13 measurements, 3
# cultivars), a sampler factory and a pruner factory that record how they were called.
USERPKG = {
    "__init__.py": "",
    "data.py": """
        import numpy as np

        def load(standardize=True):
            from sklearn.datasets import load_wine
            bunch = load_wine()
            x = np.asarray(bunch.data, dtype="float64")
            if standardize:
                x = (x - x.mean(axis=0)) / x.std(axis=0)
            return {"train": (x, bunch.target), "class_names": list(bunch.target_names)}

        def broken():
            return {"train": ([[1.0], [2.0]], [0.5, 1.5])}
        """,
    "samplers.py": """
        import os
        import optuna

        def make(seed, directions):
            _note(f"sampler seed={seed} directions={directions}")
            return optuna.samplers.RandomSampler(seed=seed)

        def not_a_sampler():
            return "random"

        def _note(line):
            path = os.environ.get("USERPKG_NOTES")
            if path:
                with open(path, "a") as f:
                    f.write(line + "\\n")
        """,
    "pruners.py": """
        import optuna
        from userpkg.samplers import _note

        def make(budget):
            _note(f"pruner max_epochs={budget.max_epochs}")
            return optuna.pruners.NopPruner()

        def sampler_instead():
            return optuna.samplers.RandomSampler()
        """,
}

SPACE = """
family: dense_bn
dataset: {name: userpkg.data:load, options: {standardize: true}, seed: 3}
objective: {metric: val_accuracy, direction: maximize}
budget: {max_epochs: 1}
defaults: {algorithm: "userpkg.samplers:make", pruner: "userpkg.pruners:make", seed: 7}
params:
  units: {type: int, low: 4, high: 8}
  unitz: {type: int, low: 4, high: 8}
  batch_size: 32
"""


@pytest.fixture
def userpkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``userpkg`` written under tmp_path/mods, importable here and in subprocesses."""
    mods = tmp_path / "mods"
    (mods / "userpkg").mkdir(parents=True)
    for name, text in USERPKG.items():
        (mods / "userpkg" / name).write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(mods))
    monkeypatch.delenv("HPO_ALLOWED_FAMILY_MODULES", raising=False)
    yield mods
    for name in [m for m in sys.modules if m == "userpkg" or m.startswith("userpkg.")]:
        del sys.modules[name]  # the next test's tmp_path holds another userpkg


def _problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(SpaceError) as info:
        parse_spec(text, "s.yaml")
    return [(i.path, i.message) for i in info.value.issues]


def test_own_loader_sampler_and_pruner_validate_and_build(userpkg: Path) -> None:
    spec = parse_spec(SPACE, "s.yaml")
    assert spec.defaults.algorithm == "userpkg.samplers:make"
    sampler = create_sampler(
        spec.defaults.algorithm, spec.space, seed=5, directions=["maximize"], n_trials=2
    )
    assert isinstance(sampler, optuna.samplers.RandomSampler)
    assert isinstance(create_pruner(spec.defaults.pruner, spec.budget), optuna.pruners.NopPruner)
    from hpo.datasets import load_dataset

    data = load_dataset(spec.dataset)
    assert data.task == "classification" and data.num_classes == 3
    assert data.class_names == ["class_0", "class_1", "class_2"]
    assert data.input_shape == (13,) and data.train.x.dtype == np.float32
    # hpo split validation and test off train (seeded, disjoint, all 178 wines used).
    sizes = len(data.train), len(data.validation), len(data.test)
    assert sum(sizes) == 178 and min(sizes) > 0
    again = load_dataset(spec.dataset)
    assert np.array_equal(again.test.x, data.test.x)


@pytest.mark.parametrize(
    ("edit", "key", "message"),
    [
        (
            ('"userpkg.samplers:make"', '"userpkg.samplers:not_a_sampler"'),
            "defaults.algorithm",
            "algorithm 'userpkg.samplers:not_a_sampler' returned the text 'random': expected "
            "an instance of optuna.samplers.BaseSampler",
        ),
        (
            ('"userpkg.pruners:make"', '"userpkg.pruners:sampler_instead"'),
            "defaults.pruner",
            "returned a RandomSampler: expected an instance of optuna.pruners.BasePruner",
        ),
        (
            ("userpkg.data:load", "userpkg.data:nothing"),
            "dataset.name",
            "module 'userpkg.data' has no attribute 'nothing'",
        ),
        (
            ("userpkg.data:load", "userpkg.data:np"),
            "dataset.name",
            "dataset 'userpkg.data:np' is a module: expected a function returning the data",
        ),
        (
            ('"userpkg.samplers:make"', '"nowhere_xyz:make"'),
            "defaults.algorithm",
            "cannot find module 'nowhere_xyz' of algorithm 'nowhere_xyz:make'",
        ),
        (
            ('"userpkg.pruners:make"', '"userpkg.pruners:"'),
            "defaults.pruner",
            "write your own pruner as 'module:attribute'",
        ),
    ],
)
def test_a_wrong_own_object_is_one_error_naming_its_key(
    userpkg: Path, edit: tuple[str, str], key: str, message: str
) -> None:
    problems = _problems(SPACE.replace(*edit))
    assert len(problems) == 1, problems
    assert problems[0][0] == key and message in problems[0][1], problems
    assert "\n" not in problems[0][1]


def test_the_allow_list_covers_every_axis(userpkg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notes = userpkg / "notes.txt"
    monkeypatch.setenv("USERPKG_NOTES", str(notes))
    monkeypatch.setenv("HPO_ALLOWED_FAMILY_MODULES", "otherpackage")
    problems = _problems(SPACE)
    assert [p for p, _ in problems] == ["dataset.name", "defaults.algorithm", "defaults.pruner"]
    assert all("is not allowed on this machine ($HPO_ALLOWED_FAMILY_MODULES)" in m
               for _, m in problems)  # fmt: skip
    assert not notes.exists()  # refused before their module ran
    monkeypatch.setenv("HPO_ALLOWED_FAMILY_MODULES", "userpkg")
    parse_spec(SPACE, "s.yaml")
    assert notes.read_text().splitlines() == [
        "sampler seed=7 directions=['maximize']",
        "pruner max_epochs=1",
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not arrays", "the loader returned a str: expected (x, y) or a mapping"),
        ((np.zeros((10, 2)), np.zeros(9, dtype=int)), "x has 10 examples but y has 9"),
        ((np.zeros((10, 2)), np.zeros(10)), "y must be integer class labels"),
        ((np.zeros(10), np.zeros(10, dtype=int)), "x must be numbers of shape (examples"),
        ((np.full((10, 2), np.nan), np.arange(10) % 2), "x holds NaN or infinite values"),
        ((np.zeros((10, 2)), np.zeros(10, dtype=int)), "y holds one class only"),
        ((np.array([["a", "b"]] * 10), np.arange(10) % 2), "x must be numbers"),
        ((np.zeros((10, 2)), -(np.arange(10) % 2)), "class labels must be 0 or more"),
        ({"test": (np.zeros((4, 2)), np.arange(4) % 2)}, "a mapping without 'train'"),
        ({"train": (np.zeros((4, 2)), np.arange(4) % 2), "labels": 1}, "unknown key 'labels'"),
        (
            {
                "train": (np.zeros((40, 2)), np.arange(40) % 2),
                "test": (np.zeros((4, 3)), [0, 1] * 2),
            },
            "the splits' examples differ in shape: train (2,), test (3,)",
        ),
        ({"train": (np.zeros((40, 2)), np.arange(40) % 3), "task": "binary"}, "binary labels"),
        ({"train": (np.zeros((40, 2)), np.arange(40) % 2), "task": "regression"}, "task must be"),
        ({"train": (np.zeros((40, 2)), np.arange(40) % 2), "class_names": ["a"]}, "class_names"),
        ((np.zeros((3, 2)), np.arange(3) % 2), "split is empty"),
    ],
)
def test_what_a_loader_returns_is_checked_in_one_line(raw: object, message: str) -> None:
    with pytest.raises(DataError) as info:
        from_arrays(raw, DatasetSpec(name="mine:load"))
    text = str(info.value)
    assert text.startswith("dataset 'mine:load': ") and message in text, text
    assert "\n" not in text


def test_a_broken_loader_fails_the_data_check_in_one_line(userpkg: Path) -> None:
    from hpo.datasets import load_dataset

    with pytest.raises(DataError, match="train: y must be integer class labels"):
        load_dataset(DatasetSpec(name="userpkg.data:broken"))
    with pytest.raises(DataError, match=r"its loader failed: TypeError: .*unexpected keyword"):
        load_dataset(DatasetSpec(name="userpkg.data:load", options={"colour": "red"}))


CONDITIONAL = """
family: dense_bn
dataset: digits
objective: {metric: val_accuracy, direction: maximize}
budget: {max_epochs: 1}
params:
  optimizer:
    type: categorical
    choices:
      adam: {beta_1: {type: float, low: 0.8, high: 0.99}}
      sgd: {momentum: {type: float, low: 0.0, high: 0.9}, nesterov: true}
  lerning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
"""


@pytest.mark.parametrize("algorithm", ["optuna-random", "hyperopt-random"])
def test_params_record_what_the_family_reads_under_either_engine(
    algorithm: str, quiet_optuna: None
) -> None:
    from hpo.families._common import build_optimizer

    spec = parse_spec(CONDITIONAL, "s.yaml")
    sampler = create_sampler(algorithm, spec.space, seed=0, directions=["maximize"])
    study = optuna.create_study(sampler=sampler, direction="maximize")
    seen = set()
    for _ in range(6):
        trial = study.ask()
        hp = Params(suggest(trial, spec.space))
        build_optimizer(hp)  # what dense_bn reads of these
        seen.add(hp["optimizer"])
        # The chosen branch's parameters were read, the other branch's were never active;
        # the misspelled learning rate is the one left.
        assert hp.unread() == ["lerning_rate"], (algorithm, hp)
        study.tell(trial, 0.0)
    assert seen == {"adam", "sgd"}
    hp.to_dict()  # a family that takes every value reads them all
    assert hp.unread() == []


@pytest.mark.slow
def test_hpo_run_with_own_loader_sampler_and_pruner_reports_an_unread_key(
    userpkg: Path, tmp_path: Path
) -> None:
    space = tmp_path / "wine.yaml"
    space.write_text(SPACE)
    notes = tmp_path / "notes.txt"
    env = {
        "PYTHONPATH": os.pathsep.join([str(userpkg), os.environ.get("PYTHONPATH", "")]),
        "HPO_ALLOWED_FAMILY_MODULES": "userpkg",
        "USERPKG_NOTES": str(notes),
        "HPO_STORAGE": f"sqlite:///{tmp_path / 'studies.db'}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ran = hpo(
        "run", str(space), "--study", "wine", "--trials", "2", "--workers", "1",
        "--tracking-uri", tracking, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "finished 2/2: 2 complete" in ran.stdout, ran.stdout
    warning = "searched but never read by the family: unitz (a misspelled key?)"
    assert warning in ran.stdout, ran.stdout
    # The worker built the user's sampler (seeded by the study) and its trial process the
    # user's pruner; the user's loader gave the data.
    lines = notes.read_text().splitlines()
    assert "sampler seed=7 directions=['maximize']" in lines and "pruner max_epochs=1" in lines
    status = hpo("study", "status", "wine", cwd=tmp_path, env=env)
    assert status.returncode == 0 and warning in status.stdout, status.stdout
    store = optuna.storages.RDBStorage(env["HPO_STORAGE"])
    study = optuna.load_study(study_name="wine", storage=store)
    assert study.user_attrs["unread_params"] == ["unitz"]
    trial = study.trials[0]
    assert trial.user_attrs["params_unread"] == ["unitz"]
    assert {"units", "batch_size"} <= set(trial.user_attrs["params_read"])
    import mlflow

    from hpo.storage.studies import load_config

    run = mlflow.MlflowClient(tracking).get_run(load_config(store, "wine").parent_run_id)
    assert run.data.tags["hpo.unread_params"] == "unitz"
    # A worker allowed other modules only refuses the study before importing any of it.
    refused = hpo(
        "worker", "--study", "wine", "--threads", "1", "--allow-module", "otherpackage",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert refused.returncode != 0, refused.stderr[-2000:]
    assert "is not allowed on this worker" in refused.stderr
    store.engine.dispose()
