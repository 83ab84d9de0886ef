"""Training a small VLM, LLaVA's two stages, on the shared training loop (`mlxsmall.train.trainer`).

- Stage 1 ("projector"): only the projector learns, on image-caption pairs (`{"image", "caption"}`).
- Stage 2 ("finetune"): projector + language model (full, or LoRA adapters fused at the end) on LLaVA
  conversation JSON (`{"image", "conversations": [{"from": "human", "value": "<image>\\n..."},
  {"from": "gpt", "value": "..."}, ...]}`). Loss only on the assistant's tokens.

The vision tower is frozen in both stages, so each image is encoded (and pooled) once up front into a
frozen feature table. Each image gets its own block of token ids past the vocabulary, one id per image
token; the model the trainer sees (`models.vlm.ImageTokenTable`) embeds those ids as projected table rows. The
batches are then plain token batches, so the shared Trainer's compiled step, gradient accumulation,
checkpoints / exact resume and data parallelism all apply unchanged.
"""

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import mlx.core as mx
from mlx.utils import tree_unflatten

from .. import events
from ..errors import MlxsmallError
from ..images import load_image
from ..models.vlm import ImageTokenTable
from ..vlm import IMAGE_PLACEHOLDER, tokenize_with_images
from .trainer import TrainConfig

STAGES = ("projector", "finetune")
DEFAULT_CAPTION_PROMPT = "Describe the image."  # the image placeholder goes first (LLaVA)


@dataclass
class VLMTrainSettings:
    """A stage of LLaVA's recipe on the shared trainer's settings (``train``, as finetuning and
    pretraining take them); the trainer records ``method`` ("vlm-projector", "vlm-finetune-lora", ...)."""

    stage: str = "projector"
    max_length: int = 2048  # tokens per example, image tokens included
    lora_rank: Optional[int] = None  # stage 2: LoRA adapters instead of full finetuning
    lora_scale: float = 20.0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=200, batch_size=8, learning_rate=1e-3, min_learning_rate=5e-5, warmup_steps=10, report_every=10))


def read_samples(path) -> List[dict]:
    """Samples from a JSON list or JSONL file; relative image paths resolve against the file's folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if text.lstrip().startswith("[") else [json.loads(l) for l in text.splitlines() if l.strip()]
    except FileNotFoundError:
        raise MlxsmallError(f"{path}: no such file") from None
    except json.JSONDecodeError as error:
        raise MlxsmallError(f"{path}: not valid JSON/JSONL ({error})") from None
    for number, sample in enumerate(data):
        if not isinstance(sample, dict) or ("caption" not in sample and "conversations" not in sample):
            raise MlxsmallError(f"{path}: sample {number} needs 'caption' or 'conversations'")
        image = sample.get("image")
        if isinstance(image, str) and not image.startswith(("http://", "https://")) and not Path(image).is_absolute():
            sample["image"] = str(path.parent / image)
    return data


def conversation(sample: dict) -> List[dict]:
    if "conversations" in sample:
        return sample["conversations"]
    return [{"from": "human", "value": sample.get("prompt", DEFAULT_CAPTION_PROMPT)},
            {"from": "gpt", "value": sample["caption"]}]


def tokenize_sample(tokenizer, sample: dict, image_token_index: int, num_image_tokens: int):
    """``(ids, loss_mask)``: the chat-formatted conversation, loss on assistant turns only."""
    turns = conversation(sample)
    if "image" in sample and not any(IMAGE_PLACEHOLDER in t["value"] for t in turns):
        turns = [dict(turns[0], value=IMAGE_PLACEHOLDER + "\n" + turns[0]["value"])] + list(turns[1:])
    template = getattr(tokenizer, "chat_template", None)
    eos = tokenizer.eos_token or ""
    messages, rendered, segments = [], "", []
    for turn in turns:
        role = "user" if turn["from"] in ("human", "user") else "assistant"
        messages.append({"role": role, "content": turn["value"]})
        if template:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=(role == "user"))
        else:
            text = rendered + (turn["value"] + "\n" if role == "user" else turn["value"] + eos + "\n")
        if not text.startswith(rendered):
            raise MlxsmallError("the chat template does not render conversations incrementally")
        segments.append((text[len(rendered):], role == "assistant"))
        rendered = text
    ids, mask = [], []
    for index, (text, learn) in enumerate(segments):
        piece = tokenize_with_images(tokenizer, text, image_token_index, num_image_tokens) if index == 0 else \
            _tokenize_piece(tokenizer, text, image_token_index, num_image_tokens)
        ids.extend(piece)
        mask.extend([learn] * len(piece))
    return ids, mask


def _tokenize_piece(tokenizer, text, image_token_index, num_image_tokens):
    ids = []
    for index, piece in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if index:
            ids.extend([image_token_index] * num_image_tokens)
        if piece:
            ids.extend(tokenizer.encode(piece, add_special_tokens=False))
    return ids


def encode_images(model, processor, sources: dict, batch_size: int = 16) -> dict:
    """Vision-tower features (before the projector) for each ``{key: image source}``, computed once."""
    features = {}
    keys = list(sources)
    dtype = model.vision_tower.vision_model.embeddings.patch_embedding.weight.dtype
    for start in range(0, len(keys), batch_size):
        chunk = keys[start:start + batch_size]
        pixels = processor([load_image(sources[k]) for k in chunk]).astype(dtype)
        out = model.vision_features(pixels)
        mx.eval(out)
        for key, row in zip(chunk, out):
            features[key] = row
    return features


def image_key(sample: dict):
    image = sample.get("image")
    return image if isinstance(image, str) else id(image)


def build_examples(tokenizer, samples: Sequence[dict], model, image_rows: dict, first_image_id: int):
    """``(tokens, prompt_length)`` examples for the shared trainer: one per assistant turn (the
    conversation before it is the unscored prompt); image placeholders become table ids."""
    marker, n = model.args.image_token_index, model.num_image_tokens
    examples = []
    for sample in samples:
        ids, mask = tokenize_sample(tokenizer, sample, marker, n)
        if "image" in sample:
            base = first_image_id + image_rows[image_key(sample)] * n
            positions = [i for i, t in enumerate(ids) if t == marker]
            for j, position in enumerate(positions):
                ids[position] = base + j % n
        elif marker in ids:
            raise MlxsmallError(f"a sample without an image has an {IMAGE_PLACEHOLDER} placeholder")
        for end in range(1, len(ids) + 1):  # every end of a run of scored tokens closes one example
            if mask[end - 1] and (end == len(ids) or not mask[end]):
                start = end - 1
                while start > 0 and mask[start - 1]:
                    start -= 1
                if start > 0:
                    examples.append((ids[:end], start))
    return examples


def prepare_trainable(vlm, settings: VLMTrainSettings):
    """Freeze what the stage keeps fixed; add LoRA adapters when asked."""
    vlm.freeze()
    if settings.stage == "finetune" and settings.lora_rank:
        from mlx_lm.tuner.utils import linear_to_lora_layers

        linear_to_lora_layers(vlm.language_model, len(vlm.language_model.layers),
                              {"rank": settings.lora_rank, "scale": settings.lora_scale, "dropout": 0.0})
    elif settings.stage == "finetune":
        vlm.language_model.unfreeze()
    vlm.multi_modal_projector.unfreeze()


def fuse_lora(model):
    fused = [(name, module.fuse()) for name, module in model.named_modules() if hasattr(module, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))


def train_vlm(model, tokenizer, processor, samples: Sequence[dict], settings: VLMTrainSettings, *,
              valid_samples: Sequence[dict] = (), output_dir=None, resume: bool = False, force: bool = False,
              on_step: Optional[Callable[[dict], None]] = None) -> List[dict]:
    """Train ``model`` in place on ``samples``; returns the step records (also on the metrics feed).

    ``valid_samples`` give the trainer's validation loss (at the start and the end, in the log).
    ``output_dir`` keeps the shared trainer's ``train_log.jsonl`` and ``checkpoints/``; ``resume``
    continues from its latest checkpoint (same data, same settings)."""
    from . import checkpoint as ckpt
    from .data import BatchStream
    from .trainer import Trainer

    if settings.stage not in STAGES:
        raise MlxsmallError(f"unknown stage {settings.stage!r}; choose one of {', '.join(STAGES)}")
    if not samples:
        raise MlxsmallError("no training samples")
    resume_from = ckpt.prepare_run_directory(Path(output_dir), resume=resume, force=force) if output_dir else None
    loop = settings.train
    mx.random.seed(loop.seed)
    sources = {image_key(s): s["image"] for s in list(samples) + list(valid_samples) if "image" in s}
    features = encode_images(model, processor, sources)
    image_rows = {key: row for row, key in enumerate(features)}
    if features:
        table = model.multi_modal_projector.pool(mx.stack(list(features.values())))
        table = table.reshape(-1, table.shape[-1])
    else:
        table = mx.zeros((1, model.vision_config.hidden_size))
    first_image_id = max(model.args.text_config["vocab_size"], model.args.image_token_index + 1)
    examples = build_examples(tokenizer, samples, model, image_rows, first_image_id)
    if not examples:
        raise MlxsmallError("no sample has an assistant answer to learn")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    stream = BatchStream(examples, batch_size=loop.batch_size, max_length=settings.max_length,
                         seed=loop.seed, pad_id=pad_id)
    valid = build_examples(tokenizer, valid_samples, model, image_rows, first_image_id) if valid_samples else []
    valid_stream = (BatchStream(valid, batch_size=min(loop.batch_size, len(valid)), max_length=settings.max_length,
                                pad_id=pad_id, shuffle=False) if valid else None)
    prepare_trainable(model, settings)
    net = ImageTokenTable(model, table, first_image_id, project=True)
    net.freeze(recurse=False, keys=["image_table"])
    method = f"vlm-{settings.stage}" + ("-lora" if settings.lora_rank else "")
    loop = replace(loop, extra={**loop.extra, "method": method})
    history = []

    def collect(event):
        if event.kind == "train" and event.get("phase") == "step":
            record = dict(event.fields, stage=settings.stage)
            history.append(record)
            if on_step:
                on_step(record)

    unsubscribe = events.subscribe(collect)
    try:
        trainer = Trainer(net, stream, loop, valid_stream=valid_stream, output_dir=output_dir)
        trainer.train(resume_from=resume_from)
    finally:
        unsubscribe()
    if settings.stage == "finetune" and settings.lora_rank:
        fuse_lora(model)
    model.unfreeze()
    if valid_stream is not None:
        history.append({"phase": "eval", "initial_val_loss": trainer.initial_val_loss,
                        "val_loss": trainer.last_val_loss, "stage": settings.stage})
    return history
