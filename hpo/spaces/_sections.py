"""The sections of a space file besides ``params``: dataset, objective, budget, defaults,
retention; each a strict pydantic model, so that an unknown key or a quoted number is an
error that names it."""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hpo.spaces._errors import FieldError

# numpy's seeds (the samplers and the data splits use numpy): 0 to 2**32 - 1.
MAX_SEED = 2**32 - 1


class _Section(BaseModel):
    # strict: a quoted "10" is text, not a number; YAML already gives numbers their type.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


Direction: TypeAlias = Literal["minimize", "maximize"]


class DatasetSpec(_Section):
    """Which data a study trains on, and how it is split (fixed and seeded)."""

    name: str
    subset: int | None = Field(default=None, gt=0, description="cap on training examples")
    validation_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.2, gt=0, lt=0.5)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    options: dict[str, Any] = Field(default_factory=dict)


class ObjectiveSpec(_Section):
    """A metric reported after every epoch, and whether to minimize or maximize it."""

    metric: str = Field(min_length=1)
    direction: Direction


#: Seconds a study's running trials may go on after its deadline (``study_timeout``).
DEFAULT_STUDY_TIMEOUT_GRACE = 60.0
#: Seconds of training between a trial's checkpoints (``checkpoint_interval``): a retry redoes
#: at most this much training (plus the epoch it died in); epochs shorter than this are not each
#: worth a checkpoint's fixed cost (two artifact writes and the weights file).
DEFAULT_CHECKPOINT_INTERVAL = 60.0


class BudgetSpec(_Section):
    """Epochs per trial (the fidelity that pruners use) and the time limits.

    ``trial_timeout``: seconds one trial may run before its process is killed (FAIL).
    ``study_timeout``: seconds from the study's first claimed trial after which no trial is
    claimed; running trials get ``study_timeout_grace`` seconds more, then are stopped.
    """

    max_epochs: int = Field(gt=0)
    min_epochs: int = Field(default=1, gt=0)
    trial_timeout: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="seconds"
    )
    study_timeout: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="seconds"
    )
    study_timeout_grace: float = Field(
        default=DEFAULT_STUDY_TIMEOUT_GRACE, ge=0, allow_inf_nan=False, description="seconds"
    )
    # sha and hyperband keep the best 1/reduction_factor of the trials at each rung.
    reduction_factor: int = Field(default=3, ge=2)
    # A checkpoint in the trial's MLflow run after an epoch, so a retry resumes from it: after
    # the first epoch that ends checkpoint_interval seconds or more after the last checkpoint
    # (or the start of training); 0 checkpoints every epoch.
    checkpoints: bool = True
    checkpoint_interval: float = Field(
        default=DEFAULT_CHECKPOINT_INTERVAL, ge=0, allow_inf_nan=False, description="seconds"
    )
    # A complete trial's value, saved model and validation predictions come from its best
    # epoch by the objective (as restore_best_weights); false: from its last.
    restore_best_epoch: bool = True

    @model_validator(mode="after")
    def _check(self) -> BudgetSpec:
        if self.min_epochs > self.max_epochs:
            raise FieldError(
                "min_epochs",
                f"min_epochs ({self.min_epochs}) must not exceed max_epochs ({self.max_epochs})",
            )
        return self


class DefaultsSpec(_Section):
    """Defaults for the CLI's flags; a flag given on the command line wins.

    A study with several objectives that names no pruner gets ``none``: pruning needs one
    objective.
    """

    algorithm: str = "optuna-tpe"
    pruner: str = "median"
    trials: int = Field(default=20, gt=0)
    workers: int = Field(default=1, gt=0)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)


class RetentionSpec(_Section):
    """Which trials keep their model files once the study is done (see docs/ensembles.md).

    The ``keep_best`` best complete trials (by the first objective) and every member of a
    registered ensemble keep theirs; every other trial's model and prediction files are
    deleted from its MLflow run (its metrics, parameters and curves stay).
    """

    keep_best: int = Field(gt=0, description="trials whose model files are kept")
