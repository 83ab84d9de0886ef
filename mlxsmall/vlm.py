"""Vision-language glue: image preprocessing (Pillow), prompts with images, load/save/quantize, generation.

    from mlxsmall.vlm import load_vlm, stream_generate_vlm
    model, tokenizer, processor = load_vlm("./tiny-vlm")
    for step in stream_generate_vlm(model, tokenizer, processor, "What is in the picture?", ["cat.jpg"]):
        print(step.text, end="")

The model is `mlxsmall.models.vlm.Model` (LLaVA layout, see docs/architecture.md). Image tokens are
spliced into the prompt's embeddings, which then go through the one generation loop
(`mlxsmall.generation.stream_generate(..., input_embeddings=...)`); image encoding is timed on its own so
that time to first token and image-encode time are reported separately.
"""

import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import mlx.core as mx
import numpy as np

from . import events
from .errors import MlxsmallError

IMAGE_PLACEHOLDER = "<image>"
URL_PREFIXES = ("http://", "https://")


# --------------------------------------------------------------------------- images


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

    @classmethod
    def for_vision_config(cls, vision_config: dict) -> "ImageProcessor":
        from .models.vision import VisionConfig

        config = VisionConfig.from_dict(vision_config)
        return cls(config.image_size, config.image_mean, config.image_std, center_crop=config.is_clip)

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


# --------------------------------------------------------------------------- prompts


def tokenize_with_images(tokenizer, text: str, image_token_index: int, num_image_tokens: int) -> List[int]:
    """Token ids for ``text`` where each ``<image>`` becomes ``num_image_tokens`` placeholder ids.

    The text around the placeholders is tokenized piece by piece, so the tokenizer never needs to know
    the placeholder (it may lie outside the vocabulary)."""
    ids = []
    bos = getattr(tokenizer, "bos_token", None)
    for index, piece in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if index:
            ids.extend([image_token_index] * num_image_tokens)
        if piece:
            # Special tokens (BOS) once, at the start, unless a chat template already wrote the BOS text.
            special = index == 0 and not (bos and piece.startswith(bos))
            ids.extend(tokenizer.encode(piece, add_special_tokens=special))
        elif index == 0 and bos and getattr(tokenizer, "bos_token_id", None) is not None:
            ids.append(tokenizer.bos_token_id)
    return ids


def format_prompt(tokenizer, question: str, num_images: int, chat: Optional[bool] = None) -> str:
    """The prompt text: ``<image>`` placeholders first (LLaVA), through the chat template when there is one."""
    if num_images and IMAGE_PLACEHOLDER not in question:
        question = (IMAGE_PLACEHOLDER + "\n") * num_images + question
    elif question.count(IMAGE_PLACEHOLDER) != num_images:
        raise MlxsmallError(f"the prompt has {question.count(IMAGE_PLACEHOLDER)} {IMAGE_PLACEHOLDER} "
                            f"placeholders for {num_images} image(s)")
    template = getattr(tokenizer, "chat_template", None)
    if chat is None:
        chat = bool(template)
    if chat and template:
        return tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                             tokenize=False, add_generation_prompt=True)
    return question


# --------------------------------------------------------------------------- load / save / build


def vlm_config(text_config: dict, vision_config: dict, **options) -> dict:
    """The config.json of a VLM: LLaVA field names; eos copied up so the tokenizer loader finds it."""
    config = {"model_type": "llava", "text_config": dict(text_config), "vision_config": dict(vision_config)}
    config.update({k: v for k, v in options.items() if v is not None})
    if "eos_token_id" in text_config:
        config["eos_token_id"] = text_config["eos_token_id"]
    return config


def build_vlm_model(config: dict):
    from .models import vlm

    try:
        return vlm.Model(vlm.ModelArgs.from_dict(config))
    except (KeyError, TypeError, ValueError) as error:
        raise MlxsmallError(f"config.json: not a valid VLM config ({error})") from None


def is_vlm_config(config: dict) -> bool:
    return config.get("model_type") == "llava" and "vision_config" in config and "text_config" in config


def is_vlm_model(path) -> bool:
    """True when ``path`` is a local VLM directory (for routing `mlxsmall chat/generate --image`)."""
    from .loading import read_config

    config_path = Path(path).expanduser() / "config.json"
    return config_path.is_file() and is_vlm_config(read_config(config_path.parent))


def load_vlm(path, *, dtype: Optional[str] = "auto", dequantize: Optional[bool] = None):
    """``(model, tokenizer, image_processor)`` from a VLM directory in our format.

    Like ``mlxsmall.load``: on CPU, quantized / half-precision weights are run as fp32 by default."""
    from mlx_lm.utils import dequantize_model, load_model as mlx_lm_load_model

    from .safetensors_io import read_header
    from .loading import (cast_floating, describe_weight_error, load_tokenizer, read_config, running_on_cpu,
                          weight_files)
    from .models import vlm

    model_dir = Path(path).expanduser()
    if not model_dir.is_dir():
        raise MlxsmallError(f"{path}: no such vision-language model directory")
    config = read_config(model_dir)
    if not is_vlm_config(config):
        raise MlxsmallError(f"{model_dir / 'config.json'}: not a vision-language model "
                            "(needs model_type 'llava' with text_config and vision_config)")
    build_vlm_model(config)  # clear config errors before mlx-lm sees it
    headers = {f: read_header(f) for f in weight_files(model_dir)}
    try:
        model, config = mlx_lm_load_model(model_dir, lazy=True, strict=True,
                                          get_model_classes=lambda config: (vlm.Model, vlm.ModelArgs))
    except ValueError as error:
        raise MlxsmallError(f"{model_dir}: {describe_weight_error(error, headers)}") from None
    cpu = running_on_cpu()
    if (cpu if dequantize is None else dequantize) and config.get("quantization"):
        dequantize_model(model)
    if dtype == "auto":
        dtype = "float32" if cpu else None
    if dtype is not None:
        cast_floating(model, dtype)
    mx.eval(model.parameters())
    return model, load_tokenizer(model_dir), ImageProcessor.for_vision_config(config["vision_config"])


def save_vlm(dst, model, config: dict, *, tokenizer_src_dir=None, overwrite: bool = False) -> Path:
    from .loading import save_model

    return save_model(dst, model, config, tokenizer_src_dir=tokenizer_src_dir, overwrite=overwrite)


def quantize_vlm(model, config: dict, *, bits: int = 4, group_size: int = 64, vision: str = "fp16") -> dict:
    """Quantize the language model (and projector); the vision tower follows ``vision``:
    "quantize" (same bits), "fp16" (kept unquantized in float16) or "keep" (unquantized, dtype as is).
    Unquantized vision modules are written as ``"<path>": false`` overrides in the quantization block."""
    from mlx.utils import tree_map

    from .quantize import quantize_model

    if vision not in ("quantize", "fp16", "keep"):
        raise MlxsmallError(f"vision tower mode {vision!r}: choose quantize, fp16 or keep")
    kept = []

    def predicate(path, module):
        if path.startswith("vision_tower.") and vision != "quantize":
            kept.append(path)
            return False
        return True

    config = quantize_model(model, config, bits=bits, group_size=group_size, predicate=predicate)
    for path in kept:
        config["quantization"][path] = False
    if vision == "fp16":
        model.vision_tower.update(tree_map(lambda p: p.astype(mx.float16) if mx.issubdtype(p.dtype, mx.floating)
                                           else p, model.vision_tower.parameters()))
    return config


# --------------------------------------------------------------------------- generation


@dataclass
class EncodedPrompt:
    tokens: List[int]  # placeholder ids replaced by 0 (they are never embedded)
    embeddings: mx.array  # (L, D)
    image_features: Optional[mx.array]  # projected, (num_images, num_image_tokens, D); reusable across turns
    image_encode_time: float  # seconds; 0.0 when no image was encoded here
    num_image_tokens: int


def encode_images(model, processor, images: Sequence):
    """``(projected features, seconds)``: vision tower + projector, evaluated and timed on their own."""
    pixels = processor(list(images))
    dtype = model.vision_tower.vision_model.embeddings.patch_embedding.weight.dtype  # never quantized
    start = time.perf_counter()
    features = model.encode_image(pixels.astype(dtype))
    mx.eval(features)
    return features, time.perf_counter() - start


def encode_prompt(model, tokenizer, processor, prompt: str, images: Sequence = (), *, chat=None,
                  formatted: bool = False, image_features=None) -> EncodedPrompt:
    """Tokenize, encode the images (unless ``image_features`` are given) and splice them in.

    ``formatted=True``: ``prompt`` is final text (chat template applied, ``<image>`` placeholders in place)."""
    num_images = len(images) if image_features is None else image_features.shape[0]
    text = prompt if formatted else format_prompt(tokenizer, prompt, num_images, chat=chat)
    ids = tokenize_with_images(tokenizer, text, model.args.image_token_index, model.num_image_tokens)
    encode_time = 0.0
    if image_features is None and images:
        image_features, encode_time = encode_images(model, processor, images)
    embeddings = model.embed_inputs(mx.array(ids)[None], image_features=image_features)[0]
    mx.eval(embeddings)
    tokens = [0 if t == model.args.image_token_index else t for t in ids]
    n = model.num_image_tokens * num_images
    events.publish("vision", image_encode_time=encode_time, image_tokens=n, images=num_images)
    return EncodedPrompt(tokens, embeddings, image_features, encode_time, n)


@dataclass
class VisionGenerationStep:
    """A generation step (see ``mlxsmall.generation.GenerationStep``) plus the image-encode time."""

    step: object
    image_encode_time: float
    image_tokens: int

    def __getattr__(self, name):
        return getattr(self.__dict__["step"], name)


def stream_generate_vlm(model, tokenizer, processor, prompt: str, images: Sequence = (), *, chat=None,
                        formatted: bool = False, image_features=None,
                        **options) -> Iterator[VisionGenerationStep]:
    """Stream an answer about ``images`` (paths, URLs or PIL images). ``options`` go to the one generation
    loop (max_tokens, temperature, top_p, seed, stop, ...). ``time_to_first_token`` counts the prompt
    prefill only; ``image_encode_time`` is the vision tower + projector. Pass ``image_features`` (from
    ``encode_images``) to reuse an encoded image; multi-turn chat: ``vision_chat_session``."""
    from .generation import stream_generate

    encoded = encode_prompt(model, tokenizer, processor, prompt, images, chat=chat, formatted=formatted,
                            image_features=image_features)
    for step in stream_generate(model, tokenizer, encoded.tokens, input_embeddings=encoded.embeddings, **options):
        yield VisionGenerationStep(step, encoded.image_encode_time, encoded.num_image_tokens)


def generate_vlm(model, tokenizer, processor, prompt: str, images: Sequence = (), **options) -> str:
    return "".join(s.text for s in stream_generate_vlm(model, tokenizer, processor, prompt, images, **options))


# --------------------------------------------------------------------------- chat


def vision_chat_session(model, tokenizer, image_features=None, **session_options):
    """A multi-turn chat about encoded images on the core ``ChatSession`` (chat template, KV cache kept
    across turns, oldest turns dropped when the context fills). Put ``<image>`` placeholders (one per
    image, in order) in the first user message; ``image_features`` come from ``encode_images``."""
    from dataclasses import dataclass as _dataclass

    from .chat import ChatSession, plain_transcript
    from .models.vlm import ImageTokenTable

    first_image_id = max(model.args.text_config["vocab_size"], model.args.image_token_index + 1)
    per_image = model.num_image_tokens
    if image_features is not None:
        table = image_features.reshape(-1, image_features.shape[-1])
    else:
        table = mx.zeros((1, model.args.text_config["hidden_size"]))
    capacity = table.shape[0] // per_image if image_features is not None else 0

    @_dataclass
    class VisionChatSession(ChatSession):
        def render(self, messages):
            text = (self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
                    if self.template_name == "tokenizer" else plain_transcript(messages))
            if text.count(IMAGE_PLACEHOLDER) > capacity:
                raise MlxsmallError(f"the conversation has {text.count(IMAGE_PLACEHOLDER)} {IMAGE_PLACEHOLDER} "
                                    f"placeholders for {capacity} encoded image(s)")
            ids = tokenize_with_images(self.tokenizer, text, -1, per_image)
            image_ids = iter(range(first_image_id, first_image_id + table.shape[0]))
            return [next(image_ids) if t == -1 else t for t in ids]

    return VisionChatSession(ImageTokenTable(model, table, first_image_id, project=False), tokenizer,
                             **session_options)


# --------------------------------------------------------------------------- synthetic images

SHAPE_COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (235, 210, 20)}
SHAPES = ("circle", "square", "triangle")


def draw_shape(shape: str, colour: str, size: int = 64, *, background=(255, 255, 255), jitter=None):
    """A Pillow image of one coloured shape: the synthetic data of the tests, the demo and the VQA sample.
    ``jitter`` (a ``random.Random``) varies position and scale a little."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    scale = jitter.uniform(0.55, 0.8) if jitter else 0.7
    half = size * scale / 2
    cx = size / 2 + (jitter.uniform(-1, 1) * (size / 2 - half) if jitter else 0)
    cy = size / 2 + (jitter.uniform(-1, 1) * (size / 2 - half) if jitter else 0)
    box = (cx - half, cy - half, cx + half, cy + half)
    fill = SHAPE_COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")
    return image
