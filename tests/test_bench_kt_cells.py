"""bench/_kt_cells.py: the Keras Tuner comparison's results file resumes and summarizes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from _kt_cells import (  # noqa: E402
    Cell,
    append_result,
    finished,
    hpo_combo,
    hpo_label,
    load_results,
    paired_differences,
    parse_budgets,
    parse_combos,
    summarize,
)


def _cell(label: str, seed: int, budget: int = 10) -> Cell:
    return Cell("image_cnn", label, seed, budget, 2000, 4, 2)


def test_a_cell_survives_a_round_trip_and_a_cut_line_is_run_again(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    hpo = _cell("hpo optuna-tpe+hyperband", 0)
    # The search's own "epochs" (trained in all) must not change the cell it belongs to.
    append_result(results, hpo, {"epochs": 33, "best_test_accuracy": 0.8})
    kt = _cell("KT RandomSearch", 0)
    append_result(results, kt, {"epochs": 33, "best_test_accuracy": 0.79})
    with results.open("a") as f:
        f.write('{"space": "image_cnn", "label": "KT Hyperband", "se')  # killed mid-write

    done = finished(load_results(results))
    assert set(done) == {hpo, kt}
    assert done[hpo]["epochs"] == 33 and done[hpo]["max_epochs"] == 4


def test_the_summary_gives_mean_std_and_n_per_space_and_budget(tmp_path: Path) -> None:
    rows = []
    for seed, (h, k) in enumerate([(0.80, 0.78), (0.84, 0.80)]):
        common = {"trials": 10, "epochs": 30, "wall_seconds": 50.0 + seed, "cpu_seconds": 60.0}
        rows.append(
            {
                **common,
                **vars_of(_cell("hpo optuna-tpe+hyperband", seed)),
                "best_test_accuracy": h,
                "ensemble_test_accuracy": h + 0.01,
            }
        )
        rows.append({**common, **vars_of(_cell("KT RandomSearch", seed)), "best_test_accuracy": k})
    rows.append({**rows[0], **vars_of(_cell("KT RandomSearch", 0, budget=30))})

    text = summarize(rows)
    assert "image_cnn: budget 10 trials" in text and "image_cnn: budget 30 trials" in text
    hpo_line = next(line for line in text.splitlines() if line.startswith("hpo optuna-tpe"))
    assert " 2 " in hpo_line  # two seeds
    assert "0.8200 ± 0.0283" in hpo_line  # mean and sample standard deviation of 0.80, 0.84
    assert "0.8300 ± 0.0283" in hpo_line  # its ensemble
    assert "optuna-tpe+hyperband/RandomSearch: wall 1.00x (CPU 1.00x), test +3.00" in text


def test_keras_tuner_matched_to_one_combination_gets_its_own_rows_and_ratios() -> None:
    long = "KT BayesianOptimization @optuna-tpe+hyperband"
    rows = [
        {**vars_of(_cell("hpo optuna-tpe+hyperband", 0)), "wall_seconds": 20.0,
         "best_test_accuracy": 0.80},
        {**vars_of(_cell("KT BayesianOptimization", 0)), "wall_seconds": 40.0,
         "best_test_accuracy": 0.82},
        {**vars_of(_cell(long, 0)), "wall_seconds": 25.0, "best_test_accuracy": 0.79},
    ]  # fmt: skip

    lines = summarize(rows).splitlines()

    table = [line for line in lines if line.startswith(("hpo ", "KT "))]
    assert [line.split("  ")[0] for line in table] == [
        "hpo optuna-tpe+hyperband", "KT BayesianOptimization", long
    ]  # fmt: skip
    assert len({line.index(" 1 ") for line in table}) == 1  # the n column lines up
    ratios = next(line for line in lines if line.startswith("ratios"))
    assert "/BayesianOptimization: wall 0.50x (CPU nanx), test -2.00" in ratios
    matched = "/BayesianOptimization @optuna-tpe+hyperband: wall 0.80x (CPU nanx), test +1.00"
    assert matched in ratios


def test_a_later_first_rung_is_its_own_hpo_row_and_old_rows_read_as_epoch_1() -> None:
    def row(cell: Cell, wall: float, acc: float) -> dict[str, object]:
        return {**vars_of(cell), "wall_seconds": wall, "best_test_accuracy": acc}

    old = row(_cell("hpo optuna-tpe+hyperband", 0), 20.0, 0.80)
    del old["min_epochs"]  # rows written before min_epochs was recorded
    label = hpo_label("optuna-tpe", "hyperband", 2)
    later = Cell("image_cnn", label, 0, 10, 2000, 4, 2, min_epochs=2)
    rows = [old, row(later, 25.0, 0.82), row(_cell("KT Hyperband", 0), 50.0, 0.81)]

    assert label == "hpo optuna-tpe+hyperband min2"
    assert hpo_combo(label) == hpo_combo("hpo optuna-tpe+hyperband") == ("optuna-tpe", "hyperband")
    assert hpo_label("optuna-tpe", "hyperband") == "hpo optuna-tpe+hyperband"
    assert Cell.of(old).min_epochs == 1 and Cell.of(old) == _cell("hpo optuna-tpe+hyperband", 0)
    # Rows written before trials kept their best epoch kept the last: a "best" study is its own.
    assert Cell.of(old).kept_epoch == "last"
    assert hpo_label("optuna-tpe", "hyperband", 1, "best") == "hpo optuna-tpe+hyperband best"
    assert hpo_label("optuna-tpe", "hyperband", 2, "best") == "hpo optuna-tpe+hyperband min2 best"
    assert hpo_combo("hpo optuna-tpe+hyperband min2 best") == ("optuna-tpe", "hyperband")
    text = summarize(rows)
    assert text.count("image_cnn: budget 10") == 1  # one table: same space and settings
    assert "optuna-tpe+hyperband/Hyperband: wall 0.40x (CPU nanx), test -1.00" in text
    assert "optuna-tpe+hyperband min2/Hyperband: wall 0.50x (CPU nanx), test +1.00" in text
    assert "  optuna-tpe+hyperband min2 - Hyperband" not in text  # one seed: no pair
    assert "  optuna-tpe+hyperband - optuna-tpe+hyperband min2" not in text


def vars_of(cell: Cell) -> dict[str, object]:
    return {k: getattr(cell, k) for k in Cell.__dataclass_fields__}


def test_options_are_parsed_and_bad_ones_named() -> None:
    assert parse_budgets("10,30") == [10, 30]
    combos = parse_combos(
        "optuna-tpe+median, hyperopt-tpe", ["optuna-tpe", "hyperopt-tpe"], ["median", "hyperband"]
    )
    assert combos == [("optuna-tpe", "median"), ("hyperopt-tpe", "hyperband")]
    with pytest.raises(ValueError, match="unknown pruner 'fast'"):
        parse_combos("optuna-tpe+fast", ["optuna-tpe"], ["none"])
    with pytest.raises(ValueError, match="--budgets"):
        parse_budgets("10,0")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budgets", "ten"], "--budgets 'ten'"),
        (["--hpo", "optuna-tpe+fast"], "unknown pruner 'fast'"),
        (["--space", "no_such_space"], "no space file 'no_such_space'"),
        (["--kt", "Grid"], "unknown tuner 'Grid'"),
        (["--hpo", "optuna-tpe", "--kt-epochs", "hyperopt-tpe"], "expected one of --hpo"),
        (["--kt-epochs", "optuna-tpe+fast"], "--kt-epochs: unknown pruner 'fast'"),
        (["--min-epochs", "0"], "--min-epochs: expected 1 or more"),
    ],
)
def test_bad_options_exit_2_with_one_line(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "vs_keras_tuner.py"), *args],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert message in proc.stderr.splitlines()[-1]


def test_hpo_combinations_are_compared_seed_by_seed_by_budget_and_in_all() -> None:
    rows = []
    # "none" is ahead of "hyperband" by 1, 3 and 2 points at budget 10; at 30 behind by 1, then
    # tied. Seed 5 has no "none" search and Keras Tuner is never paired: neither counts.
    for budget, seed, a, b in [
        (10, 0, 0.81, 0.80),
        (10, 1, 0.83, 0.80),
        (10, 2, 0.82, 0.80),
        (30, 0, 0.80, 0.81),
        (30, 1, 0.85, 0.85),
    ]:
        for label, acc in (("hpo optuna-tpe+none", a), ("hpo optuna-tpe+hyperband", b)):
            rows.append({**vars_of(_cell(label, seed, budget=budget)), "best_test_accuracy": acc})
    rows.append({**vars_of(_cell("hpo optuna-tpe+hyperband", 5)), "best_test_accuracy": 0.1})
    rows.append({**vars_of(_cell("KT RandomSearch", 0)), "best_test_accuracy": 0.99})

    lines = paired_differences(rows)

    assert lines == [
        "  optuna-tpe+hyperband - optuna-tpe+none: "
        "budget 10: n 3, -2.00 ± 1.00, t -3.46, ahead in 0, behind in 3; "
        "budget 30: n 2, +0.50 ± 0.71, t 1.00, ahead in 1, behind in 0; "
        "all: n 5, -1.00 ± 1.58, t -1.41, ahead in 1, behind in 3"
    ]
    assert "paired differences" in summarize(rows)
    assert paired_differences(rows[:2]) == []  # one pair: no spread, nothing to say


def test_each_combination_is_compared_with_each_tuner_on_the_seeds_both_ran() -> None:
    # hpo ran seeds 0-3, RandomSearch 0-2 and 7, Hyperband seed 0 only. The table's means mix
    # seed sets (hpo over 4 seeds, RandomSearch over 4 others); the paired line does not.
    rows = [
        {**vars_of(_cell("hpo optuna-tpe+hyperband", s)), "best_test_accuracy": acc}
        for s, acc in enumerate([0.80, 0.82, 0.78, 0.90])
    ]
    rows += [
        {**vars_of(_cell("KT RandomSearch", s)), "best_test_accuracy": acc}
        for s, acc in [(0, 0.79), (1, 0.80), (2, 0.79), (7, 0.50)]
    ]
    rows.append({**vars_of(_cell("KT Hyperband", 0)), "best_test_accuracy": 0.70})
    rows.append(
        {**vars_of(_cell("hpo optuna-tpe+hyperband", 0, budget=30)), "best_test_accuracy": 0.9}
    )

    lines = summarize(rows).splitlines()

    start = next(i for i, line in enumerate(lines) if line.startswith("paired on the seeds"))
    # Seeds 0, 1, 2: +1, +2, -1 points. Hyperband shares one seed only, budget 30 none.
    assert lines[start + 1] == (
        "  optuna-tpe+hyperband - RandomSearch: n 3, +0.67 ± 1.53, t 0.76, ahead in 2, behind in 1"
    )
    assert not lines[start + 2].startswith("  optuna-tpe+hyperband - Hyperband")
    assert sum(line.startswith("paired on the seeds") for line in lines) == 1


def test_a_row_whose_times_are_not_comparable_gets_no_ratio_but_keeps_its_accuracy() -> None:
    # Rows run on another machine or beside other jobs keep their times under another key.
    hpo = {**vars_of(_cell("hpo optuna-tpe+hyperband", 0)), "wall_seconds": None}
    kt = {**vars_of(_cell("KT RandomSearch", 0)), "wall_seconds": 40.0}
    rows = [
        {**hpo, "best_test_accuracy": 0.80, "wall_seconds_not_comparable": 99.0},
        {**kt, "best_test_accuracy": 0.78},
        {**hpo, "seed": 1, "best_test_accuracy": 0.83},
        {**kt, "seed": 1, "best_test_accuracy": 0.80},
    ]

    lines = summarize(rows).splitlines()

    hpo_line = next(line for line in lines if line.startswith("hpo "))
    assert "0.8150 ± 0.0212" in hpo_line and "99" not in hpo_line
    assert not any(line.startswith("ratios") for line in lines)
    assert "  optuna-tpe+hyperband - RandomSearch: n 2, +2.50 ± 0.71" in "\n".join(lines)
