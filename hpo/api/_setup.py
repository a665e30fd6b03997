"""Creating a study: the space read from a file, a YAML string or a dict; options checked;
the study and its MLflow run created (or an existing one resumed). ``hpo run`` and
``hpo study create`` call :func:`hpo.create_study`, which calls :func:`prepare_study`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from hpo.errors import UsageError
from hpo.names import InvalidNameError, name_problem

if TYPE_CHECKING:
    from hpo.spaces import StudySpec
    from hpo.storage.studies import StudyConfig

#: A search space: a file's path, the text of a space file, or its YAML as a dict.
SpaceSource: TypeAlias = "str | os.PathLike[str] | Mapping[str, Any]"


def load_space(space: SpaceSource) -> StudySpec:
    """The validated spec of ``space``: a path, a YAML string (any text with a line break or
    a ``:``) or a dict; raises :class:`hpo.spaces.SpaceError` naming every problem.

    Example:
        >>> spec = load_space({"family": "image_cnn", "dataset": {"name": "digits"},
        ...     "objective": {"metric": "val_accuracy", "direction": "maximize"},
        ...     "budget": {"max_epochs": 1},
        ...     "params": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2}}})
        >>> spec.family, spec.dataset.name, spec.filename
        ('image_cnn', 'digits', '<dict>')
        >>> load_space("family: image_cnn\\ndataset: {name: digits}\\n")
        Traceback (most recent call last):
        ...
        hpo.spaces._errors.SpaceError: <string>:1: budget: required section is missing: ...
    """
    from hpo.spaces import load_spec, parse_spec

    if isinstance(space, Mapping):
        import yaml

        return parse_spec(yaml.safe_dump(dict(space), sort_keys=False), "<dict>")
    if isinstance(space, str) and ("\n" in space or (":" in space and not Path(space).exists())):
        return parse_spec(space, "<string>")
    return load_spec(Path(space))


@dataclasses.dataclass(frozen=True)
class StudyOptions:
    """How a study is created: what :func:`hpo.create_study`, ``hpo study create`` and
    ``hpo run`` take besides the space.

    ``name`` defaults to the space's; ``storage`` is the study store's URL (default
    ``$HPO_STORAGE``, else ``sqlite:///hpo.db`` here), ``tracking_uri`` MLflow's (default
    ``$MLFLOW_TRACKING_URI``, else ``mlflow.db`` here); ``trials``, ``algorithm``, ``pruner``
    and ``seed`` default to the space's ``defaults``; ``dataset``, ``epochs`` and ``subset``
    override the space's, as do the time limits in seconds (the space's ``budget`` keys of the
    same names): ``trial_timeout`` (one trial), ``study_timeout`` (the whole study, from its
    first claimed trial) and ``study_timeout_grace`` (what running trials get after the
    study's deadline). ``priority``: workers serve higher first; ``max_retries``: retries of
    a trial whose worker died. ``check_data`` loads the dataset once first and checks it
    against the family. With ``resume`` an existing study of that name is loaded instead, when
    it was created with the same space and options.

    Example:
        >>> StudyOptions(name="digits", trials=2).trials
        2
    """

    name: str | None = None
    storage: str | None = None
    tracking_uri: str | None = None
    trials: int | None = None
    algorithm: str | None = None
    pruner: str | None = None
    seed: int | None = None
    dataset: str | None = None
    epochs: int | None = None
    subset: int | None = None
    trial_timeout: float | None = None
    study_timeout: float | None = None
    study_timeout_grace: float | None = None
    priority: int = 0
    max_retries: int = 1
    check_data: bool = True
    resume: bool = False


def _stored_spec(url: str, name: str) -> Any:
    """The run spec (space and overrides) of the existing study ``name``, else None."""
    from hpo.storage import open_storage, store_exists
    from hpo.storage.studies import StudyError, load_config

    if not store_exists(url):
        return None
    try:
        return load_config(open_storage(url), name).spec()
    except StudyError:
        return None


def prepare_study(
    space: SpaceSource,
    options: StudyOptions,
    *,
    on_valid: Callable[[Any, str], None] | None = None,
    name_option: str = "--study",
    resume_hint: str | None = None,
    echo: Callable[[str], None] | None = None,
) -> tuple[Any, StudyConfig, bool]:
    """Validate the space, options and data, then create the study (or load it with ``resume``).

    With ``options.check_data`` the dataset is loaded once and checked against the family (see
    :mod:`hpo.workers.preflight`); ``echo`` (if given) receives what the check found and other
    notes.
    ``on_valid(spec, study_name)`` is called once the space and the options are valid, before
    the data check and before anything is written (``hpo run`` starts its workers there).
    ``name_option`` is how messages name the option that gave the name; ``resume_hint`` how
    the message about an existing study says to continue it (default: by ``name_option``).
    Returns ``(storage, config, created)``. Nothing is written before everything is valid.

    Raises:
        hpo.errors.UsageError: the space, an option, the name or the data is invalid, or the
            study exists (without ``resume``) or differs from what ``resume`` asks for.
        hpo.storage.StorageError: the store cannot be opened.
    """
    from hpo.spaces import SpaceError, SpaceIssue, check_run_options
    from hpo.storage import open_storage, resolve_storage
    from hpo.storage.studies import (
        StudyConfig,
        StudyError,
        apply_overrides,
        create_study,
        load_config,
    )
    from hpo.tracking import resolve_tracking_uri

    name, trials, algorithm, pruner, seed = (
        options.name,
        options.trials,
        options.algorithm,
        options.pruner,
        options.seed,
    )
    dataset, epochs, subset = options.dataset, options.epochs, options.subset
    spec = load_space(space)
    space_name = spec.filename  # the path, "<string>" or "<dict>"
    tracking_uri = credentials_to_env(options.tracking_uri) if options.tracking_uri else None
    overrides: dict[str, Any] = {
        k: v for k, v in {"dataset": dataset, "epochs": epochs, "subset": subset}.items() if v
    }
    overrides.update(_time_limits(options))
    spec_run = apply_overrides(spec, overrides)
    given = {"algorithm": algorithm, "pruner": pruner, "seed": seed}
    algorithm = algorithm or spec.defaults.algorithm
    pruner = pruner or spec.defaults.pruner
    if dataset:
        from hpo.catalog import DATASETS, is_user_target, unknown_names, user_object_problem

        if is_user_target(dataset):
            problem = user_object_problem("dataset", dataset)
            if problem:
                raise UsageError(f"--dataset: {problem}")
        elif dataset not in DATASETS:
            raise UsageError(
                f"unknown dataset {dataset!r}; {unknown_names('dataset', DATASETS.names())}"
            )
    problems = check_run_options(spec_run, algorithm, pruner)
    if problems:
        raise SpaceError([SpaceIssue(space_name, "", None, p) for p in problems])
    study_name = name if name is not None else spec.name
    from hpo.spaces._sections import MAX_SEED

    problem = name_problem(study_name, "study")
    if problem:
        where = f"{name_option}: " if name is not None else f"{space_name}: name: "
        raise InvalidNameError(f"{where}{problem}")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise UsageError(f"--seed: must be between 0 and {MAX_SEED}, got {seed}")
    if on_valid is not None:
        on_valid(spec, study_name)
    url = resolve_storage(options.storage)
    if options.check_data:
        from hpo.workers.preflight import check_study_data, describe

        # A resumed study trains on the data it was created with (its --subset, --dataset),
        # which this command need not repeat: check that, not the space file's own.
        resumed = _stored_spec(url, study_name) if options.resume else None
        description = describe(check_study_data(resumed or spec_run))
        if echo is not None:
            echo(description)
    store = open_storage(url)
    import optuna

    exists = study_name in [s.study_name for s in optuna.get_all_study_summaries(store)]
    if exists:
        if not options.resume:
            how = resume_hint or {
                "--name": "continue it with hpo run --resume",
                "name": "pass resume=True to continue it",
            }.get(name_option, "add --resume to continue it")
            raise StudyError(
                f"study {study_name!r} already exists in {url}: {how}, "
                f"or give another name with {name_option}"
            )
        config = load_config(store, study_name)
        from hpo.storage.studies import get_study_state

        state = get_study_state(store, study_name)
        if state == "cancelled":
            raise StudyError(
                f"study {study_name!r} was cancelled (hpo study cancel) and cannot be resumed: "
                "create a new study with another --study name"
            )
        differences = _resume_differences(config, spec, given, overrides)
        if differences:
            raise StudyError(
                f"--resume: study {study_name!r} was created with other settings: "
                f"{'; '.join(differences)}. Resume it with the same ones, or give another "
                "name with --study"
            )
        if state == "creating":
            # An earlier creation stopped before its MLflow set-up: finish it now.
            _start_tracking(store, config, spec_run, space_name)
        if trials and trials != config.n_trials:
            from hpo.storage.studies import save_config

            config.n_trials = trials
            save_config(store, optuna.load_study(study_name=study_name, storage=store), config)
        return store, config, False
    n_trials = trials or spec.defaults.trials
    if algorithm == "optuna-grid":
        from hpo.engines import grid_size

        size = grid_size(spec_run.space)
        if n_trials > size:
            # The grid ends the study: a budget beyond it could never be reached.
            if echo is not None:
                echo(f"note: the grid has {size} points; the study runs {size} trials")
            n_trials = size
    config = StudyConfig(
        name=study_name,
        source=spec.source,
        filename=space_name,
        algorithm=algorithm,
        pruner=pruner,
        n_trials=n_trials,
        seed=seed if seed is not None else spec.defaults.seed,
        overrides=overrides,
        priority=options.priority,
        max_retries=options.max_retries,
        tracking_uri=credentials_to_env(resolve_tracking_uri(tracking_uri)),
    )
    create_study(store, config)
    _start_tracking(store, config, spec_run, space_name)
    return store, config, True


def _time_limits(options: StudyOptions) -> dict[str, float]:
    """The time limits given (see :class:`StudyOptions`), checked."""
    limits: dict[str, float] = {}
    for key in ("trial_timeout", "study_timeout", "study_timeout_grace"):
        value = getattr(options, key)
        if value is not None:
            option = "--" + key.replace("_", "-")
            limits[key] = seconds_value(value, option, zero_ok=key == "study_timeout_grace")
    return limits


def seconds_value(value: Any, option: str, *, zero_ok: bool = False) -> float:
    """``value`` as seconds: a finite number above 0 (``zero_ok``: 0 or more), else a
    :class:`UsageError` naming ``option``.

    Example:
        >>> seconds_value("90", "--trial-timeout")
        90.0
        >>> seconds_value(0, "--trial-timeout")
        Traceback (most recent call last):
        ...
        hpo.errors.UsageError: --trial-timeout: must be a number of seconds above 0, got 0
    """
    import math

    low = "0 or more" if zero_ok else "above 0"
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        seconds = math.nan
    if (
        isinstance(value, bool)
        or not math.isfinite(seconds)
        or seconds < 0
        or (seconds == 0 and not zero_ok)
    ):
        raise UsageError(f"{option}: must be a number of seconds {low}, got {value!r}")
    return seconds


def _resume_differences(
    config: Any, spec: Any, given: dict[str, Any], overrides: dict[str, Any]
) -> list[str]:
    """What a ``--resume`` asks for that the stored study was not created with.

    The space is compared as parsed (comments and layout may differ); ``given`` holds the
    flags given on the command line (None: not given, the stored value goes on).
    """
    from hpo.spaces import parse_spec

    def meaning(s: Any) -> Any:
        return dataclasses.replace(
            s, name="", description="", source="", filename="", defaults=None
        )

    out = []
    if meaning(spec) != meaning(parse_spec(config.source, config.filename)):
        out.append(
            f"the space file differs from the one the study was created from ({config.filename})"
        )
    for key in ("algorithm", "pruner", "seed"):
        value, stored = given[key], getattr(config, key)
        if value is not None and value != stored:
            out.append(f"--{key} {value} instead of {stored}")
    if overrides and overrides != config.overrides:
        asked = ", ".join(f"--{_option(k)} {v}" for k, v in sorted(overrides.items()))
        kept = (
            ", ".join(f"--{_option(k)} {v}" for k, v in sorted(config.overrides.items())) or "none"
        )
        out.append(f"{asked} instead of {kept}")
    return out


def _option(key: str) -> str:
    return key.replace("_", "-")  # study_timeout: --study-timeout


def credentials_to_env(uri: str) -> str:
    """``uri`` without its password, which moves to ``$MLFLOW_TRACKING_URI`` of this process.

    The study stores the URI without the password; this process and the workers it starts
    (they inherit the environment; nothing goes on a command line) connect with it.
    """
    from hpo.storage import has_password, strip_password
    from hpo.tracking import TRACKING_ENV

    if has_password(uri):
        os.environ[TRACKING_ENV] = uri
    return strip_password(uri)


def _start_tracking(store: Any, config: Any, spec_run: Any, space_name: str) -> None:
    """Create the study's MLflow experiment and run, store their ids, then open the study."""
    import optuna

    from hpo import tracking
    from hpo.storage.studies import save_config, set_study_state
    from hpo.tracking import mlflow_ui

    config.experiment_id, config.parent_run_id = tracking.start_study_run(
        config.tracking_uri or "",
        config.name,
        tags={
            "hpo.family": spec_run.family,
            "hpo.algorithm": config.algorithm,
            "hpo.pruner": config.pruner,
            "hpo.dataset": spec_run.dataset.name,
        },
        params={
            "algorithm": config.algorithm,
            "pruner": config.pruner,
            "n_trials": config.n_trials,
            "seed": config.seed,
            "family": spec_run.family,
            "dataset": spec_run.dataset.name,
            "subset": spec_run.dataset.subset,
            "max_epochs": spec_run.budget.max_epochs,
            "trial_timeout": spec_run.budget.trial_timeout,
            "study_timeout": spec_run.budget.study_timeout,
            "space_file": space_name,
        },
        experiment_tags=mlflow_ui.experiment_tags(
            [n.name for n in spec_run.space.searched_nodes()],
            spec_run.metrics,
            spec_run.directions,
            chart_params=[n.name for n in spec_run.space.searched_nodes() if not n.conditions],
        ),
    )
    save_config(store, optuna.load_study(study_name=config.name, storage=store), config)
    set_study_state(store, config.name, "active")
