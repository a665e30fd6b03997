"""``hpo generate images``: images from a trained VAE or GAN (grid, latent traversal or
interpolation, concept-vector arithmetic).

Example:
    hpo generate images vae               # the best trial of study "vae": grid.png, ...
    hpo generate images vae:3 --out out/fm.png --n 10 --seed 1 --arithmetic "Sneaker-Sandal"
    hpo generate images path/to/model.keras   # a folder or file; vae.json beside it if stored
    hpo generate images gan --arithmetic "Sneaker-Sandal"   # interpolation, arithmetic
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from hpo.cli._common import (
    TrackingUriOption,
    console,
    fail,
    handled_errors,
    print_json,
    storage_option,
)

DEFAULT_ALPHAS = "0,0.25,0.5,0.75,1,1.25,1.5"
TRAVERSAL_RANGE = 3.0  # +-3 standard deviations of the N(0, I) prior


def sample(
    model: str = typer.Argument(
        ...,
        help="A .keras file, a folder with model.keras (and vae.json), or a study: STUDY "
        "(its best trial) or STUDY:TRIAL.",
    ),
    out: Path = typer.Option(
        Path("grid.png"),
        "--output",
        "--out",
        "-o",
        help="The grid PNG; the traversal goes to <stem>_traversal.png and the arithmetic to "
        "<stem>_arithmetic.png beside it.",
    ),
    n: int = typer.Option(
        8, "--n", min=1, max=32, help="Grid of n x n samples; n traversal steps and rows."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the latent samples."),
    arithmetic: str | None = typer.Option(
        None,
        "--arithmetic",
        help='"CLASS_A-CLASS_B" (names or indices, e.g. "Sneaker-Sandal" or "7-5"): n samples '
        "of class B (rows) with alpha * (mean A - mean B) added (columns).",
    ),
    alphas: str = typer.Option(
        DEFAULT_ALPHAS, "--alphas", help="Comma-separated alphas for --arithmetic."
    ),
    scale: int | None = typer.Option(
        None, "--scale", min=1, max=16, help="Enlarge each pixel (default: images >= 48 px)."
    ),
    storage: Annotated[
        str | None, storage_option("Study store URL (default: sqlite hpo.db).")
    ] = None,
    tracking_uri: TrackingUriOption = None,
    json_out: bool = typer.Option(False, "--json", help="Print the written files as JSON."),
) -> None:
    """Generate images with a trained VAE (family `vae`) or GAN (family `gan`).

    Writes three PNGs, each a grid of images separated by white lines:

    * OUT (grid.png): n x n images decoded (generated) from z ~ N(0, I);
    * VAE: <stem>_traversal.png: one row per latent dimension (at most n; the dimensions that
      separate the classes most come first), the other dimensions 0, the row's dimension
      going from -3 to 3 in n steps left to right;
    * GAN: <stem>_interpolation.png: n rows, each going in n steps along the straight line
      between two random latent vectors;
    * <stem>_arithmetic.png, with --arithmetic A-B: n rows of latent codes of class B (VAE:
      its validation mean and spread; GAN: latent vectors whose samples the feature classifier
      assigned to B), columns adding alpha * (mean of A - mean of B), one column per --alphas
      value (0 = the class-B code itself, 1 = moved by the full vector). A GAN's class means
      are those of its generated samples' latent vectors, grouped by the classifier.

    Exit status 2: the model is neither a VAE nor a GAN generator, unknown class (the message
    lists the known ones), bad --alphas, or no model found.
    """
    import os

    import numpy as np

    from hpo.families import vae_sampling as vs
    from hpo.families.gan_sampling import class_latents, interpolation_grid
    from hpo.tracking.models import ModelError, resolve_trial_model

    # One progress bar per downloaded artifact would bury the command's own output.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    alpha_values = _parse_alphas(alphas) if arithmetic else []
    with handled_errors():
        try:
            trial = resolve_trial_model(model, storage, tracking_uri)
        except ModelError as exc:
            fail(str(exc))
        info: dict[str, Any] = {}
        for name in ("vae.json", "gan.json"):
            if trial.has(name):
                info = trial.read_json(name)
        if arithmetic and not info.get("class_means"):
            fail(
                f"--arithmetic needs the per-class latent means that a 'vae' or 'gan' trial "
                f"stores in vae.json or gan.json; none found beside {trial.model_path}"
            )
        pair, vector = None, None
        if arithmetic:
            # Indices count in the dataset's class order, names are matched to the stored means.
            names = info.get("class_names") or list(info["class_means"])
            try:
                pair = vs.parse_arithmetic(arithmetic, names)
                vector = vs.concept_vector(info["class_means"], *pair)
            except vs.UnknownClassError as exc:
                fail(str(exc))
        try:
            keras_model = trial.load()
        except (ModelError, ValueError, OSError) as exc:
            fail(f"cannot load {trial.model_path}: {exc}")
        decoder = _decoder_of(keras_model, model, trial.family)
        is_gan = decoder is keras_model  # a GAN's stored model is its generator

        rng = np.random.default_rng(seed)
        height = int(decoder.output_shape[1])
        zoom = scale or max(1, -(-48 // height))  # ceil(48 / height)
        written = {"grid": vs.save_png(out, vs.tile(vs.sample_grid(decoder, n, rng), scale=zoom))}

        d = vs.latent_dim(decoder)
        dims: list[int] = []
        if is_gan:
            rows = interpolation_grid(decoder, n, rng)
            written["interpolation"] = vs.save_png(
                _beside(out, "interpolation"), vs.tile(rows, scale=zoom)
            )
        else:
            dims = _traversal_dims(info.get("class_means") or {}, d)[:n]
            values = np.linspace(-TRAVERSAL_RANGE, TRAVERSAL_RANGE, n)
            rows = np.stack([vs.latent_traversal(decoder, np.zeros(d), k, values) for k in dims])
            written["traversal"] = vs.save_png(_beside(out, "traversal"), vs.tile(rows, scale=zoom))

        if pair is not None and vector is not None:
            if info.get("class_latents", {}).get(pair[1]):
                base = class_latents(info["class_latents"], pair[1], n)
            else:
                base = vs.class_samples(
                    info["class_means"], info.get("class_stds"), pair[1], n, rng
                )
            images = vs.apply_concept(decoder, base, vector, alpha_values)
            written["arithmetic"] = vs.save_png(
                _beside(out, "arithmetic"), vs.tile(images, scale=zoom)
            )
    report: dict[str, Any] = {
        "model": model,
        "family": "gan" if is_gan else "vae",
        "study": trial.study,
        "trial": trial.trial_number,
        "latent_dim": d,
        **({} if is_gan else {"traversal_dims": dims}),
        "files": {k: str(v) for k, v in written.items()},
    }
    if pair is not None:
        report["arithmetic"] = {"from": pair[1], "to": pair[0], "alphas": alpha_values}
    if json_out:
        print_json(report)
        return
    where = f"trial {trial.trial_number} of {trial.study}" if trial.study else model
    console.print(f"{'GAN' if is_gan else 'VAE'} from {where} (latent_dim {d})", markup=False)
    console.print(f"  {written['grid']}: {n}x{n} samples from N(0, I)", markup=False)
    if is_gan:
        console.print(
            f"  {written['interpolation']}: rows = {n} pairs of random latent vectors, "
            f"columns = {n} steps from one to the other",
            markup=False,
        )
    else:
        console.print(
            f"  {written['traversal']}: rows = latent dims {dims}, columns = "
            f"-{TRAVERSAL_RANGE:g} .. {TRAVERSAL_RANGE:g}",
            markup=False,
        )
    if pair is not None:
        console.print(
            f"  {written['arithmetic']}: rows = samples of {pair[1]!r}, columns = + alpha * "
            f"({pair[0]!r} - {pair[1]!r}) for alpha in {alpha_values}",
            markup=False,
        )


def _parse_alphas(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fail(f"--alphas must be comma-separated numbers, got {text!r}")
    if not values:
        fail("--alphas is empty")
    return values


def _decoder_of(keras_model: Any, ref: str, family: str | None) -> Any:
    """The ``decoder`` sub-model of a ``vae`` family model, or the model itself when it maps
    latent vectors to images (a ``gan`` family's generator); exit 2 for any other model."""
    try:
        decoder = keras_model.get_layer("decoder")
    except ValueError:
        decoder = keras_model
    shape_ok = (
        decoder is not None
        and len(getattr(decoder, "input_shape", ())) == 2
        and len(getattr(decoder, "output_shape", ())) == 4
    )
    if not shape_ok:
        what = f"a {family!r} model" if family else "a model"
        fail(
            f"{ref!r} is neither a VAE nor a GAN generator: {what} that does not map latent "
            "vectors to images (train one with family: vae or family: gan)"
        )
    return decoder


def _traversal_dims(class_means: dict[str, list[float]], d: int) -> list[int]:
    """Latent dimensions, those whose class means spread most first (natural order without)."""
    import numpy as np

    if len(class_means) < 2:
        return list(range(d))
    spread = np.asarray(list(class_means.values()), dtype=np.float64).var(axis=0)
    return [int(k) for k in np.argsort(-spread, kind="stable")]


def _beside(out: Path, suffix: str) -> Path:
    return out.with_name(f"{out.stem}_{suffix}{out.suffix or '.png'}")
