"""Training a small VLM, LLaVA's two stages.

- Stage 1 ("projector"): only the projector learns, on image-caption pairs (`{"image", "caption"}`).
- Stage 2 ("finetune"): projector + language model (full, or LoRA adapters fused at the end) on LLaVA
  conversation JSON (`{"image", "conversations": [{"from": "human", "value": "<image>\\n..."},
  {"from": "gpt", "value": "..."}, ...]}`). Loss only on the assistant's tokens.

The vision tower is frozen in both stages, so each image is encoded once up front and its features reused
every epoch (the dominant cost on a CPU). Progress goes to the metrics feed as "train" events.
"""

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from .. import events
from ..errors import MlxsmallError
from ..vlm import IMAGE_PLACEHOLDER, load_image, tokenize_with_images

STAGES = ("projector", "finetune")
DEFAULT_CAPTION_PROMPT = "Describe the image."  # the image placeholder goes first (LLaVA)


@dataclass
class TrainConfig:
    stage: str = "projector"
    steps: int = 200
    batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 10
    lora_rank: Optional[int] = None  # stage 2: LoRA adapters instead of full finetuning
    lora_scale: float = 20.0
    seed: int = 0
    log_every: int = 10


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


def prepare_trainable(model, config: TrainConfig):
    """Freeze what the stage keeps fixed; add LoRA adapters when asked."""
    model.freeze()
    if config.stage == "projector":
        model.multi_modal_projector.unfreeze()
    elif config.lora_rank:
        from mlx_lm.tuner.utils import linear_to_lora_layers

        linear_to_lora_layers(model.language_model, len(model.language_model.layers),
                              {"rank": config.lora_rank, "scale": config.lora_scale, "dropout": 0.0})
        model.multi_modal_projector.unfreeze()
    else:
        model.language_model.unfreeze()
        model.multi_modal_projector.unfreeze()


def fuse_lora(model):
    fused = [(name, module.fuse()) for name, module in model.named_modules() if hasattr(module, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))


def vlm_loss(model, ids, targets, loss_mask, image_features):
    """Mean cross-entropy over the assistant tokens; image features are projected here (trainable)."""
    projected = model.multi_modal_projector(image_features) if image_features is not None else None
    embeddings = model.embed_inputs(ids, image_features=projected)
    logits = model.language_model(ids, input_embeddings=embeddings)
    losses = nn.losses.cross_entropy(logits.astype(mx.float32), targets) * loss_mask
    count = loss_mask.sum()
    return losses.sum() / mx.maximum(count, 1), count


def make_batch(rows, features, pad_id: int):
    length = max(len(ids) for ids, _, _ in rows)
    ids = np.full((len(rows), length), pad_id, dtype=np.int32)
    mask = np.zeros((len(rows), length), dtype=np.float32)
    for i, (row_ids, row_mask, _) in enumerate(rows):
        ids[i, :len(row_ids)] = row_ids
        mask[i, :len(row_mask)] = row_mask
    keys = [key for _, _, key in rows if key is not None]
    image_features = mx.stack([features[k] for k in keys]) if keys else None
    inputs = mx.array(ids[:, :-1])
    return inputs, mx.array(ids[:, 1:]), mx.array(mask[:, 1:]), image_features


def train_vlm(model, tokenizer, processor, samples: Sequence[dict], config: TrainConfig,
              on_step: Optional[Callable[[dict], None]] = None) -> List[dict]:
    """Train ``model`` in place on ``samples``; returns the logged metrics."""
    if config.stage not in STAGES:
        raise MlxsmallError(f"unknown stage {config.stage!r}; choose one of {', '.join(STAGES)}")
    if not samples:
        raise MlxsmallError("no training samples")
    rng = random.Random(config.seed)
    mx.random.seed(config.seed)
    image_token, n_tokens = model.args.image_token_index, model.num_image_tokens
    rows = []
    for sample in samples:
        ids, mask = tokenize_sample(tokenizer, sample, image_token, n_tokens)
        rows.append((ids, mask, image_key(sample) if "image" in sample else None))
    sources = {image_key(s): s["image"] for s in samples if "image" in s}
    start = time.perf_counter()
    features = encode_images(model, processor, sources)
    encode_seconds = time.perf_counter() - start

    prepare_trainable(model, config)
    schedule = optim.join_schedules(
        [optim.linear_schedule(1e-7, config.learning_rate, max(config.warmup, 1)),
         optim.cosine_decay(config.learning_rate, max(config.steps - config.warmup, 1), config.learning_rate * 0.05)],
        [max(config.warmup, 1)])
    optimizer = optim.AdamW(learning_rate=schedule, weight_decay=config.weight_decay)
    loss_and_grad = nn.value_and_grad(model, vlm_loss)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    events.publish("train", phase="start", stage=config.stage, steps=config.steps, trainable_parameters=trainable,
                   image_encode_seconds=encode_seconds)
    history, order, tic, tokens_seen = [], [], time.perf_counter(), 0
    for step in range(1, config.steps + 1):
        if len(order) < config.batch_size:
            order.extend(rng.sample(range(len(rows)), len(rows)))
        batch = [rows[i] for i in order[:config.batch_size]]
        del order[:config.batch_size]
        inputs, targets, mask, image_features = make_batch(batch, features, pad_id)
        (loss, count), grads = loss_and_grad(model, inputs, targets, mask, image_features)
        optimizer.update(model, grads)
        mx.eval(model.trainable_parameters(), optimizer.state, loss)
        tokens_seen += int(count.item())
        if step % config.log_every == 0 or step == config.steps:
            elapsed = time.perf_counter() - tic
            record = {"step": step, "loss": loss.item(), "learning_rate": float(optimizer.learning_rate.item()),
                      "tokens_per_second": tokens_seen / elapsed if elapsed > 0 else math.nan,
                      "stage": config.stage}
            history.append(record)
            events.publish("train", phase="step", **record)
            if on_step:
                on_step(record)
    if config.stage == "finetune" and config.lora_rank:
        fuse_lora(model)
    model.unfreeze()
    events.publish("train", phase="done", stage=config.stage, steps=config.steps)
    return history
