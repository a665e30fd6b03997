"""A content image and a style image, for the ``style_transfer`` family.

Options (``dataset: {name: style_images, options: {...}}``):

* ``content`` [matplotlib's ``grace_hopper.jpg``]: the path of the image whose content the
  generated image keeps;
* ``style`` [matplotlib's ``Minduka_Present_Blue_Pack.png``, a blue gift box]: the path of the
  image whose style (textures, colours) it takes;
* ``size`` [128]: both images are centre-cropped to a square and resized to ``size`` x ``size``
  pixels (RGB, float32 in [0, 1]). The family measures its objectives at this size.

The defaults are sample images that ship inside matplotlib (``mpl-data/sample_data``): no
download. There is nothing to split: train, validation and test each hold the one content image
as ``x`` and the style image as ``y``, both of shape (1, size, size, 3).

Example:
    >>> from hpo.spaces import DatasetSpec
    >>> data = load(DatasetSpec(name="style_images", options={"size": 32}))
    >>> data.task, data.input_shape, data.train.y.shape
    ('reconstruction', (32, 32, 3), (1, 32, 32, 3))
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hpo.datasets._base import DataError, Dataset, Split

if TYPE_CHECKING:
    from hpo.spaces import DatasetSpec

DEFAULT_CONTENT = "grace_hopper.jpg"
DEFAULT_STYLE = "Minduka_Present_Blue_Pack.png"
DEFAULT_SIZE = 128
_OPTIONS = ("content", "style", "size")
_MIN_SIZE, _MAX_SIZE = 16, 1024


def sample_image(name: str) -> Path:
    """The path of one of matplotlib's bundled sample images."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data" / name


def load(spec: DatasetSpec) -> Dataset:
    """The content and style images of ``spec.options``, square, RGB, in [0, 1].

    Raises:
        DataError: an unknown option, a ``size`` out of range, or an image path that does not
            exist or is not an image (the message names the option and the file).
    """
    opts = _options(spec.options)
    size = opts["size"]
    content = read_image(opts["content"], size, "content")
    style = read_image(opts["style"], size, "style")
    split = Split(content[None], style[None])
    return Dataset(
        name="style_images",
        task="reconstruction",
        train=split,
        validation=split,
        test=split,
        meta={"content": str(opts["content"]), "style": str(opts["style"]), "size": size},
    )


def _options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise DataError(
            f"dataset style_images: unknown option {unknown[0]!r}; it takes {', '.join(_OPTIONS)}"
        )
    size = options.get("size", DEFAULT_SIZE)
    if isinstance(size, bool) or not isinstance(size, int) or not _MIN_SIZE <= size <= _MAX_SIZE:
        raise DataError(
            f"dataset style_images: option 'size' must be an integer from {_MIN_SIZE} to "
            f"{_MAX_SIZE} (pixels), got {size!r}"
        )
    paths = {}
    for key, default in (("content", DEFAULT_CONTENT), ("style", DEFAULT_STYLE)):
        value = options.get(key)
        if value is None:
            paths[key] = sample_image(default)
        elif not isinstance(value, str) or not value.strip():
            raise DataError(
                f"dataset style_images: option {key!r} must be the path of an image file, "
                f"got {value!r}"
            )
        else:
            paths[key] = Path(value).expanduser()
    return {"size": size, **paths}


def read_image(path: Path, size: int, key: str = "image") -> np.ndarray:
    """``path`` centre-cropped to a square, resized to ``size`` and as RGB float32 in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DataError(f"dataset style_images: option {key!r}: no such image file: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            rgb = _on_white(image)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(
            f"dataset style_images: option {key!r}: {path} is not an image that Pillow reads "
            f"({type(exc).__name__})"
        ) from None
    side = min(rgb.size)
    left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
    square = rgb.crop((left, top, left + side, top + side))
    resized = square.resize((size, size), Image.Resampling.BICUBIC)
    pixels: np.ndarray = np.clip(np.asarray(resized, np.float32) / 255.0, 0.0, 1.0)
    return pixels


def _on_white(image: Any) -> Any:
    """RGB; a transparent background becomes white (a PNG icon's, for example)."""
    from PIL import Image

    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")
