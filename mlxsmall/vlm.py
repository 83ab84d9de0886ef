"""Vision-language prompts and generation: ``<image>`` placeholders, image tokens spliced into the
prompt, one-shot answers and multi-turn chat.

    from mlxsmall import load
    from mlxsmall.images import image_processor_for
    from mlxsmall.vlm import stream_generate_vlm
    model, tokenizer = load("./tiny-vlm")  # the one loader: a LLaVA-layout config gives the VLM
    processor = image_processor_for(model.vision_config)
    for step in stream_generate_vlm(model, tokenizer, processor, "What is in the picture?", ["cat.jpg"]):
        print(step.text, end="")

The model is `mlxsmall.models.vlm.Model` (LLaVA layout, see docs/vlm.md). Image tokens are spliced into
the prompt's embeddings, which then go through the one generation loop
(`mlxsmall.generation.stream_generate(..., input_embeddings=...)`); image encoding is timed on its own so
that time to first token and image-encode time are reported separately.
"""

import time
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence

import mlx.core as mx

from . import events
from .chat import ChatSession, plain_transcript
from .errors import MlxsmallError
from .generation import stream_generate
from .models.vlm import ImageTokenTable

IMAGE_PLACEHOLDER = "<image>"


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
    encoded = encode_prompt(model, tokenizer, processor, prompt, images, chat=chat, formatted=formatted,
                            image_features=image_features)
    for step in stream_generate(model, tokenizer, encoded.tokens, input_embeddings=encoded.embeddings, **options):
        yield VisionGenerationStep(step, encoded.image_encode_time, encoded.num_image_tokens)


def generate_vlm(model, tokenizer, processor, prompt: str, images: Sequence = (), **options) -> str:
    return "".join(s.text for s in stream_generate_vlm(model, tokenizer, processor, prompt, images, **options))


# --------------------------------------------------------------------------- chat


@dataclass
class VisionChatSession(ChatSession):
    """The core ``ChatSession`` on an ``ImageTokenTable`` model: each ``<image>`` placeholder of the
    conversation becomes the table ids of the next encoded image, in order."""

    images: int = 0  # encoded images in the model's table

    def render(self, messages):
        text = (self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
                if self.template_name == "tokenizer" else plain_transcript(messages))
        if text.count(IMAGE_PLACEHOLDER) > self.images:
            raise MlxsmallError(f"the conversation has {text.count(IMAGE_PLACEHOLDER)} {IMAGE_PLACEHOLDER} "
                                f"placeholders for {self.images} encoded image(s)")
        per_image, first = self.model.vlm.num_image_tokens, self.model.first_image_id
        image_ids = iter(range(first, first + self.images * per_image))
        return [next(image_ids) if t == -1 else t for t in tokenize_with_images(self.tokenizer, text, -1, per_image)]


def vision_chat_session(model, tokenizer, image_features=None, **session_options) -> VisionChatSession:
    """A multi-turn chat about encoded images (chat template, KV cache kept across turns, oldest turns
    dropped when the context fills). Put ``<image>`` placeholders (one per image, in order) in the
    first user message; ``image_features`` come from ``encode_images``."""
    first_image_id = max(model.args.text_config["vocab_size"], model.args.image_token_index + 1)
    if image_features is not None:
        table, images = image_features.reshape(-1, image_features.shape[-1]), image_features.shape[0]
    else:
        table, images = mx.zeros((1, model.args.text_config["hidden_size"])), 0
    return VisionChatSession(ImageTokenTable(model, table, first_image_id, project=False), tokenizer,
                             images=images, **session_options)
