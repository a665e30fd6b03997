"""What the MLflow UI shows a person: the descriptions (notes) of study and trial runs.

MLflow shows a run's ``mlflow.note.content`` tag, in Markdown, as its description. The study
run's note summarizes the study (space, algorithm, pruner, counts, the best trial with its
parameters and a link to its run, the ensembles built from it with links to their registered
versions); it is rewritten, one tag write through :mod:`hpo.tracking` (so through its outbox
when the server is down), each time a trial finishes, when the study ends and when an ensemble
of it is registered. A trial run's note says how it ended.

Links are the UI's own addresses relative to the page (``#/experiments/1/runs/abc?...``, from
:mod:`hpo.tracking.mlflow_ui`, so they open the UI's training pages), so they work whatever
host serves the UI. Ids that are still placeholders (the server was down) are not linked.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from hpo.storage.feasibility import is_feasible
from hpo.storage.studies import RUN_ID_ATTR, StudyConfig, counted_trials
from hpo.tracking import NOTE_TAG
from hpo.tracking.mlflow_ui import run_page, runs_page, version_page

if TYPE_CHECKING:
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

# Registered versions built from a study, "name:version" in order, in the study's system attrs.
ENSEMBLES_ATTR = "hpo:ensembles"
# How many of the best trial's parameters the note lists (all of them, up to this).
MAX_NOTE_PARAMS = 30
MAX_NOTE_CHARS = 5000  # MLflow's tag limit is larger; a note is read, not stored


def _is_placeholder(value: str | None) -> bool:
    from hpo.tracking._outbox import is_placeholder

    return bool(value) and is_placeholder(value)


def run_link(experiment_id: str | None, run_id: str | None, text: str) -> str:
    """``[text](#/experiments/E/runs/R?...)``, or ``text`` when an id is unknown or a placeholder.

    Example:
        >>> run_link("1", "abc", "trial 3")
        '[trial 3](#/experiments/1/runs/abc?workflowType=machine_learning)'
    """
    if not experiment_id or not run_id or _is_placeholder(experiment_id) or _is_placeholder(run_id):
        return text
    return f"[{text}]({run_page(experiment_id, run_id)})"


def version_link(name: str, version: int | str) -> str:
    """A link to a registered model version's page.

    Example:
        >>> version_link("cnn-ens", 2)
        '[cnn-ens version 2](#/models/cnn-ens/versions/2?workflowType=machine_learning)'
    """
    return f"[{name} version {version}]({version_page(name, version)})"


def fmt(value: Any) -> str:
    """A number short enough to read; anything else as JSON text.

    Example:
        >>> fmt(0.912345678), fmt(3), fmt("relu"), fmt(1e-4)
        ('0.9123', '3', 'relu', '0.0001')
    """
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_NOTE_CHARS else text[: MAX_NOTE_CHARS - 1] + "…"


def trial_note(
    number: int,
    state: str,
    metric: str,
    value: float | None = None,
    epochs: int | None = None,
    reason: str | None = None,
    pruner: str | None = None,
    *,
    infeasible: Sequence[str] = (),
    untrained: bool = False,
    kept_epoch: int | None = None,
) -> str:
    """A trial run's description: how it ended, and the space's constraints it broke;
    ``kept_epoch``: the epoch whose model a complete trial kept, when not its last.

    Example:
        >>> trial_note(4, "PRUNED", "val_accuracy", 0.61, 3, pruner="median")
        'Trial 4: **pruned** by the median pruner after epoch 3 (val_accuracy 0.61).'
        >>> trial_note(2, "FAIL", "val_accuracy", reason="NaN loss")
        'Trial 2: **failed**: NaN loss'
        >>> trial_note(5, "PRUNED", "val_accuracy", infeasible=["params_count = 9e+04 > max "
        ...            "5e+04"], untrained=True)
        'Trial 5: **infeasible**: params_count = 9e+04 > max 5e+04; stopped before training.'
        >>> print(trial_note(6, "COMPLETE", "val_accuracy", 0.9, 1,
        ...                  infeasible=["val_loss = 2 > max 1"]))  # doctest: +NORMALIZE_WHITESPACE
        Trial 6: **complete** after 1 epoch (val_accuracy 0.9). **Infeasible**: val_loss = 2 >
        max 1; never the best trial nor an ensemble member.
        >>> trial_note(7, "COMPLETE", "val_accuracy", 0.8, 4, kept_epoch=2)
        'Trial 7: **complete** after 4 epochs (val_accuracy 0.8 at epoch 2, the one it keeps).'
    """
    earlier = (
        f" at epoch {kept_epoch}, the one it keeps"
        if state == "COMPLETE" and kept_epoch and epochs and kept_epoch < epochs
        else ""
    )
    at = f" ({metric} {fmt(value)}{earlier})" if value is not None else ""
    broken = "; ".join(infeasible)
    if untrained:
        return _clip(f"Trial {number}: **infeasible**: {broken}; stopped before training.")
    tail = (
        f" **Infeasible**: {broken}; never the best trial nor an ensemble member."
        if infeasible
        else ""
    )
    if state == "COMPLETE":
        after = f" after {epochs} epoch{'s' if epochs != 1 else ''}" if epochs else ""
        return _clip(f"Trial {number}: **complete**{after}{at}.{tail}")
    if state == "PRUNED":
        by = f" by the {pruner} pruner" if pruner else ""
        after = f" after epoch {epochs}" if epochs else ""
        return _clip(f"Trial {number}: **pruned**{by}{after}{at}.{tail}")
    return _clip(f"Trial {number}: **failed**: {reason or 'unknown error'}")


def study_ensembles(storage: BaseStorage, study_name: str) -> list[str]:
    """``name:version`` of the registered ensembles built from the study, oldest first."""
    study_id = storage.get_study_id_from_name(study_name)
    found = storage.get_study_system_attrs(study_id).get(ENSEMBLES_ATTR) or []
    return [str(x) for x in found]


def add_ensemble(storage: BaseStorage, study_name: str, name: str, version: int) -> None:
    """Remember that version ``version`` of ensemble ``name`` was built from the study."""
    study_id = storage.get_study_id_from_name(study_name)
    found = study_ensembles(storage, study_name)
    entry = f"{name}:{version}"
    if entry not in found:
        storage.set_study_system_attr(study_id, ENSEMBLES_ATTR, [*found, entry])


def study_note(
    config: StudyConfig,
    trials: Sequence[FrozenTrial],
    ensembles: Sequence[str] = (),
    overrides: Mapping[int, tuple[str, list[float] | None]] | None = None,
) -> str:
    """The study run's description, in Markdown, from its trials (``overrides``: trial number
    to ``(state, values)`` for a trial that has ended but is not recorded in the store yet)."""
    from optuna.trial import TrialState

    spec = config.spec()
    states: dict[int, str] = {}
    values: dict[int, list[float] | None] = {}
    for t in counted_trials(list(trials)):
        states[t.number] = t.state.name
        values[t.number] = t.values
    for number, (state, vals) in (overrides or {}).items():
        states[number] = state
        values[number] = vals
    by_number = {t.number: t for t in trials}
    count = {s: list(states.values()).count(s) for s in ("COMPLETE", "PRUNED", "FAIL")}
    # Trials that broke a constraint: their violations are in the store before they are told.
    infeasible = {n for n in states if n in by_number and not is_feasible(by_number[n])}
    running = sum(s in (TrialState.RUNNING.name, TrialState.WAITING.name) for s in states.values())
    objectives = ", ".join(f"{d} `{m}`" for m, d in zip(spec.metrics, spec.directions, strict=True))
    searched = [n.name for n in spec.space.searched_nodes()]
    lines = [
        f"**hpo study `{config.name}`**: {spec.family} on {spec.dataset.name}"
        + (f" ({spec.description.strip()})" if spec.description.strip() else ""),
        "",
        f"- **Objective:** {objectives}",
        f"- **Space:** `{PurePath(config.filename).name}`, {len(searched)} searched parameters: "
        + ", ".join(f"`{n}`" for n in searched[:MAX_NOTE_PARAMS]),
        f"- **Algorithm:** {config.algorithm}; **pruner:** {config.pruner}; "
        f"**seed:** {config.seed if config.seed is not None else 'none'}; "
        f"at most {spec.budget.max_epochs} epochs a trial",
        f"- **Trials:** {len(states)} of {config.n_trials}: {count['COMPLETE']} complete, "
        f"{count['PRUNED']} pruned, {count['FAIL']} failed"
        + (f", {running} running" if running else "")
        + (f" ({len(infeasible)} infeasible)" if infeasible else ""),
    ]
    experiment_id = config.experiment_id
    if experiment_id and not _is_placeholder(experiment_id):
        lines.append(
            f"- **Compare:** [the trials, best first]({runs_page(experiment_id)}); "
            f"[their learning curves and parameters]({runs_page(experiment_id, charts=True)})"
        )
    complete = [
        n for n, s in states.items() if s == "COMPLETE" and values.get(n) and n not in infeasible
    ]
    if complete:
        sign = 1.0 if spec.directions[0] == "minimize" else -1.0
        best = min(complete, key=lambda n: (sign * float(values[n][0]), n))  # type: ignore[index]
        trial = by_number.get(best)
        run_id = trial.user_attrs.get(RUN_ID_ATTR) if trial is not None else None
        shown = ", ".join(
            f"`{m}` = {fmt(v)}" for m, v in zip(spec.metrics, values[best] or [], strict=False)
        )
        lines += [
            "",
            f"**Best trial:** {run_link(config.experiment_id, run_id, f'trial {best}')}: {shown}"
            + (
                f" ({trial.user_attrs['epochs']} epochs)"
                if trial is not None and trial.user_attrs.get("epochs")
                else ""
            ),
        ]
        params = dict(trial.params) if trial is not None else {}
        lines += [f"- `{k}` = {fmt(v)}" for k, v in sorted(params.items())[:MAX_NOTE_PARAMS]]
    else:
        lines += ["", "No trial has completed yet."]
    if ensembles:
        lines += ["", "**Ensembles built from it:**"]
        for entry in ensembles:
            name, _, version = entry.rpartition(":")
            lines.append(f"- {version_link(name, version)}")
    lines += ["", "_Written by hpo; updated as trials finish and ensembles are built._"]
    return _clip("\n".join(lines))


def update_study_note(
    storage: BaseStorage,
    config: StudyConfig,
    overrides: Mapping[int, tuple[str, list[float] | None]] | None = None,
) -> str | None:
    """Rewrite the study run's note from the store (one tag write); the note, or None when the
    study has no MLflow run."""
    if not (config.tracking_uri and config.parent_run_id):
        return None
    import optuna

    from hpo import tracking

    study = optuna.load_study(study_name=config.name, storage=storage)
    note = study_note(
        config,
        study.get_trials(deepcopy=False),
        study_ensembles(storage, config.name),
        overrides,
    )
    tracking.client(config.tracking_uri).set_tag(config.parent_run_id, NOTE_TAG, note)
    return note


def ensemble_description(
    *,
    method: str,
    metric: str,
    task: str,
    studies: Mapping[str, str | None],
    run: tuple[str | None, str],
    members: Sequence[Any],
    metrics: Mapping[str, Mapping[str, Mapping[str, float]]],
) -> str:
    """A registered ensemble version's description (Markdown): how it was built, its test
    metrics against its best single member, and its members with links to their trial runs.

    ``studies`` maps each study to its experiment id; ``run`` is the ensemble run's
    ``(experiment id, run id)``; ``members`` are :class:`hpo.ensemble.Member`-like objects
    (``study``, ``trial``, ``run_id``, ``family``, ``weight``, ``objective``).
    """
    names = ", ".join(f"`{s}`" for s in studies)
    lines = [
        f"**{method} ensemble of {len(members)} trials** of {names} ({task}), weights fitted on "
        f"the validation predictions (selected on {metric}); built in "
        f"{run_link(run[0], run[1], 'its MLflow run')} by `hpo ensemble build`.",
    ]
    test = metrics.get("test") or {}
    ensemble, single = test.get("ensemble") or {}, test.get("best_single") or {}
    if ensemble:
        lines += ["", "**Test metrics** (ensemble; best single trial):"]
        for key, value in ensemble.items():
            other = single.get(key)
            lines.append(
                f"- {key}: **{fmt(value)}**" + (f"; {fmt(other)}" if other is not None else "")
            )
    lines += ["", "**Members** (weight, trial, objective):"]
    for m in sorted(members, key=lambda m: -m.weight):
        objective = ", ".join(f"{k} {fmt(v)}" for k, v in m.objective.items())
        link = run_link(studies.get(m.study), m.run_id, f"{m.study} trial {m.trial}")
        lines.append(f"- {m.weight:.2f}: {link} ({m.family}; {objective})")
    return _clip("\n".join(lines))


def version_metric_tags(metrics: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, str]:
    """Model version tags ``test_<metric>``: the ensemble's test metrics, as text.

    Example:
        >>> version_metric_tags({"test": {"ensemble": {"accuracy": 0.951234}}})
        {'test_accuracy': '0.9512'}
    """
    ensemble = (metrics.get("test") or {}).get("ensemble") or {}
    return {f"test_{k}": fmt(v) for k, v in ensemble.items()}
