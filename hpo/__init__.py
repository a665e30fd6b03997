"""hpo: hyperparameter optimization for Keras models.

One search-space file drives Optuna and hyperopt; workers train trials from a shared study
store and log them to MLflow; the best models end as one exported weighted ensemble.
Heavy libraries (TensorFlow, MLflow) are imported only where they are used.
"""

__version__ = "0.1.0"
