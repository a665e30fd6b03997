"""The Fréchet distance of a finished gan study, per trial and epoch: a PNG and a table.

Reads the study store (the ``val_fd`` each epoch reported) and draws one line per trial,
marking how each ended (complete, pruned, failed). Prints per trial its state, epochs, final
and lowest ``val_fd`` and seconds, then the best final ``val_fd`` and the spread of the final
ones over complete trials.

    .venv/bin/python bench/gan_fd_figure.py gan_fashion --storage sqlite:///hpo.db \\
        --out docs/images/gan_fd_trials.png
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study")
    parser.add_argument("--storage", default="sqlite:///hpo.db")
    parser.add_argument("--out", default="gan_fd_trials.png")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=args.study, storage=args.storage)
    styles = {"COMPLETE": "-", "PRUNED": "--", "FAIL": ":"}
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    finals = []
    print("trial  state     epochs  final_fd  lowest_fd  seconds")
    for trial in study.trials:
        values = trial.intermediate_values
        if not values:
            continue
        epochs = sorted(values)
        fds = [values[e] for e in epochs]
        state = trial.state.name
        seconds = (
            (trial.datetime_complete - trial.datetime_start).total_seconds()
            if trial.datetime_complete and trial.datetime_start
            else float("nan")
        )
        print(
            f"{trial.number:5d}  {state:8s}  {len(epochs):6d}  {fds[-1]:8.1f}  {min(fds):9.1f}"
            f"  {seconds:7.0f}"
        )
        if state == "COMPLETE":
            finals.append(fds[-1])
        ax.plot(epochs, fds, styles.get(state, "-."), marker="o", ms=3, label=f"#{trial.number}")
    if finals:
        print(
            f"complete trials: {len(finals)}; best final val_fd {min(finals):.1f}, median "
            f"{np.median(finals):.1f}, worst {max(finals):.1f}"
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("val_fd (lower is better)")
    ax.set_yscale("log")
    ax.set_title(f"{args.study}: Fréchet distance per epoch (dashed: pruned, dotted: failed)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
