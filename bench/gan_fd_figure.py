"""The Fréchet distance of a finished gan study, per trial and epoch: a PNG and a table.

Reads the study store (the ``val_fd`` each epoch reported: the lowest distance so far) and
draws one line per trial, marking how each ended (complete, pruned, failed); with
``--tracking-uri``, the lines are each epoch's own distance (``epoch_fd``, from the trials'
MLflow runs), which shows how adversarial training oscillates. Prints per trial its state,
epochs, last and lowest distance of those lines and seconds, then over complete trials the
best, median and worst objective (``val_fd`` of the generator each trial keeps).

With ``--space`` (or ``--real``: the study's own data, its ``--subset`` and ``--dataset``
included), also the scale of the distance: the Fréchet distance of ``fd_samples`` real training
images to the validation images in the same classifier's features (what a perfect generator
would score, up to sampling noise), and the classifier's test accuracy.

    .venv/bin/python bench/gan_fd_figure.py gan_fashion --storage sqlite:///hpo.db \\
        --tracking-uri sqlite:///mlflow.db --out docs/images/gan_fd_trials.png \\
        --space search_spaces/gan.yaml
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study")
    parser.add_argument("--storage", default="sqlite:///hpo.db")
    parser.add_argument("--tracking-uri", help="MLflow: draw each epoch's own epoch_fd")
    parser.add_argument("--out", default="gan_fd_trials.png")
    parser.add_argument("--space", help="the study's space file: print the real-image distance")
    parser.add_argument(
        "--real", action="store_true",
        help="print the real-image distance on the study's own data (its --subset, --dataset)",
    )  # fmt: skip
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from matplotlib import ticker

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=args.study, storage=args.storage)
    styles = {"COMPLETE": "-", "PRUNED": "--", "FAIL": ":"}
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    finals = []
    print("trial  state     epochs  last_fd  lowest_fd  seconds")
    for trial in study.trials:
        values = trial.intermediate_values
        if not values:
            continue
        run_id = trial.user_attrs.get("mlflow_run_id")
        if args.tracking_uri and run_id:
            values = epoch_fds(args.tracking_uri, run_id) or values
        epochs = sorted(values)
        fds = [values[e] for e in epochs]
        state = trial.state.name
        seconds = (
            (trial.datetime_complete - trial.datetime_start).total_seconds()
            if trial.datetime_complete and trial.datetime_start
            else float("nan")
        )
        print(
            f"{trial.number:5d}  {state:8s}  {len(epochs):6d}  {fds[-1]:7.1f}  {min(fds):9.1f}"
            f"  {seconds:7.0f}"
        )
        if state == "COMPLETE" and trial.value is not None:
            finals.append(trial.value)
        line = ax.plot(epochs, fds, styles.get(state, "-."), marker="o", ms=3)[0]
        line.set_label(f"#{trial.number}")
        low = int(np.argmin(fds))  # the epoch whose generator the trial keeps
        ax.plot(epochs[low], fds[low], "*", ms=10, color=line.get_color())
    if finals:
        print(
            f"complete trials: {len(finals)}; best val_fd {min(finals):.1f}, median "
            f"{np.median(finals):.1f}, worst {max(finals):.1f}"
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("epoch_fd" if args.tracking_uri else "val_fd (lowest so far)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(ticker.ScalarFormatter())
    ax.set_title(
        f"{args.study}: Fréchet distance per epoch\n(star: the kept generator; dashed: pruned; "
        "dotted: failed)"
    )
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")
    if args.space:
        from hpo.spaces import load_spec

        real_distance(load_spec(args.space))
    elif args.real:
        from hpo.storage import open_storage
        from hpo.storage.studies import load_config

        real_distance(load_config(open_storage(args.storage), args.study).spec())


def epoch_fds(tracking_uri: str, run_id: str) -> dict[int, float]:
    """Each epoch's own distance, as the trial's MLflow run logged it."""
    from mlflow import MlflowClient

    history = MlflowClient(tracking_uri).get_metric_history(run_id, "epoch_fd")
    return {m.step: m.value for m in history}


def real_distance(spec: Any) -> None:
    """The distance of real training images to the validation images (the floor of val_fd)."""
    from hpo.datasets import load_dataset
    from hpo.families.gan_quality import feature_classifier, frechet_distance, gaussian

    data = load_dataset(spec.dataset)
    fixed = spec.space.to_dict().get("fd_samples", {})
    samples = int(fixed.get("value", 1000)) if fixed.get("type") == "constant" else 1000
    classifier = feature_classifier(data)
    real, _ = classifier.features_and_probabilities(data.train.x[:samples])
    validation, _ = classifier.features_and_probabilities(data.validation.x)
    fd = frechet_distance(*gaussian(real), *gaussian(validation))
    print(
        f"real: {samples} training images to the {len(validation)} validation images: FD "
        f"{fd:.2f}; feature classifier test accuracy {classifier.test_accuracy:.4f}"
    )


if __name__ == "__main__":
    main()
