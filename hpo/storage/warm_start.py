"""Warm starts: known configurations queued into a study, trained before the sampler proposes.

A configuration is a mapping of parameter path names (as trials record them) to values. Each
is checked against the study's space first: every active parameter given, each value inside
its range, step or choices, no name the space lacks. Then all are queued at once (Optuna's
``enqueue_trial``): workers take queued trials before asking the sampler, for both engines,
and a queued trial counts against the study's budget like any other. Each queued trial records
where it came from (user attribute ``enqueued_from``: the file and entry, the other study and
its trial, or "given"); its MLflow run carries it as the tag ``hpo.enqueued``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo.errors import UsageError
from hpo.storage.studies import ENQUEUED_ATTR

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

    from hpo.spaces import SearchSpace

MAX_FILE_BYTES = 1_000_000  # as for space files: a configuration file is read whole
MAX_CONFIGURATIONS = 10_000


@dataclass(frozen=True)
class Configuration:
    """Parameter values for one trial, and where they came from (shown in MLflow)."""

    params: Mapping[str, Any]
    source: str


def check_configuration(space: SearchSpace, config: Configuration) -> dict[str, Any]:
    """The values of ``config`` that the study searches, checked against ``space``.

    Raises:
        hpo.errors.UsageError: one line naming the source, the parameter and what is wrong.

    Example:
        >>> from hpo.spaces import IntParam, SearchSpace
        >>> space = SearchSpace({"units": IntParam(low=8, high=64)})
        >>> check_configuration(space, Configuration({"units": 16}, "given"))
        {'units': 16}
        >>> check_configuration(space, Configuration({"units": 100}, "given"))
        Traceback (most recent call last):
        ...
        hpo.errors.UsageError: given: parameter 'units' = 100 is outside the space (...)
    """
    from hpo.spaces._optuna import distributions

    if not isinstance(config.params, Mapping) or not all(isinstance(k, str) for k in config.params):
        raise UsageError(f"{config.source}: a configuration is a mapping of parameter names")
    out: dict[str, Any] = {}
    constants: set[str] = set()
    _walk(space.params, "", config, distributions(space), out, constants)
    for name in config.params:
        if name not in out:
            known = ", ".join(sorted(out)) or "none"
            raise UsageError(
                f"{config.source}: {name!r} is not a parameter of the space here "
                f"(its active parameters: {known})"
            )
    return {k: v for k, v in out.items() if k not in constants}


def _walk(
    params: Mapping[str, Any],
    prefix: str,
    config: Configuration,
    every: Mapping[str, Any],
    out: dict[str, Any],
    constants: set[str],
) -> None:
    """Check the active parameters under ``prefix`` against ``config``, into ``out``."""
    from hpo.spaces._params import CategoricalParam, ConstantParam, IntParam, join_path

    for key, p in params.items():
        name = join_path(prefix, key) if prefix else key
        if isinstance(p, ConstantParam):
            if name in config.params and config.params[name] != p.value:
                raise UsageError(
                    f"{config.source}: parameter {name!r} is fixed at {p.value!r} in the "
                    f"space, not {config.params[name]!r}"
                )
            out[name] = p.value
            constants.add(name)
            continue
        if name not in config.params:
            raise UsageError(
                f"{config.source}: parameter {name!r} is missing (the space searches it)"
            )
        value = config.params[name]
        if isinstance(p, IntParam) and isinstance(value, float) and value.is_integer():
            value = int(value)  # 32.0 from a JSON writer is 32
        numeric = not isinstance(p, CategoricalParam)
        if (
            (numeric and (isinstance(value, bool) or not isinstance(value, (int, float))))
            or (isinstance(p, IntParam) and not isinstance(value, int))
            or not _contains(every[name], value)
        ):
            raise UsageError(
                f"{config.source}: parameter {name!r} = {value!r} is outside the space "
                f"({_describe(every[name])})"
            )
        out[name] = value
        if isinstance(p, CategoricalParam):
            chosen = p.choice(value)
            if chosen.params:
                _walk(chosen.params, join_path(name, chosen.label), config, every, out, constants)


def _contains(distribution: Any, value: Any) -> bool:
    try:
        return bool(distribution._contains(distribution.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False


def _describe(distribution: Any) -> str:
    from optuna.distributions import CategoricalDistribution

    if isinstance(distribution, CategoricalDistribution):
        return "one of " + ", ".join(repr(c) for c in distribution.choices)
    step = getattr(distribution, "step", None)
    text = f"{distribution.low} to {distribution.high}"
    return text + (f" in steps of {step}" if step not in (None, 1) else "")


def read_configurations(path: Path) -> list[Configuration]:
    """Configurations from a JSON or YAML file: a list of mappings (or one mapping).

    Raises:
        hpo.errors.UsageError: the file is missing, too large, not JSON/YAML, or not a list
            of mappings (one line naming the file and the entry).
    """
    import yaml

    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise UsageError(f"{path}: {size:,} bytes; a configuration file holds at most 1 MB")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read it: {exc}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(
            f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {first}"
        ) from None
    if isinstance(data, Mapping):
        data = [data]
    if not isinstance(data, list) or not data:
        raise UsageError(f"{path}: expected a list of configurations (mappings of parameters)")
    if len(data) > MAX_CONFIGURATIONS:
        raise UsageError(f"{path}: {len(data):,} configurations; at most {MAX_CONFIGURATIONS:,}")
    out = []
    for i, entry in enumerate(data):
        source = f"{path.name}[{i}]"
        if not isinstance(entry, Mapping):
            raise UsageError(
                f"{source}: expected a mapping of parameters, not {type(entry).__name__}"
            )
        out.append(Configuration(dict(entry), source))
    return out


def top_configurations(store: BaseStorage, study_name: str, k: int) -> list[Configuration]:
    """The parameters of the ``k`` best complete trials of another study in ``store``.

    Best by its first objective, in its direction.

    Raises:
        hpo.errors.UsageError: ``k`` is not positive, or that study has no complete trial.
    """
    import optuna
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    from hpo.storage.studies import load_config

    if k < 1:
        raise UsageError(f"--top must be at least 1, not {k}")
    load_config(store, study_name)  # exists and is an hpo study (StudyError otherwise)
    other = optuna.load_study(study_name=study_name, storage=store)
    done = [
        t
        for t in other.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values and math.isfinite(t.values[0])
    ]
    if not done:
        raise UsageError(f"study {study_name!r} has no complete trial to start from")
    maximize = other.directions[0] == StudyDirection.MAXIMIZE
    done.sort(key=lambda t: (-t.values[0] if maximize else t.values[0], t.number))
    return [
        Configuration(dict(t.params), f"study {study_name}, trial {t.number}") for t in done[:k]
    ]


def enqueue(store: BaseStorage, study_name: str, configurations: Sequence[Configuration]) -> int:
    """Queue ``configurations`` into the study after checking every one; returns how many.

    Nothing is queued unless all pass and the study has budget left for all of them.

    Raises:
        hpo.errors.UsageError: a configuration does not fit the space, the study is
            cancelled, or its budget has fewer trials left than configurations given.
    """
    import optuna

    from hpo.storage.studies import counted_trials, load_config_and_state

    config, state = load_config_and_state(store, study_name)
    if not configurations:
        raise UsageError("no configurations given (--params, --file or --from-study)")
    space = config.spec().space
    checked = [(check_configuration(space, c), c.source) for c in configurations]
    if state == "cancelled":
        raise UsageError(f"study {study_name!r} is cancelled: it takes no more trials")
    study = optuna.load_study(study_name=study_name, storage=store)
    left = config.n_trials - len(counted_trials(study.get_trials(deepcopy=False)))
    if len(checked) > left:
        raise UsageError(
            f"study {study_name!r} has {max(left, 0)} trial(s) of its budget of "
            f"{config.n_trials} left; {len(checked)} configuration(s) given (raise the budget "
            f"with hpo run {study_name} --resume --trials N)"
        )
    for params, source in checked:
        study.enqueue_trial(params, user_attrs={ENQUEUED_ATTR: source})
    return len(checked)
