"""Studies from Python: create or load one, run it with local workers, read its trials.

Example:
    >>> import hpo
    >>> study = hpo.create_study("search_spaces/image_cnn_digits.yaml",
    ...                          name="digits", trials=2, epochs=1)  # doctest: +SKIP
    >>> study.run()  # doctest: +SKIP
    >>> study.best_trial.params["conv_type"], study.best_trial.values  # doctest: +SKIP
    ('SeparableConv2D', [0.83])
    >>> model = study.best_trial.load_model()  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo.api._setup import SpaceSource, StudyOptions, prepare_study
from hpo.errors import HpoError

if TYPE_CHECKING:
    import keras
    from optuna.storages import BaseStorage
    from rich.console import Console

    from hpo.api._workers import LocalWorkers
    from hpo.spaces import StudySpec
    from hpo.storage.status import StudyStatus
    from hpo.storage.studies import StudyConfig
    from hpo.tracking.retention import RetentionReport

# A trial's numeric facts that the runner stores beside its values (seconds, sizes).
_FACTS = ("epochs", "train_seconds", "epoch_seconds_median", "first_epoch_seconds", "params_count")


@dataclass(frozen=True)
class Trial:
    """One trial of a study, as stored when it was read.

    ``state`` is Optuna's (``COMPLETE``, ``PRUNED``, ``FAIL``, ``RUNNING``, ``WAITING``);
    ``values`` the objectives (None unless complete); ``metrics`` the objectives by metric
    name with the trial's epochs, seconds (``train_seconds``, ``epoch_seconds_median``) and
    ``params_count``.

    Example:
        >>> t = Trial(study="s", number=3, state="COMPLETE", params={"conv_type": "Conv2D"},
        ...           values=[0.91], metrics={"val_accuracy": 0.91}, mlflow_run_id="abc")
        >>> t.value, t.complete
        (0.91, True)
    """

    study: str
    number: int
    state: str
    params: dict[str, Any]
    values: list[float] | None
    metrics: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    user_attrs: dict[str, Any] = field(default_factory=dict, repr=False)
    storage: str | None = field(default=None, repr=False)
    tracking_uri: str | None = field(default=None, repr=False)

    @property
    def value(self) -> float | None:
        """The first objective's value (None unless complete)."""
        return self.values[0] if self.values else None

    @property
    def complete(self) -> bool:
        return self.state == "COMPLETE"

    @property
    def feasible(self) -> bool:
        """False when the trial broke a constraint of the space (``constraints:``); such a
        trial is never the best one."""
        from hpo.storage.feasibility import FEASIBLE_ATTR

        return self.user_attrs.get(FEASIBLE_ATTR) is not False

    def load_model(self, *, core: bool = False) -> keras.Model:
        """The trained model, downloaded from the trial's MLflow run and loaded in safe mode.

        It takes raw inputs, as exported models do; ``core=True`` gives the model that reads
        the arrays the trial trained on (see :func:`hpo.inputs.core_model`).

        Raises:
            hpo.tracking.models.ModelError: the trial is not complete, or its run holds no model.
        """
        from hpo.tracking.models import load_keras_model, resolve_trial_model

        found = resolve_trial_model(f"{self.study}:{self.number}", self.storage, self.tracking_uri)
        return found.load() if core else load_keras_model(found.model_path)

    @classmethod
    def _from_frozen(cls, t: Any, config: StudyConfig, storage: str) -> Trial:
        from hpo.storage.studies import RUN_ID_ATTR

        values = list(t.values) if t.values is not None else None
        metrics: dict[str, float] = {}
        if values is not None:
            metrics.update(zip(config.spec().metrics, values, strict=False))
        for key in _FACTS:
            if isinstance(t.user_attrs.get(key), int | float):
                metrics[key] = t.user_attrs[key]
        return cls(
            study=config.name,
            number=t.number,
            state=t.state.name,
            params=dict(t.params),
            values=values,
            metrics=metrics,
            mlflow_run_id=t.user_attrs.get(RUN_ID_ATTR),
            user_attrs=dict(t.user_attrs),
            storage=storage,
            tracking_uri=config.tracking_uri,
        )


class Study:
    """A study in the store: its configuration, trials and progress; :meth:`run` trains it.

    Made by :func:`create_study` or :func:`load_study`. Every read goes to the store, so
    trials that workers elsewhere (``hpo worker``) finish show up too.
    """

    def __init__(
        self, store: BaseStorage, storage: str, name: str, *, created: bool = False
    ) -> None:
        self._store = store
        self.storage = storage  # the store's URL, password masked where shown
        self.name = name
        self.created = created  # made by create_study (False: loaded, or resumed)

    def __repr__(self) -> str:
        from hpo.storage import mask_url

        return f"Study(name={self.name!r}, storage={mask_url(self.storage)!r})"

    @property
    def config(self) -> StudyConfig:
        """What the study was created with (space, algorithm, budget, MLflow ids)."""
        from hpo.storage.studies import load_config

        return load_config(self._store, self.name)

    @property
    def tracking_uri(self) -> str | None:
        return self.config.tracking_uri

    @property
    def mlflow_page(self) -> str | None:
        """The study's trials in its tracking server's UI (the training runs, with hpo's
        saved view); None for a local tracking store, or while the experiment waits in the
        outbox for the server."""
        from hpo.tracking import mlflow_ui
        from hpo.tracking._outbox import is_placeholder

        config = self.config
        if not config.experiment_id or is_placeholder(config.experiment_id):
            return None
        return mlflow_ui.page_url(
            config.tracking_uri or "", mlflow_ui.runs_page(config.experiment_id)
        )

    @property
    def metrics(self) -> list[str]:
        """The objective metrics, in order (``values`` of a trial follow it)."""
        return list(self.config.spec().metrics)

    def status(self) -> StudyStatus:
        """Trials finished, pruned, failed and running, and the best values so far."""
        from hpo.storage.status import study_status

        return study_status(self._store, self.name)

    @property
    def trials(self) -> list[Trial]:
        """Every trial counted against the budget (a retried trial once), by number."""
        import optuna

        from hpo.storage.studies import counted_trials

        config = self.config
        study = optuna.load_study(study_name=self.name, storage=self._store)
        return [
            Trial._from_frozen(t, config, self.storage)
            for t in counted_trials(study.get_trials(deepcopy=False))
        ]

    @property
    def best_trial(self) -> Trial | None:
        """The best complete trial that meets the space's constraints (the first of the
        Pareto front for several objectives), None before one completes."""
        import optuna

        from hpo.storage.feasibility import best_trials

        best = best_trials(optuna.load_study(study_name=self.name, storage=self._store))
        return Trial._from_frozen(best[0], self.config, self.storage) if best else None

    def best_summary(self) -> dict[str, Any] | None:
        """The best feasible trials (the Pareto front for several objectives) as ``hpo study
        best --json`` prints them: number, values, params, size and MLflow run; None before one
        completes (and meets the space's constraints)."""
        from hpo.tracking.study_report import best_trial_summary

        return best_trial_summary(self._store, self.config)

    def pareto_grid(self, path: str | Path, tracking_uri: str | None = None) -> list[int]:
        """Write the Pareto front's generated images, one row ordered by the first objective,
        as a PNG to ``path`` (what ``hpo study pareto NAME -o PATH`` does); returns the numbers
        of the trials drawn, in order.

        Raises:
            hpo.tracking.pareto.ParetoError: no complete trial, or no Pareto trial's run holds
                a ``generated.png`` (a family other than ``style_transfer``), or ``path``'s
                folder does not exist.
        """
        from hpo.tracking.pareto import write_pareto_grid

        return write_pareto_grid(self._store, self.config, Path(path), tracking_uri)

    def reap(self, grace_period: int = 30) -> list[int]:
        """Fail and requeue the trials without a heartbeat for ``grace_period`` seconds (their
        worker died), as every worker's reaper does; returns their numbers."""
        from hpo.storage import open_storage
        from hpo.storage.trial_failures import reap_stale_trials

        store = open_storage(self.storage, max(1, grace_period // 3), grace_period)
        return reap_stale_trials(store, self.config)

    def retain(self, keep_best: int | None = None, *, dry_run: bool = False) -> RetentionReport:
        """Apply the retention policy now: delete the model files (model, validation and test
        predictions) of the finished trials that are neither among the ``keep_best`` best
        complete trials nor members of a registered ensemble; their metrics, parameters and
        curves stay. ``keep_best`` defaults to the space's ``retention: {keep_best: K}``.
        ``dry_run`` deletes nothing and reports what would go.

        Returns what was kept and deleted, with the bytes freed and kept (sizes as MLflow
        lists them).

        Raises:
            hpo.errors.UsageError: ``keep_best`` is not at least 1, or neither it nor the
                space gives one, or the study has no MLflow tracking store.
            hpo.tracking.retention.RetentionError: MLflow does not answer.
        """
        from hpo.errors import UsageError
        from hpo.tracking.retention import retain

        config = self.config
        if keep_best is None:
            policy = config.spec().retention
            if policy is None:
                raise UsageError(
                    f"study {self.name!r} has no retention policy in its space (`retention: "
                    "{keep_best: K}`): give --keep-best K"
                )
            keep_best = policy.keep_best
        return retain(self._store, config, keep_best, dry_run=dry_run)

    def artifact_usage(self) -> dict[str, Any]:
        """The bytes of the files in the study's trial runs, as MLflow lists them (``bytes``,
        ``runs``, ``runs_with_model``), and what the retention policy removed
        (``removed_runs``, ``freed_bytes``).

        Raises:
            hpo.errors.UsageError: the study has no MLflow tracking store.
            hpo.tracking.retention.RetentionError: MLflow does not answer.
        """
        from hpo.tracking.retention import artifact_usage

        return artifact_usage(self._store, self.config)

    def report(self, by: str, *, log_plot: bool = False) -> list[dict[str, Any]]:
        """Per value of parameter ``by``: trials, best and median objective, median seconds
        per epoch and parameter count (what ``hpo study report --by`` shows).

        ``log_plot`` attaches the bar charts to the study's MLflow run as
        ``report_by_<by>.png``.

        Raises:
            hpo.errors.UsageError: ``by`` is not a parameter of the study.
        """
        from hpo.errors import UsageError
        from hpo.tracking.study_report import report_by, report_by_png

        config = self.config
        try:
            rows = report_by(self._store, config, by)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if log_plot and config.tracking_uri and config.parent_run_id and rows:
            from hpo import tracking

            tracking.log_artifact_files(
                tracking.client(config.tracking_uri),
                config.parent_run_id,
                {f"report_by_{by}.png": report_by_png(rows, by, config.spec().metrics[0])},
            )
        return rows

    def run(
        self,
        trials: int | None = None,
        workers: int | None = None,
        progress: bool = True,
        *,
        gpus: str | None = None,
        trials_per_gpu: int = 1,
        backend: str | None = None,
        local_workers: LocalWorkers | None = None,
        console: Console | None = None,
    ) -> StudyStatus:
        """Run the study with local worker processes (as ``hpo run`` does) until it is done.

        ``trials`` sets the study's trial budget (its total, as ``hpo run --resume --trials``);
        ``workers`` defaults to the space's ``defaults.workers``. The progress is shown in the
        terminal or the notebook (on ``console`` if given); the workers log to
        ``hpo-logs/NAME/``. Interrupting (Ctrl-C, the kernel's stop button) stops the workers.
        ``local_workers`` gives workers already started (:class:`hpo.LocalWorkers`, as ``hpo
        run`` starts them while the data is checked; ``workers``, ``gpus``, ``trials_per_gpu``
        and ``backend`` are then unused).

        Returns the study's status once the workers have exited.

        Raises:
            WorkersFailedError: a worker exited with an error (its log says why).
        """
        import optuna

        from hpo.api._workers import LocalWorkers, WorkersFailedError, run_workers
        from hpo.storage.studies import save_config

        config = self.config
        if trials and trials != config.n_trials:
            config.n_trials = trials
            save_config(
                self._store, optuna.load_study(study_name=self.name, storage=self._store), config
            )
        launch = local_workers
        if launch is None:
            launch = LocalWorkers(
                self.storage, workers, gpus=gpus, trials_per_gpu=trials_per_gpu, backend=backend
            )
            launch.start(config.spec(), self.name)
        ok, _, st = run_workers(self._store, launch, self.name, progress=progress, console=console)
        if not ok:
            codes = [p.returncode for p in launch.procs]
            raise WorkersFailedError(
                f"study {self.name!r}: worker exit statuses {codes}; see "
                + ", ".join(str(p) for p in launch.logs)
            )
        return st

    def enqueue(
        self,
        params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        *,
        file: str | Path | None = None,
        from_study: str | None = None,
        top: int = 1,
    ) -> int:
        """Queue known configurations; workers train them before the sampler proposes.

        ``params`` is one mapping of parameter path names to values, or a list of them;
        ``file`` a JSON or YAML file holding such a list; ``from_study`` another study in
        the same store, whose ``top`` best complete trials are taken. Every configuration is
        checked against this study's space and its budget first; queued trials count against
        the budget and their MLflow runs carry the tag ``hpo.enqueued`` (where each came
        from). Works for both engines. Returns how many were queued.

        Raises:
            hpo.errors.UsageError: a configuration does not fit the space (nothing is
                queued), the budget has too few trials left, or the study is cancelled.
        """
        from hpo.storage.warm_start import (
            Configuration,
            enqueue,
            read_configurations,
            top_configurations,
        )

        configurations: list[Configuration] = []
        if params is not None:
            given = [params] if isinstance(params, Mapping) else list(params)
            configurations += [
                Configuration(p, "given" if len(given) == 1 else f"given[{i}]")
                for i, p in enumerate(given)
            ]
        if file is not None:
            configurations += read_configurations(Path(file))
        if from_study is not None:
            configurations += top_configurations(self._store, from_study, top)
        return enqueue(self._store, self.name, configurations)

    def pause(self) -> None:
        """Stop handing out new trials (running trials finish)."""
        self._set_state("paused")

    def resume(self) -> None:
        """Hand out trials of a paused study again."""
        self._set_state("active")

    def cancel(self) -> None:
        """End the study for good: no new trials."""
        self._set_state("cancelled")

    def _set_state(self, state: str) -> None:
        from hpo.storage.studies import set_study_state

        set_study_state(self._store, self.name, state)


def create_study(
    space: SpaceSource,
    options: StudyOptions | None = None,
    *,
    echo: Callable[[str], None] | None = None,
    on_valid: Callable[[StudySpec, str], None] | None = None,
    name_option: str = "name",
    resume_hint: str | None = None,
    **fields: Any,
) -> Study:
    """Create a study from a search space: a file's path, the YAML text of one, or a dict.

    The options are those of ``hpo study create``, as a :class:`StudyOptions` or as its fields
    by keyword (``name``, ``storage``, ``tracking_uri``, ``trials``, ``algorithm``, ``pruner``,
    ``seed``, ``dataset``, ``epochs``, ``subset``, ``trial_timeout``, ``study_timeout``,
    ``study_timeout_grace``, ``priority``, ``max_retries``, ``check_data``, ``resume``);
    keywords override ``options``. With ``resume`` an existing
    study of that name is loaded instead, when it was created with the same space and options
    (the study's ``created`` says which happened).

    ``echo`` receives notes (what the data check found); ``on_valid(spec, study_name)`` is
    called once the space and options are valid, before the data check and before anything
    is written; ``name_option`` is how messages name the option that gave the name, and
    ``resume_hint`` how they say to continue an existing study.

    Example:
        >>> study = hpo.create_study({"family": "image_cnn", "dataset": {"name": "digits"},
        ...     "objective": {"metric": "val_accuracy", "direction": "maximize"},
        ...     "budget": {"max_epochs": 1},
        ...     "params": {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-1}}},
        ...     name="lr", trials=2)  # doctest: +SKIP

    Raises:
        hpo.errors.UsageError: the space or an option is invalid, or the study exists.
        TypeError: a keyword that is not a field of :class:`StudyOptions`.
    """
    from hpo.storage import resolve_storage

    options = dataclasses.replace(options or StudyOptions(), **fields)
    store, config, created = prepare_study(
        space,
        options,
        on_valid=on_valid,
        name_option=name_option,
        resume_hint=resume_hint,
        echo=echo,
    )
    return Study(store, resolve_storage(options.storage), config.name, created=created)


def load_study(name: str, storage: str | None = None) -> Study:
    """The study ``name`` in the store (``storage``, else ``$HPO_STORAGE``, else hpo.db here).

    Raises:
        hpo.storage.studies.StudyError: there is no such study (or it was not created by hpo).
    """
    from hpo.storage import open_storage, resolve_storage, store_exists
    from hpo.storage.studies import StudyError, load_config

    url = resolve_storage(storage)
    if not store_exists(url):
        raise StudyError(f"no study named {name!r}: the study store {url} does not exist")
    store = open_storage(url)
    load_config(store, name)  # exists, and is an hpo study
    return Study(store, url, name)


def list_studies(storage: str | None = None) -> list[dict[str, Any]]:
    """Every study in the store with its progress (:meth:`Study.status` as a dict); a study
    that hpo did not create is ``{"name": ..., "foreign": True}``. No store yet: no studies
    (and none is created)."""
    import optuna

    from hpo.storage import open_storage, resolve_storage, store_exists
    from hpo.storage.status import study_status
    from hpo.storage.studies import StudyError

    url = resolve_storage(storage)
    if not store_exists(url):
        return []
    store = open_storage(url)
    rows: list[dict[str, Any]] = []
    for summary in optuna.get_all_study_summaries(store):
        try:
            rows.append(study_status(store, summary.study_name).to_dict())
        except StudyError:
            rows.append({"name": summary.study_name, "foreign": True})
    return rows


__all__ = [
    "HpoError",
    "Study",
    "StudyOptions",
    "Trial",
    "create_study",
    "list_studies",
    "load_study",
]
