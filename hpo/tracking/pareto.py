"""A study's Pareto front as one picture: each Pareto trial's generated image, side by side.

The front is Optuna's (``best_trials``: the complete trials no other trial beats on every
objective; the best trial of a single-objective study). Each trial's image is the
``generated.png`` its run holds (:data:`hpo.tracking.artifacts.GENERATED_IMAGE_FILE`, written
by the ``style_transfer`` family). The grid is one row, ordered by the first objective (from
best), every tile the size of the first image with a caption strip under it naming the trial.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo import tracking
from hpo.errors import UsageError
from hpo.storage.studies import RUN_ID_ATTR, StudyConfig
from hpo.tracking.artifacts import GENERATED_IMAGE_FILE

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

PARETO_GRID_FILE = "pareto_front.png"
"""The Pareto grid's name on the study's MLflow run."""
PAD = 4
CAPTION = 14


class ParetoError(UsageError):
    """A study without a Pareto front of generated images (no complete trial, no images)."""


def pareto_images(
    storage: BaseStorage, config: StudyConfig, tracking_uri: str | None = None
) -> list[tuple[int, list[float], Any]]:
    """``(trial number, values, PIL image)`` for each Pareto trial, by its first objective.

    Raises:
        ParetoError: no complete trial, no tracking store, or no Pareto trial's run holds a
            generated image.
    """
    import optuna
    from PIL import Image

    study = optuna.load_study(study_name=config.name, storage=storage)
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        raise ParetoError(f"study {config.name!r} has no complete trial yet")
    uri = tracking_uri or config.tracking_uri
    if not uri:
        raise ParetoError(f"study {config.name!r} is not tracked in MLflow: no images to draw")
    sign = [1.0 if d.name == "MINIMIZE" else -1.0 for d in study.directions]
    front = sorted(study.best_trials, key=lambda t: (sign[0] * t.values[0], t.number))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = tracking.client(uri)
    found: list[tuple[int, list[float], Any]] = []
    with tempfile.TemporaryDirectory(prefix="hpo-pareto-") as tmp:
        for trial in front:
            run_id = trial.user_attrs.get(RUN_ID_ATTR)
            if not run_id:
                continue
            names = {a.path for a in client.list_artifacts(run_id)}
            if GENERATED_IMAGE_FILE not in names:
                continue
            path = client.download_artifacts(run_id, GENERATED_IMAGE_FILE, tmp)
            with Image.open(path) as image:
                found.append((trial.number, list(trial.values), image.convert("RGB")))
    if not found:
        raise ParetoError(
            f"the Pareto trials of study {config.name!r} ({config.spec().family!r}) hold no "
            f"{GENERATED_IMAGE_FILE}: only families that generate one image (style_transfer) "
            "have a Pareto grid"
        )
    return found


def pareto_grid_png(images: list[tuple[int, list[float], Any]]) -> bytes:
    """One row of the images, ``PAD`` pixels apart, each with a caption ``#trial`` under it.

    The grid is ``n * (width + PAD) + PAD`` pixels wide for ``n`` images of ``width``.
    """
    from PIL import Image, ImageDraw

    width, height = images[0][2].size
    grid = Image.new(
        "RGB",
        (len(images) * (width + PAD) + PAD, height + 2 * PAD + CAPTION),
        (255, 255, 255),
    )
    draw = ImageDraw.Draw(grid)
    for i, (number, _values, image) in enumerate(images):
        left = PAD + i * (width + PAD)
        grid.paste(image.resize((width, height)), (left, PAD))
        draw.text((left, PAD + height + 1), f"#{number}", fill=(0, 0, 0))
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    return buffer.getvalue()


def write_pareto_grid(
    storage: BaseStorage, config: StudyConfig, path: Path, tracking_uri: str | None = None
) -> list[int]:
    """Write the Pareto grid of the study to ``path``; returns its trials' numbers, in order.

    Raises:
        ParetoError: see :func:`pareto_images`; or ``path``'s folder does not exist.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ParetoError(f"--output {path}: folder {path.parent} does not exist")
    images = pareto_images(storage, config, tracking_uri)
    path.write_bytes(pareto_grid_png(images))
    return [number for number, _, _ in images]
