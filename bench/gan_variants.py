"""GAN variants side by side: the same generator/discriminator settings, seeds and images,
trained by the ``gan`` family with one setting changed, each epoch's Fréchet distance printed.

The first ``--variant`` is the baseline; every variant trains with the same seeds on the same
images (a seeded subset of the dataset's training split), for the same epochs, in this process
(one thread per op unless TF_NUM_INTRAOP_THREADS says otherwise). Prints per variant and seed
each epoch's ``epoch_fd`` and its lowest (``val_fd``, what a trial keeps), the seconds, then the
mean lowest distance of each variant and its ratio to the baseline's (below 1: better). With
``--out DIR``, writes each variant's last sample grid (``DIR/<variant>_s<seed>.png``: the same 64
latent vectors for every variant) and the grid of its kept epoch.

    PYTHONPATH=$PWD .venv/bin/python bench/gan_variants.py --epochs 6 --subset 6000 \\
        --variant g_upsampling=transpose --variant g_upsampling=resize --out /tmp/gan_variants
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

# The settings every variant shares unless --set or a --variant changes them: the best trial of
# the measured gan_fashion study (docs/families.md) where it named them, the defaults otherwise.
BASE: dict[str, Any] = {
    "latent_dim": 64,
    "conv_blocks": 2,
    "g_filters": 128,
    "d_filters": 64,
    "g_batchnorm": True,
    "d_dropout": 0.3,
    "g_learning_rate": 3.4e-4,
    "d_learning_rate": 1.3e-4,
    "label_smoothing": 0.1,
    "label_noise": 0.05,
    "d_steps": 2,
    "batch_size": 32,
    "fd_samples": 1000,
}


def parse_setting(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as JSON where it parses (``true``, ``3e-4``), else text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def train(params: dict[str, Any], data: Any, epochs: int, seed: int) -> dict[str, Any]:
    """One GAN trained as a trial trains it; its per-epoch logs and seconds."""
    import keras
    import numpy as np

    from hpo.families import get_family
    from hpo.spaces import Params

    family = get_family("gan")
    keras.utils.set_random_seed(seed)
    model = family.build(Params(params), data)
    logs: list[dict[str, float]] = []

    class Record(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_end(self, epoch: int, epoch_logs: dict[str, float] | None = None) -> None:
            logs.append(dict(epoch_logs or {}))

    np.random.seed(seed)
    t0 = time.perf_counter()
    family.fit(model, Params(params), data, epochs, [Record()])
    return {"logs": logs, "seconds": time.perf_counter() - t0, "model": model}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--subset", type=int, default=6000, help="training images (seeded; 0: all)")
    parser.add_argument(
        "--defaults", action="store_true",
        help="start from the family's defaults instead of the settings in BASE",
    )  # fmt: skip
    parser.add_argument("--validation-fraction", type=float, default=0.05)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..K-1 for every variant")
    parser.add_argument(
        "--set", type=parse_setting, action="append", default=[],
        help="KEY=VALUE shared by every variant (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--variant", type=parse_setting, action="append", required=True,
        help="KEY=VALUE of one variant (repeat; the first is the baseline)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="write each variant's sample grids here")
    args = parser.parse_args()

    import numpy as np

    from hpo.datasets import load_dataset
    from hpo.spaces import DatasetSpec

    data = load_dataset(
        DatasetSpec(
            name=args.dataset,
            subset=args.subset or None,
            validation_fraction=args.validation_fraction,
            seed=0,
        )
    )
    shared = {**({} if args.defaults else BASE), **dict(args.set)}
    print(f"{args.dataset}: {len(data.train.x)} training, {len(data.validation.x)} validation")
    print(f"shared settings: {json.dumps(shared)}", flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    lowest: dict[str, list[float]] = {}
    for key, value in args.variant:
        name = f"{key}={value}"
        for seed in range(args.seeds):
            result = train({**shared, key: value}, data, args.epochs, seed)
            fds = [log.get("epoch_fd", float("nan")) for log in result["logs"]]
            lowest.setdefault(name, []).append(float(np.nanmin(fds)))
            print(
                f"{name} seed {seed}: epoch_fd "
                + " ".join(f"{v:.1f}" for v in fds)
                + f"; lowest {np.nanmin(fds):.1f} (epoch {int(np.nanargmin(fds)) + 1}),"
                f" {result['seconds']:.0f} s",
                flush=True,
            )
            if args.out:
                model = result["model"]
                stem = name.replace("=", "_")
                (args.out / f"{stem}_s{seed}_last.png").write_bytes(model.sample_grids[-1])
                kept = int(np.nanargmin(fds))
                (args.out / f"{stem}_s{seed}_kept.png").write_bytes(model.sample_grids[kept])
    base_name = f"{args.variant[0][0]}={args.variant[0][1]}"
    base = float(np.mean(lowest[base_name]))
    print(f"lowest epoch_fd, mean over {args.seeds} seed(s); ratio to {base_name}:")
    for name, values in lowest.items():
        mean = float(np.mean(values))
        print(f"  {name:32s} {mean:7.2f}  ratio {mean / base:.3f}")


if __name__ == "__main__":
    main()
