"""hyperopt's algorithms (TPE, annealing, random) as an Optuna sampler over the study store.

A hyperopt study is an ordinary Optuna study: the same storage, workers, pruners, statuses and
logging. Before each trial the sampler rebuilds a :class:`hyperopt.Trials` from the study's
trials and asks the hyperopt algorithm for one new point, seeded the way ``hyperopt.fmin``
seeds it, so that a one-worker study proposes exactly what ``fmin`` would.

This module imports Optuna and NumPy at import time; ``hpo.engines`` imports it only when a
hyperopt sampler is asked for.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from optuna.distributions import FloatDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import StudyDirection
from optuna.trial import TrialState

from hpo.spaces._hyperopt import decode, encode, to_hyperopt

if TYPE_CHECKING:
    from collections.abc import Sequence

    from optuna.distributions import BaseDistribution
    from optuna.study import Study
    from optuna.trial import FrozenTrial

    from hpo.spaces import SearchSpace

log = logging.getLogger(__name__)

PROPOSAL_ATTR = "hpo:hyperopt_proposal"
"""Trial system attribute holding hyperopt's proposal: ``{"vals": misc.vals, "params": ...}``."""

HyperoptAlgo = Literal["tpe", "anneal", "random"]
_SEED_BOUND = 2**31 - 1  # hyperopt.fmin draws each algorithm seed as rstate.integers(2**31 - 1)


class HyperoptSampler(BaseSampler):
    """Propose every parameter of a trial with one of hyperopt's algorithms.

    In ``before_trial`` the study's finished trials become hyperopt's history: a complete trial
    has loss = its value, a pruned trial has loss = its last reported (intermediate) value, both
    negated when the study maximizes. A pruned trial's loss comes from fewer epochs, so it looks
    worse than it would have finished; that is the point, it was stopped for looking bad, and
    dropping it would let hyperopt propose the same region again. Running trials of other
    workers enter as pending jobs (no loss), exactly as hyperopt's own parallel back ends
    (MongoTrials, SparkTrials) show in-flight jobs; TPE and annealing count them as infinitely
    bad, which keeps parallel workers from proposing the same point. Failed and waiting trials
    are left out. Under hpo's ``hyperband`` pruner it sees every trial of the study (Optuna's
    own ``HyperbandPruner`` would show it the current trial's bracket only; see
    :class:`hpo.engines._hyperband.SharedHistoryHyperband`).

    The algorithm's seed for trial number ``n`` is the ``n+1``-th draw of
    ``np.random.default_rng(seed).integers(2**31 - 1)``, as ``hyperopt.fmin(...,
    rstate=np.random.default_rng(seed))`` draws it, so every worker computes the same seed for
    a trial. Single-objective studies only.

    Args:
        space: The search space the objective samples with :func:`hpo.spaces.suggest`.
        algo: ``"tpe"``, ``"anneal"`` or ``"random"``.
        seed: Seed of the proposals; None for a random one.
        direction: ``"minimize"`` or ``"maximize"``: the study's direction.
        startup_trials: Random trials before TPE's model proposes (its ``n_startup_jobs``);
            None for hyperopt's default (20). Only TPE has such a start.

    Example:
        >>> import optuna
        >>> from hpo.spaces import FloatParam, SearchSpace, suggest
        >>> space = SearchSpace({"x": FloatParam(low=-1.0, high=1.0)})
        >>> sampler = HyperoptSampler(space, algo="tpe", seed=0, direction="minimize")
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> study = optuna.create_study(sampler=sampler)
        >>> study.optimize(lambda t: suggest(t, space)["x"] ** 2, n_trials=3)
        >>> len(study.trials)
        3
    """

    def __init__(
        self,
        space: SearchSpace,
        algo: HyperoptAlgo = "tpe",
        seed: int | None = None,
        direction: str = "minimize",
        startup_trials: int | None = None,
    ) -> None:
        from hyperopt.base import Domain

        if direction not in ("minimize", "maximize"):
            raise ValueError(f"direction must be 'minimize' or 'maximize', got {direction!r}")
        self._space = space
        self._algo_name = algo
        self._suggest = _algorithm(algo)
        if startup_trials is not None and algo == "tpe":
            self._suggest = functools.partial(self._suggest, n_startup_jobs=startup_trials)
        self._seed = seed
        self._direction = (
            StudyDirection.MAXIMIZE if direction == "maximize" else (StudyDirection.MINIMIZE)
        )
        # The objective is never evaluated by hyperopt: trials run through Optuna.
        self._domain = Domain(lambda _: 0.0, to_hyperopt(space))
        self._searched = {n.name for n in space.searched_nodes()}
        self._proposals: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._seed_rng = np.random.default_rng(seed)
        self._seed_draws: list[int] = []
        self._random_sampler = RandomSampler(seed=seed)
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return f"HyperoptSampler(algo={self._algo_name!r}, seed={self._seed!r})"

    def reseed_rng(self) -> None:
        # A fixed seed defines the proposals by trial number; only unseeded draws are reseeded.
        self._random_sampler.reseed_rng()
        if self._seed is None:
            with self._lock:
                self._seed_rng = np.random.default_rng()

    def trial_seed(self, number: int) -> int:
        """The hyperopt algorithm's seed for trial ``number`` (as ``fmin`` would draw it).

        Example:
            >>> from hpo.spaces import FloatParam, SearchSpace
            >>> s = HyperoptSampler(SearchSpace({"x": FloatParam(low=0, high=1)}), seed=3)
            >>> rng = np.random.default_rng(3)
            >>> [int(rng.integers(2**31 - 1)) for _ in range(3)][2] == s.trial_seed(2)
            True
        """
        with self._lock:
            if self._seed is None:
                return int(self._seed_rng.integers(_SEED_BOUND))
            while len(self._seed_draws) <= number:
                self._seed_draws.append(int(self._seed_rng.integers(_SEED_BOUND)))
            return self._seed_draws[number]

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        if len(study.directions) != 1:
            raise ValueError(
                f"hyperopt-{self._algo_name} optimizes one objective; this study has "
                f"{len(study.directions)} (use optuna-nsga2, optuna-tpe or optuna-random)"
            )
        if study.direction != self._direction:
            raise ValueError(
                f"the sampler was made for direction {self._direction.name.lower()}, but the "
                f"study's direction is {study.direction.name.lower()}"
            )
        history = self._history(study, trial)
        docs = self._suggest([trial.number], self._domain, history, self.trial_seed(trial.number))
        if not docs:
            raise RuntimeError(f"hyperopt-{self._algo_name} proposed nothing")
        vals = {
            label: [_plain(v) for v in values] for label, values in docs[0]["misc"]["vals"].items()
        }
        params = {k: v for k, v in decode(self._space, vals).items() if k in self._searched}
        self._proposals[trial._trial_id] = params
        study._storage.set_trial_system_attr(
            trial._trial_id, PROPOSAL_ATTR, {"vals": vals, "params": params}
        )

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        params = self._proposals.get(trial._trial_id)
        if params is None:
            # Proposed before this sampler object existed (e.g. a trial asked for elsewhere).
            attr = study._storage.get_trial_system_attrs(trial._trial_id).get(PROPOSAL_ATTR)
            params = attr["params"] if attr else {}
        if param_name in params:
            value = _fit(params[param_name], param_distribution)
            if value is not _INVALID:
                return value
            reason = f"hyperopt's value {params[param_name]!r} is not in {param_distribution}"
        else:
            reason = "it is not in the search space hyperopt proposes from"
        if param_name not in self._warned:
            self._warned.add(param_name)
            log.warning("sampling %r at random: %s", param_name, reason)
        return self._random_sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._proposals.pop(trial._trial_id, None)

    def _history(self, study: Study, current: FrozenTrial) -> Any:
        """hyperopt's ``Trials`` for the study's trials other than ``current``."""
        from hyperopt import Trials
        from hyperopt.base import JOB_STATE_DONE, JOB_STATE_RUNNING, STATUS_NEW, STATUS_OK

        trials = Trials()
        docs = []
        for t in study.get_trials(deepcopy=False):
            if t.number == current.number:
                continue
            if t.state == TrialState.RUNNING:
                loss = None
            elif any(v > 0 for v in t.constraints.values()):
                # It broke a constraint of the space: its loss must not draw hyperopt to it.
                continue
            elif t.state == TrialState.COMPLETE and t.values is not None:
                loss = t.values[0]
            elif t.state == TrialState.PRUNED and t.intermediate_values:
                loss = t.intermediate_values[max(t.intermediate_values)]
            else:
                continue
            if loss is not None and math.isnan(loss):
                continue
            vals = self._vals(t)
            if vals is None:
                continue
            if loss is None:
                state, result = JOB_STATE_RUNNING, {"status": STATUS_NEW}
            else:
                if self._direction == StudyDirection.MAXIMIZE:
                    loss = -loss
                state, result = JOB_STATE_DONE, {"loss": loss, "status": STATUS_OK}
            misc = {
                "tid": t.number,
                "cmd": self._domain.cmd,
                "workdir": self._domain.workdir,
                "idxs": {label: [t.number] if v else [] for label, v in vals.items()},
                "vals": vals,
            }
            (doc,) = trials.new_trial_docs([t.number], [None], [result], [misc])
            doc["state"] = state
            docs.append(doc)
        trials.insert_trial_docs(docs)
        trials.refresh()
        return trials

    def _vals(self, t: FrozenTrial) -> dict[str, list[Any]] | None:
        """hyperopt's ``misc.vals`` of a trial; None when its values cannot be expressed."""
        attr = t.system_attrs.get(PROPOSAL_ATTR)
        if t.state == TrialState.RUNNING:
            # Its parameters are being suggested right now: only the proposal is complete.
            return {label: list(v) for label, v in attr["vals"].items()} if attr else None
        if attr and attr["params"] == t.params:
            # hyperopt's own numbers: decoding and encoding again may move a float by an ulp.
            return {label: list(v) for label, v in attr["vals"].items()}
        try:
            return dict(encode(self._space, t.params))
        except (KeyError, TypeError, ValueError, IndexError):
            log.debug("trial %d: parameters outside the space, not shown to hyperopt", t.number)
            return None


_INVALID = object()


def _fit(value: Any, distribution: BaseDistribution) -> Any:
    """``value`` if ``distribution`` contains it, nudged into a float range, else _INVALID."""
    try:
        internal = distribution.to_internal_repr(value)
        if distribution._contains(internal):
            return value
    except (ValueError, TypeError):
        return _INVALID
    if isinstance(distribution, FloatDistribution) and distribution.step is None:
        # exp(log(high)) may land an ulp outside the range: nudge it in, reject anything more.
        clipped = min(max(float(value), distribution.low), distribution.high)
        if abs(clipped - float(value)) <= 1e-9 * max(1.0, abs(clipped)):
            return clipped
    return _INVALID


def _plain(value: Any) -> Any:
    """A JSON-friendly number for the storage (hyperopt hands out NumPy scalars)."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _algorithm(algo: str) -> Callable[..., list[Mapping[str, Any]]]:
    if algo == "tpe":
        from hyperopt import tpe

        return tpe.suggest  # type: ignore[no-any-return]
    if algo == "anneal":
        from hyperopt import anneal

        return anneal.suggest  # type: ignore[no-any-return]
    if algo == "random":
        from hyperopt import rand

        return rand.suggest  # type: ignore[no-any-return]
    raise ValueError(f"unknown hyperopt algorithm {algo!r}; known: tpe, anneal, random")
