"""Running trials: the worker loop (:mod:`hpo.workers.worker`), its slots
(:mod:`hpo.workers.slots`), the trial process (:mod:`hpo.workers.trial_process`), one trial
inside it (:mod:`hpo.workers.runner`) with its checkpoints and resume
(:mod:`hpo.workers.checkpoints`), and the checks made before a study is written
(:mod:`hpo.workers.preflight`) and before a trial trains (:mod:`hpo.workers.model_checks`).

Importing this package imports none of them: the worker process never imports Keras.
"""
