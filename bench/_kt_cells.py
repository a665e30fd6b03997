"""The cells of ``bench/vs_keras_tuner.py``: one finished (space, tuner, seed, budget) each.

A comparison over several spaces, seeds and budgets takes hours on a 2-core machine, so every
finished cell is appended at once as one JSON line to ``results.jsonl`` in the work folder; a
rerun with the same work folder skips the cells found there and summarizes all of them. A line
cut short by a killed run is ignored (that cell runs again).

Pure Python (no hpo, no TensorFlow): the summary can be printed and tested anywhere.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.jsonl"
DEFAULT_PRUNER = "hyperband"


@dataclass(frozen=True)
class Cell:
    """What one search ran on: a row of the results file is a cell plus what it measured.

    ``label`` is :func:`hpo_label`'s or ``"KT TUNER"``; ``budget`` is the hpo studies'
    trial budget (Keras Tuner gets the epochs those studies trained); ``subset`` and
    ``max_epochs`` are the training examples (None: the whole dataset) and the largest epochs a
    trial, as run; ``workers`` the hpo worker processes; ``min_epochs`` hpo's first epoch at
    which a trial may be pruned (1 in rows written before it was recorded); ``kept_epoch`` the
    epoch hpo's complete trials kept, ``"best"`` or ``"last"`` (``budget.restore_best_epoch``;
    ``"last"`` in rows written before trials kept their best epoch, and in Keras Tuner's rows,
    where it means nothing: Keras Tuner always keeps its best). (A row's ``epochs`` is what the
    search trained in all.)
    """

    space: str
    label: str
    seed: int
    budget: int
    subset: int | None
    max_epochs: int
    workers: int
    min_epochs: int = 1
    kept_epoch: str = "last"

    @classmethod
    def of(cls, row: dict[str, Any]) -> Cell:
        return cls(**{k: row[k] for k in cls.__dataclass_fields__ if k in row})

    def group(self) -> tuple[Any, ...]:
        """The cells one table compares: same space, budget and training settings."""
        return (self.space, self.budget, self.subset, self.max_epochs, self.workers)


def hpo_label(algorithm: str, pruner: str, min_epochs: int = 1, kept_epoch: str = "last") -> str:
    """``"hpo ALGORITHM+PRUNER"``, with ``" minN"`` when trials may be pruned only from epoch N
    > 1 and ``" best"`` when complete trials keep their best epoch: each such study is another
    hpo search in the same table as the Keras Tuner ones."""
    label = f"hpo {algorithm}+{pruner}"
    if min_epochs != 1:
        label += f" min{min_epochs}"
    return label if kept_epoch == "last" else f"{label} {kept_epoch}"


def hpo_combo(label: str) -> tuple[str, str]:
    """The ``(algorithm, pruner)`` of an :func:`hpo_label` (its ``min_epochs`` is the cell's)."""
    algorithm, _, pruner = label.removeprefix("hpo ").split()[0].partition("+")
    return algorithm, pruner


def parse_budgets(text: str) -> list[int]:
    """``"10,30"`` -> ``[10, 30]``; ValueError for anything but positive integers."""
    try:
        budgets = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--budgets {text!r}: expected trial counts like 10,30") from None
    if not budgets or min(budgets) < 1:
        raise ValueError(f"--budgets {text!r}: expected trial counts like 10,30")
    return budgets


def parse_combos(
    text: str, algorithms: Iterable[str], pruners: Iterable[str], option: str = "--hpo"
) -> list[tuple[str, str]]:
    """``"optuna-tpe+median,hyperopt-tpe"`` -> ``[("optuna-tpe", "median"), ("hyperopt-tpe",
    "hyperband")]``; ValueError naming ``option`` and the unknown algorithm or pruner."""
    known_a, known_p = list(algorithms), list(pruners)
    combos = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        algorithm, _, pruner = part.partition("+")
        pruner = pruner or DEFAULT_PRUNER
        if algorithm not in known_a:
            raise ValueError(
                f"{option}: unknown algorithm {algorithm!r}; known: {', '.join(known_a)}"
            )
        if pruner not in known_p:
            raise ValueError(f"{option}: unknown pruner {pruner!r}; known: {', '.join(known_p)}")
        combos.append((algorithm, pruner))
    if not combos:
        raise ValueError(f"{option}: expected at least one ALGORITHM+PRUNER")
    return combos


def load_results(path: Path) -> list[dict[str, Any]]:
    """Every complete row of the results file (none when it does not exist)."""
    rows: list[dict[str, Any]] = []
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            Cell.of(row)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short when a run was killed: that cell runs again
        rows.append(row)
    return rows


def append_result(path: Path, cell: Cell, result: dict[str, Any]) -> dict[str, Any]:
    """Append ``cell`` with what it measured as one line, synced: a kill loses no finished cell."""
    row = {**result, **asdict(cell)}
    with path.open("a") as f:
        f.write(json.dumps(row, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return row


def finished(rows: Iterable[dict[str, Any]]) -> dict[Cell, dict[str, Any]]:
    """The rows by cell (the last one wins if a cell was run twice)."""
    return {Cell.of(row): row for row in rows}


def _stats(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def _col(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) is not None]


def summarize(rows: Iterable[dict[str, Any]]) -> str:
    """One table per (space, budget, training settings): each tuner's mean, sample standard
    deviation and number of seeds; then hpo's ratios and differences against each Keras Tuner
    search, on the means; last, :func:`paired_differences` between the hpo combinations."""
    by_group: dict[tuple[Any, ...], dict[str, list[dict[str, Any]]]] = {}
    rows_by_cell = finished(rows)
    for cell, row in rows_by_cell.items():
        by_group.setdefault(cell.group(), {}).setdefault(cell.label, []).append(row)
    out = []
    for (space, budget, subset, epochs, workers), labels in sorted(
        by_group.items(), key=lambda kv: tuple(str(x) for x in kv[0])
    ):
        out.append(
            f"\n{space}: budget {budget} trials, {subset or 'all'} training examples, up to "
            f"{epochs} epochs a trial, hpo with {workers} workers; mean ± std over n seeds"
        )
        label_width = max(32, *(len(label) for label in labels))
        out.append(
            f"{'':{label_width}} {'n':>2} {'trials':>6} {'epochs':>6} {'wall s':>11} {'CPU s':>11} "
            f"{'best val':>8} {'best trial test':>15} {'ensemble test':>15}"
        )
        means: dict[str, dict[str, float]] = {}
        for label in sorted(labels, key=lambda s: (not s.startswith("hpo"), s)):
            cells = labels[label]
            m: dict[str, float] = {}
            texts: dict[str, str] = {}
            for key, fmt, width in (
                ("trials", "{:.1f}", 6),
                ("epochs", "{:.1f}", 6),
                ("wall_seconds", "{:.0f} ± {:.0f}", 11),
                ("cpu_seconds", "{:.0f} ± {:.0f}", 11),
                ("best_validation_accuracy", "{:.4f}", 8),
                ("best_test_accuracy", "{:.4f} ± {:.4f}", 15),
                ("ensemble_test_accuracy", "{:.4f} ± {:.4f}", 15),
            ):
                values = _col(cells, key)
                if not values:
                    texts[key] = " " * width
                    continue
                mean, std = _stats(values)
                m[key] = mean
                texts[key] = fmt.format(mean, std).rjust(width)
            means[label] = m
            out.append(
                f"{label:{label_width}} {len(cells):>2} {texts['trials']} {texts['epochs']} "
                f"{texts['wall_seconds']} {texts['cpu_seconds']} "
                f"{texts['best_validation_accuracy']} {texts['best_test_accuracy']} "
                f"{texts['ensemble_test_accuracy']}"
            )
        parts = []
        for h in (label for label in means if label.startswith("hpo ")):
            for k in (label for label in means if label.startswith("KT ")):
                hm, km = means[h], means[k]
                if not all(x in hm and x in km for x in ("wall_seconds", "best_test_accuracy")):
                    continue
                wall = hm["wall_seconds"] / km["wall_seconds"]
                cpu = hm.get("cpu_seconds", math.nan) / km.get("cpu_seconds", math.nan)
                test = 100 * (hm["best_test_accuracy"] - km["best_test_accuracy"])
                ens = 100 * (hm.get("ensemble_test_accuracy", math.nan) - km["best_test_accuracy"])
                parts.append(
                    f"{h[4:]}/{k[3:]}: wall {wall:.2f}x (CPU {cpu:.2f}x), test {test:+.2f}, "
                    f"ens {ens:+.2f}"
                )
        if parts:
            out.append(
                "ratios (hpo / Keras Tuner wall and CPU time, goal <= 0.70x wall; test accuracy "
                "points of hpo's best trial and of its ensemble minus KT's best model, goal > 0): "
                + "; ".join(parts)
            )
        paired = paired_against_keras_tuner(labels)
        if paired:
            out.append(
                "paired on the seeds both ran (points of hpo's best trial minus KT's best model: "
                "n, mean, sample standard deviation, paired t, in how many seeds hpo is ahead "
                "and behind):"
            )
            out.extend(paired)
    paired = paired_differences(rows_by_cell.values())
    if paired:
        out.append(
            "\npaired differences of the best trial's test accuracy between hpo combinations "
            "(A - B in points over the (space, settings, seed) both ran: n, mean, sample "
            "standard deviation, paired t, in how many pairs A is ahead and behind), by budget and "
            "over all budgets:"
        )
        out.extend(paired)
    return "\n".join(out)


def paired_differences(rows: Iterable[dict[str, Any]]) -> list[str]:
    """For each two hpo combinations, their best trials' test accuracy compared seed by seed.

    Seeds make the spread between searches large next to the differences between algorithms;
    pairing the two combinations' searches of the same space, settings and seed, and pooling
    those pairs over spaces, is what can tell the combinations apart. Paired t = mean / (sd /
    sqrt(n)); about 2 or more is what five seeds on three spaces can resolve.
    """
    scores: dict[str, dict[tuple[Any, ...], float]] = {}
    for cell, row in finished(rows).items():
        if cell.label.startswith("hpo ") and row.get("best_test_accuracy") is not None:
            key = (*cell.group(), cell.seed)
            scores.setdefault(cell.label[4:], {})[key] = float(row["best_test_accuracy"])
    lines = []
    labels = sorted(scores)
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            common = scores[a].keys() & scores[b].keys()
            parts = []
            budgets = sorted({k[1] for k in common})
            for budget in [*budgets, None] if len(budgets) > 1 else budgets:
                diffs = [
                    100 * (scores[a][k] - scores[b][k])
                    for k in common
                    if budget is None or k[1] == budget
                ]
                if len(diffs) < 2:
                    continue
                where = f"budget {budget}" if budget is not None else "all"
                parts.append(f"{where}: {_paired(diffs)}")
            if parts:
                lines.append(f"  {a} - {b}: " + "; ".join(parts))
    return lines


def paired_against_keras_tuner(labels: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Each hpo combination against each Keras Tuner search of one table, seed by seed.

    ``labels`` maps a label to its rows in one (space, budget, settings) group. The table's
    means may be over different seeds when one side ran more of them; these differences are
    over the seeds both ran only, so the seed's luck (its data subset, its first random
    trials) cancels. Nothing for fewer than two common seeds.
    """

    def by_seed(rows: list[dict[str, Any]]) -> dict[int, float]:
        return {
            int(r["seed"]): float(r["best_test_accuracy"])
            for r in rows
            if r.get("best_test_accuracy") is not None
        }

    lines = []
    for h in sorted(label for label in labels if label.startswith("hpo ")):
        ours = by_seed(labels[h])
        for k in sorted(label for label in labels if label.startswith("KT ")):
            theirs = by_seed(labels[k])
            common = sorted(ours.keys() & theirs.keys())
            if len(common) >= 2:
                diffs = [100 * (ours[s] - theirs[s]) for s in common]
                lines.append(f"  {h[4:]} - {k[3:]}: {_paired(diffs)}")
    return lines


def _paired(diffs: list[float]) -> str:
    """``n N, MEAN ± SD, t T, ahead in A, behind in B`` of differences in points."""
    mean, sd = _stats(diffs)
    t = mean / (sd / math.sqrt(len(diffs))) if sd > 0 else math.nan
    ahead, behind = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    return (
        f"n {len(diffs)}, {mean:+.2f} ± {sd:.2f}, t {t:.2f}, ahead in {ahead}, behind in {behind}"
    )
