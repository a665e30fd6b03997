"""Runs one trial inside a trial process: build, train, report every epoch, record.

This module imports Keras (and with it TensorFlow or JAX); only trial processes import it.
A :class:`TrialRunner` lives as long as its process and keeps the loaded dataset, the study
store connection and the MLflow client between trials.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import math
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hpo import tracking
from hpo.catalog import RECORDED_METRICS
from hpo.datasets import Dataset, DatasetCache
from hpo.families import get_family
from hpo.spaces import DatasetSpec, Params
from hpo.spaces._constraints import violated, violations
from hpo.storage._retry import with_db_retry
from hpo.storage.feasibility import record_feasibility
from hpo.storage.studies import ENQUEUED_ATTR, RUN_ID_ATTR, StudyConfig
from hpo.storage.unread_params import record_params_read
from hpo.tracking.artifacts import (
    CURVES_FILE,
    DATASET_FILE,
    HISTORY_FILE,
    MODEL_FILE,
    PARAMS_FILE,
    PREDICTIONS_FILE,
)
from hpo.workers import checkpoints
from hpo.workers._gradients import custom_gradient_names, forget_custom_gradients
from hpo.workers._trial_files import learning_curve_png, stored_rows
from hpo.workers.best_epoch import BestEpoch
from hpo.workers.epoch_callback import EpochCallback, log_epoch_artifacts
from hpo.workers.model_checks import ModelCheckError, check_model
from hpo.workers.tasks import (
    FinalizeTask,
    TrialFailedError,
    TrialResult,
    TrialSetupError,
    TrialTask,
)

log = logging.getLogger("hpo.runner")


def warm_up() -> None:
    """Import what every trial needs (Keras and its backend, MLflow, the study store's modules)
    ahead of the first trial.

    A failed import is left for the trial to raise, with the trial's own error handling.

    Then the objects those imports made (some 650,000 with TensorFlow) are moved out of the
    garbage collector's sight (:func:`gc.freeze`): they live as long as the process, and every
    full collection scanned them all, about 0.3 s each on a CPU core, at least once per trial
    (measured: 275 ms, then 7 ms). Only for a process that runs trials, as trial processes do.
    """
    with contextlib.suppress(Exception):  # the trial that needs it reports the error
        import keras  # noqa: F401
        import mlflow.store.tracking.sqlalchemy_store  # the default store
        import mlflow.tracking  # noqa: F401

        from hpo.storage import import_store_modules

        import_store_modules()  # the study's store URL comes with the first trial
    gc.collect()  # what the imports left as garbage is freed, not frozen
    gc.freeze()


class TrialRunner:
    """Runs trials one after another in this process."""

    def __init__(self) -> None:
        self._datasets = DatasetCache(keep=1)  # one dataset in memory at a time
        self._storages: dict[str, Any] = {}

    def dataset(self, spec: DatasetSpec) -> Dataset:
        return self._datasets.get(spec)

    def _storage(self, url: str) -> Any:
        if url not in self._storages:
            from hpo.storage import open_storage

            self._storages[url] = open_storage(url)
        return self._storages[url]

    def finalize(self, task: FinalizeTask) -> str | None:
        """End the study's MLflow run with its plots; None when done, else the error."""
        from hpo.tracking.study_report import finalize_study

        try:
            config = StudyConfig.from_json(task.config_json)
            storage = self._storage(task.storage_url)
            with_db_retry(lambda: finalize_study(storage, config), what="finalizing the study")
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def run(self, task: TrialTask, notify: Callable[[str, Any], None]) -> TrialResult:
        """Run ``task``; ``notify("started", run_id)`` is sent once its MLflow run exists."""
        import keras

        config = StudyConfig.from_json(task.config_json)
        spec = config.spec()
        storage = self._storage(task.storage_url)
        mlflow = tracking.client(config.tracking_uri) if config.tracking_uri else None
        run_id: str | None = None
        if mlflow is not None and config.experiment_id:
            # A queued configuration (hpo study enqueue) says where it came from.
            attrs = with_db_retry(lambda: storage.get_trial(task.trial_id).user_attrs)
            enqueued = {"hpo.enqueued": str(attrs[ENQUEUED_ATTR])} if ENQUEUED_ATTR in attrs else {}
            run_id = tracking.start_trial_run(
                mlflow,
                config.experiment_id,
                config.parent_run_id,
                config.name,
                task.trial_number,
                {
                    "hpo.family": spec.family,
                    "hpo.algorithm": config.algorithm,
                    "hpo.pruner": config.pruner,
                    "hpo.dataset": spec.dataset.name,
                    "hpo.backend": keras.backend.backend(),
                    **enqueued,
                },
                task.params,
            )
            with_db_retry(lambda: storage.set_trial_user_attr(task.trial_id, RUN_ID_ATTR, run_id))
            notify("started", run_id)
        result = TrialResult(state="FAIL", run_id=run_id)
        gradients_before = custom_gradient_names()
        try:
            result = self._train(task, config, storage, mlflow, run_id)
        except TrialFailedError as exc:
            result.reason = str(exc)
        except TrialSetupError as exc:
            result.reason = str(exc)
            result.setup_failed = True
            if mlflow is not None and run_id:
                tracking.log_artifact_files(
                    mlflow, run_id, {"traceback.txt": traceback.format_exc().encode()}
                )
        except Exception as exc:
            result.reason = f"{type(exc).__name__}: {exc}"
            if mlflow is not None and run_id:
                tracking.log_artifact_files(
                    mlflow, run_id, {"traceback.txt": traceback.format_exc().encode()}
                )
        finally:
            # One full collection frees the trial's model (its layers hold reference cycles);
            # clear_session's own would be a second one.
            keras.backend.clear_session(free_memory=False)
            forget_custom_gradients(gradients_before)
            gc.collect()
        result.run_id = run_id
        if mlflow is not None and run_id:
            feasible = (
                {"hpo.feasible": "false" if result.violated else "true"}
                if result.violated is not None
                else {}
            )
            tracking.end_trial_run(
                mlflow,
                run_id,
                result.state,
                result.reason,
                self._note(task, config, result),
                feasible,
            )
            self._update_study_note(storage, config, task.trial_number, result)
        return result

    @staticmethod
    def _note(task: TrialTask, config: StudyConfig, result: TrialResult) -> str:
        from hpo.tracking.notes import trial_note

        metric = config.spec().metrics[0]
        value = (result.metrics or {}).get(metric)
        epochs = (result.metrics or {}).get("epochs")
        kept = (result.metrics or {}).get("kept_epoch")
        return trial_note(
            task.trial_number,
            result.state,
            metric,
            float(value) if value is not None else None,
            int(epochs) if epochs else None,
            result.reason,
            config.pruner,
            infeasible=result.violated or (),
            untrained=result.untrained,
            kept_epoch=int(kept) if kept else None,
        )

    @staticmethod
    def _update_study_note(
        storage: Any, config: StudyConfig, number: int, result: TrialResult
    ) -> None:
        """The study run's description, with this trial (not told to the study yet) counted."""
        from hpo.tracking.notes import update_study_note

        try:
            with_db_retry(
                lambda: update_study_note(
                    storage, config, {number: (result.state, result.values or None)}
                ),
                what="updating the study's description",
            )
        except Exception as exc:  # a description must never fail a trial
            log.warning("could not update the description of study %s: %s", config.name, exc)

    def _train(
        self, task: TrialTask, config: StudyConfig, storage: Any, mlflow: Any, run_id: str | None
    ) -> TrialResult:
        import keras

        spec = config.spec()
        try:
            data = self.dataset(spec.dataset)
        except Exception as exc:
            raise TrialSetupError(
                f"loading dataset {spec.dataset.name!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
        try:
            family = get_family(spec.family)
            family.check_data(data)
        except (Exception, SystemExit) as exc:  # a family module may even call sys.exit
            raise TrialSetupError(
                f"family {spec.family!r} failed to load: {type(exc).__name__}: {exc}"
            ) from exc
        hp = Params(task.params)
        if config.seed is not None:
            keras.utils.set_random_seed((config.seed * 100_003 + task.trial_number) % 2**31)
        model = family.build(hp, data)
        try:
            # Outputs that suit the task, the objective's and the constraints' metrics, before
            # the first epoch.
            logged = [m for m in spec.metrics if m not in RECORDED_METRICS]
            bounded = [c.metric for c in spec.constraints if c.metric not in RECORDED_METRICS]
            check_model(model, family, data, logged, constrained=bounded)
        except ModelCheckError as exc:
            raise TrialFailedError(f"family {spec.family!r}: {exc}") from None
        checkpointing = (
            spec.budget.checkpoints
            and mlflow is not None
            and bool(run_id)
            and checkpoints.can_resume(family)
        )
        resumed = None
        if checkpointing:
            resumed = checkpoints.resume(
                storage, mlflow, config.name, task.trial_id, run_id, model, spec.budget.max_epochs
            )
            if resumed is not None:
                log.info("trial %d resumes after epoch %d", task.trial_number, resumed.epoch)
        return self._fit(
            task, config, storage, mlflow, run_id, model, family, hp, data, resumed, checkpointing
        )

    def _fit(
        self,
        task: TrialTask,
        config: StudyConfig,
        storage: Any,
        mlflow: Any,
        run_id: str | None,
        model: Any,
        family: Any,
        hp: Params,
        data: Dataset,
        resumed: checkpoints.Checkpoint | None,
        checkpointing: bool,
    ) -> TrialResult:
        import optuna

        from hpo.engines import create_pruner

        spec = config.spec()
        params_count = int(model.count_params())
        with_db_retry(
            lambda: storage.set_trial_user_attr(task.trial_id, "params_count", params_count)
        )
        # The one recorded metric known before training: a model too large for a constraint
        # is infeasible whatever it would learn, so it is not trained (docs/space-language.md).
        known = {"params_count": float(params_count)}
        early = violated(spec.constraints, known)
        if early:
            self._record_feasibility(storage, task.trial_id, spec.constraints, known)
            if mlflow is not None and run_id:
                tracking.log_metrics(mlflow, run_id, {"final_params_count": params_count}, 0)
            return TrialResult(
                state="PRUNED",
                metrics={"params_count": params_count},
                violated=early,
                untrained=True,
            )
        single = not spec.multi_objective
        pruner = create_pruner(config.pruner, spec.budget)
        # Without a pruner there is nothing to ask after each epoch (nor a study to ask with).
        prunes = single and not isinstance(pruner, optuna.pruners.NopPruner)
        study: optuna.Study | None = None
        if prunes:
            study = with_db_retry(
                lambda: optuna.load_study(
                    study_name=config.name,
                    storage=storage,
                    sampler=optuna.samplers.RandomSampler(),
                    pruner=pruner,
                ),
                what="loading the study",
            )
        metric = spec.metrics[0]
        # The epoch a complete trial keeps (hpo.workers.best_epoch); several objectives: the last.
        kept = (
            BestEpoch(model, metric, spec.directions[0])
            if single and spec.budget.restore_best_epoch
            else None
        )

        def report(epoch: int, logs: dict[str, float], seconds: float) -> None:
            if mlflow is not None and run_id:
                tracking.log_metrics(mlflow, run_id, {**logs, "epoch_seconds": seconds}, epoch)
                log_epoch_artifacts(
                    mlflow, run_id, family, model, hp, data, epoch, spec.budget.max_epochs
                )
            if not single:
                return
            if metric not in logs:
                raise TrialFailedError(
                    f"objective metric {metric!r} is not among the metrics Keras logged "
                    f"({', '.join(sorted(logs))})"
                )
            with_db_retry(
                lambda: storage.set_trial_intermediate_value(task.trial_id, epoch, logs[metric])
            )

        def prune(epoch: int) -> bool:
            if not single or epoch >= spec.budget.max_epochs or study is None:
                return False
            loaded = study
            return with_db_retry(
                lambda: bool(pruner.prune(loaded, storage.get_trial(task.trial_id))),
                what="asking the pruner",
            )

        checkpoint_seconds: list[float] = []
        # When the training a retry would redo began: the last checkpoint's end, or fit's start.
        last_checkpoint = time.perf_counter()

        def on_epoch(epoch: int, logs: dict[str, float], seconds: float) -> bool:
            nonlocal checkpointing, last_checkpoint
            report(epoch, logs, seconds)
            if kept is not None:
                kept.update(epoch, logs, last=epoch >= spec.budget.max_epochs)
            if prune(epoch):
                return True
            if (
                checkpointing
                and run_id
                and epoch < spec.budget.max_epochs
                and time.perf_counter() - last_checkpoint >= spec.budget.checkpoint_interval
            ):
                try:
                    best = kept.earlier(epoch) if kept is not None else None
                    checkpoint_seconds.append(
                        checkpoints.save(
                            mlflow,
                            run_id,
                            model,
                            epoch,
                            callback.history,
                            callback.epoch_seconds,
                            best,
                        )
                    )
                except Exception as exc:  # a checkpoint must never fail the trial
                    log.warning("trial %d: no more checkpoints: %s", task.trial_number, exc)
                    checkpointing = False
                last_checkpoint = time.perf_counter()
            return False

        callback = EpochCallback(on_epoch)
        start = 0
        if resumed is not None:
            # The earlier epochs' values go to this trial first: the pruner sees one curve.
            for epoch, (logs, seconds) in enumerate(
                zip(resumed.history, resumed.epoch_seconds, strict=True), 1
            ):
                report(epoch, logs, seconds)
            start = callback.epochs = resumed.epoch
            callback.history = list(resumed.history)
            callback.epoch_seconds = list(resumed.epoch_seconds)
            if kept is not None:
                kept.resume(resumed.history, resumed.best_epoch, resumed.best_weights)
            callback.pruned = prune(start)
        t0 = last_checkpoint = time.perf_counter()
        if callback.pruned:
            pass  # pruned on its resumed curve: nothing left to train
        elif start:
            family.fit(
                model,
                hp,
                data,
                spec.budget.max_epochs,
                [callback.keras_callback],
                initial_epoch=start,
            )
        else:
            family.fit(model, hp, data, spec.budget.max_epochs, [callback.keras_callback])
        # The epochs of the attempt it resumed count as this trial's training.
        train_seconds = time.perf_counter() - t0 + sum(callback.epoch_seconds[:start])
        # Which parameters the family read: the worker reports those no trial reads.
        with_db_retry(lambda: record_params_read(storage, task.trial_id, hp))
        if callback.failure:
            raise TrialFailedError(callback.failure)
        if not callback.history:
            raise TrialFailedError("training ended before the first epoch finished")
        # A complete trial's metrics, model and predictions: those of the epoch it keeps.
        kept_epoch = (
            kept.restore(callback.epochs)
            if kept is not None and not callback.pruned
            else callback.epochs
        )
        final = dict(callback.history[kept_epoch - 1])
        final.update(
            params_count=params_count,
            train_seconds=train_seconds,
            epochs=callback.epochs,
            kept_epoch=kept_epoch,
            epoch_seconds_median=float(np.median(callback.epoch_seconds)),
        )
        # What study reports and bench/ read; the first epoch holds the model's compile time
        # (XLA on JAX), which bench/gpu_trials.py reads.
        timings = {
            "epochs": callback.epochs,
            "kept_epoch": kept_epoch,
            "train_seconds": train_seconds,
            "epoch_seconds_median": final["epoch_seconds_median"],
            "first_epoch_seconds": callback.epoch_seconds[0],
        }
        if checkpoint_seconds:  # what checkpoints cost this trial (bench/resume.py measures it)
            timings["checkpoint_seconds"] = sum(checkpoint_seconds)
        for key, value in timings.items():
            with_db_retry(
                lambda k=key, v=value: storage.set_trial_user_attr(task.trial_id, k, v)  # type: ignore[misc]
            )
        if mlflow is not None and run_id:
            # ``objective`` (``objective_2``, ... for the next ones): one column that reads and
            # sorts the same in every study, whatever metric it optimizes.
            objective = {
                ("objective" if i == 0 else f"objective_{i + 1}"): final[m]
                for i, m in enumerate(spec.metrics)
                if m in final
            }
            tracking.log_metrics(
                mlflow,
                run_id,
                {**{f"final_{k}": v for k, v in final.items()}, **objective},
                callback.epochs,
            )
        missing = [c.metric for c in spec.constraints if c.metric not in final]
        if missing:
            raise TrialFailedError(
                f"constraint metric {missing[0]!r} was not logged; available: "
                f"{', '.join(sorted(final))}"
            )
        broken = (
            self._record_feasibility(storage, task.trial_id, spec.constraints, final)
            if spec.constraints
            else None
        )
        if callback.pruned:
            return TrialResult(state="PRUNED", metrics=final, violated=broken)
        missing = [m for m in spec.metrics if m not in final]
        if missing:
            raise TrialFailedError(
                f"objective metric {missing[0]!r} was not logged; available: "
                f"{', '.join(sorted(final))}"
            )
        values = [float(final[m]) for m in spec.metrics]
        bad = [m for m, v in zip(spec.metrics, values, strict=True) if not math.isfinite(v)]
        if bad:
            raise TrialFailedError(f"objective {bad[0]} is {final[bad[0]]}")
        if mlflow is not None and run_id:
            t0 = time.perf_counter()
            self._record(mlflow, run_id, model, family, hp, data, callback)
            # What storing the trial costs on top of training (bench/overhead.py reads it).
            record_seconds = time.perf_counter() - t0
            tracking.log_metrics(
                mlflow, run_id, {"record_seconds": record_seconds}, callback.epochs
            )
            with_db_retry(
                lambda: storage.set_trial_user_attr(task.trial_id, "record_seconds", record_seconds)
            )
        return TrialResult(state="COMPLETE", values=values, metrics=final, violated=broken)

    @staticmethod
    def _record_feasibility(
        storage: Any, trial_id: int, constraints: Any, metrics: dict[str, float]
    ) -> list[str]:
        """Store the trial's violations (what Optuna's samplers read); the broken ones."""
        broken = violated(constraints, metrics)
        values = violations(constraints, metrics)
        with_db_retry(lambda: record_feasibility(storage, trial_id, values, broken))
        return broken

    def _record(
        self,
        mlflow: Any,
        run_id: str,
        model: Any,
        family: Any,
        hp: Params,
        data: Dataset,
        callback: EpochCallback,
    ) -> None:
        """Save the model, its validation predictions, the test targets and its learning curves.

        The test split is not predicted here: only the models an ensemble scores on it need
        test predictions, and :mod:`hpo.ensemble` makes them from the stored model at the final
        stage (on image_cnn that prediction was most of what a trial paid on top of training;
        ``bench/overhead.py``). The test targets (and language models' test rows) are stored so
        that candidates can still be checked to share one test split.
        """
        summary = data.summary()
        with tempfile.TemporaryDirectory() as tmp:
            model_path = Path(tmp) / MODEL_FILE
            try:
                # What users deploy takes raw inputs: the dataset's transformation as layers.
                saved = family.saved_model(model, data)
                saved.save(model_path)
            except Exception as exc:
                if "inputs" not in summary:
                    raise
                # Keep the trial; its dataset.json says why its model takes transformed inputs,
                # and an ensemble export names the problem.
                saved = model
                summary["inputs_problem"] = f"{type(exc).__name__}: {exc}"[:500]
                model.save(model_path)
            if saved is model:
                summary.pop("inputs", None)  # dataset.json: "inputs" = what model.keras takes
            preds = io.BytesIO()
            arrays: dict[str, np.ndarray] = {}
            for name, split in (("validation", data.validation), ("test", data.test)):
                rows = stored_rows(len(split.y), data.num_classes, data.task)
                x, y = (split.x, split.y) if rows is None else (split.x[rows], split.y[rows])
                if name == "validation":
                    arrays[name] = family.predict(model, hp, x)
                arrays[f"{name}_true"] = y
                if rows is not None:
                    arrays[f"{name}_rows"] = rows
            np.savez_compressed(preds, allow_pickle=False, **arrays)
            tracking.log_artifact_files(
                mlflow,
                run_id,
                {
                    **family.extra_artifacts(model, hp, data),
                    PARAMS_FILE: json.dumps(hp.to_dict(), indent=1, default=str).encode(),
                    MODEL_FILE: model_path,
                    PREDICTIONS_FILE: preds.getvalue(),
                    HISTORY_FILE: json.dumps(
                        {"epochs": callback.history, "epoch_seconds": callback.epoch_seconds},
                        indent=1,
                    ).encode(),
                    CURVES_FILE: learning_curve_png(callback.history),
                    DATASET_FILE: json.dumps(summary, indent=1).encode(),
                },
            )
