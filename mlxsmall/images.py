"""Images in: load one (path, URL, bytes, PIL image) and preprocess it for a vision tower.

    from mlxsmall.images import image_processor_for, load_image
    pixels = image_processor_for(model.vision_config)([load_image("cat.jpg")])  # NHWC float32
"""

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Tuple

import mlx.core as mx
import numpy as np

from .errors import MlxsmallError

URL_PREFIXES = ("http://", "https://")


def load_image(source):
    """A Pillow RGB image from a path, an http(s) URL, raw bytes or a PIL image."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, Image.Image):
        return source.convert("RGB")
    try:
        if isinstance(source, (bytes, bytearray)):
            return Image.open(io.BytesIO(source)).convert("RGB")
        source = str(source)
        if source.startswith(URL_PREFIXES):
            import urllib.request

            try:
                with urllib.request.urlopen(source, timeout=30) as response:
                    return Image.open(io.BytesIO(response.read())).convert("RGB")
            except OSError as error:
                raise MlxsmallError(f"{source}: cannot download the image ({error})") from None
        path = Path(source).expanduser()
        if not path.is_file():
            raise MlxsmallError(f"{path}: no such image file")
        return Image.open(path).convert("RGB")
    except UnidentifiedImageError:
        raise MlxsmallError(f"{source}: not an image Pillow can read") from None


@dataclass
class ImageProcessor:
    """Hugging Face's CLIP and SigLIP image processors (their PIL path), step for step.

    CLIP: resize the short side to `image_size` (bicubic; the long side truncated, as
    transformers' ``get_resize_output_image_size`` does), center crop; SigLIP: resize to a square
    (bicubic). Then rescale by 1/255 (in float64, like transformers) and normalise with the
    encoder's own mean/std in float32. Output is NHWC float32."""

    image_size: int
    image_mean: Sequence[float]
    image_std: Sequence[float]
    center_crop: bool = True

    def resized_size(self, width: int, height: int) -> Tuple[int, int]:
        """``(width, height)`` before the crop: 640x480 -> 298x224 for CLIP at 224."""
        size = self.image_size
        if not self.center_crop:
            return size, size
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(size * long / short)
        return (size, new_long) if width <= height else (new_long, size)

    def preprocess(self, image) -> np.ndarray:
        from PIL import Image

        image = load_image(image)
        size = self.image_size
        resized = self.resized_size(*image.size)
        if image.size != resized:
            image = image.resize(resized, Image.BICUBIC)
        if self.center_crop:
            left, top = (resized[0] - size) // 2, (resized[1] - size) // 2
            image = image.crop((left, top, left + size, top + size))
        pixels = (np.asarray(image, dtype=np.float64) * (1 / 255)).astype(np.float32)
        return (pixels - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)

    def __call__(self, images) -> mx.array:
        if not isinstance(images, (list, tuple)):
            images = [images]
        return mx.array(np.stack([self.preprocess(image) for image in images]))


def image_processor_for(vision_config) -> ImageProcessor:
    """The processor a vision tower was trained with: a ``VisionConfig`` (``model.vision_config``)
    or the ``vision_config`` dict of a config.json (CLIP: center crop; SigLIP: square resize)."""
    from .models.vision import VisionConfig

    if isinstance(vision_config, dict):
        vision_config = VisionConfig.from_dict(vision_config)
    return ImageProcessor(vision_config.image_size, vision_config.image_mean, vision_config.image_std,
                          center_crop=vision_config.is_clip)
