"""The training loop shared by finetuning and pretraining.

One step = one optimizer update over a global batch of ``batch_size`` rows
times ``grad_accumulation`` micro-batches. The loss is the token-weighted mean
over the *whole* global step (every rank and micro-batch divides by the same
global token count), so summing gradients over micro-batches and ranks gives
exactly the single-process gradient: a data-parallel run follows the same loss
curve as one process with the same global batch.

The loop never prints. It publishes ``mlxsmall.events`` (kind ``"train"``) and
appends the same records to a JSONL log; the CLI renders a progress bar from
the events. Only rank 0 writes logs and checkpoints.
"""

import json
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map

from .. import events
from ..errors import MlxsmallError
from . import checkpoint as ckpt
from .data import BatchStream


@dataclass
class TrainConfig:
    steps: int = 100
    batch_size: int = 4
    grad_accumulation: int = 1
    learning_rate: float = 1e-4
    min_learning_rate: float = 0.0
    warmup_steps: int = 0
    optimizer: str = "adamw"  # adamw | adafactor
    weight_decay: float = 0.0
    max_grad_norm: float = 0.0  # 0: no clipping
    seed: int = 0
    eval_every: int = 0  # 0: only at the start and the end
    val_batches: int = 8
    save_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 2
    grad_checkpoint: bool = False
    report_every: int = 1
    extra: dict = field(default_factory=dict)  # method settings recorded with checkpoints


@dataclass
class TrainResult:
    """What a finetune or pretraining run leaves behind."""

    output_dir: Path
    initial_val_loss: Optional[float]
    final_val_loss: Optional[float]
    steps: int
    trained_tokens: int
    adapter_dir: Optional[Path] = None
    model_dir: Optional[Path] = None


def build_schedule(config: TrainConfig):
    """Cosine decay to ``min_learning_rate`` after a linear warm-up."""
    decay_steps = max(config.steps - config.warmup_steps, 1)
    cosine = optim.cosine_decay(config.learning_rate, decay_steps, config.min_learning_rate)
    if config.warmup_steps <= 0:
        return cosine
    warmup = optim.linear_schedule(config.learning_rate / config.warmup_steps,
                                   config.learning_rate, config.warmup_steps)
    return optim.join_schedules([warmup, cosine], [config.warmup_steps])


def build_optimizer(config: TrainConfig):
    schedule = build_schedule(config)
    if config.optimizer == "adamw":
        return optim.AdamW(learning_rate=schedule, weight_decay=config.weight_decay)
    if config.optimizer == "adafactor":
        return optim.Adafactor(learning_rate=schedule, relative_step=False, scale_parameter=False)
    raise MlxsmallError(f"unknown optimizer {config.optimizer!r}; use adamw or adafactor")


def cross_entropy_loss(model, inputs, targets, mask, normalizer):
    """Sum of masked token losses divided by the global step's token count."""
    logits = model(inputs).astype(mx.float32)
    losses = nn.losses.cross_entropy(logits, targets) * mask
    return losses.sum() / normalizer


def use_grad_checkpointing(model):
    """Recompute each block's activations in the backward pass (less memory).

    Like mlx-lm's ``grad_checkpoint``, but it also hands a block the shared FFN
    it is called with (MobiLlama) as a checkpoint input, so that FFN's adapter
    gets its gradient, and it changes only this model's blocks (a subclass).
    """
    if getattr(getattr(model, "args", None), "shared_kv", False):
        raise MlxsmallError("--grad-checkpoint does not support layer-shared MobileLLM with shared "
                            "keys/values (the second application reads the first one's)")
    block_type = type(model.layers[0])
    if getattr(block_type, "checkpointed", False):
        return
    call = block_type.__call__

    def checkpointed(self, x, mask=None, cache=None, mlp=None):
        if cache is not None:  # inference with a KV cache: nothing to recompute
            return call(self, x, mask, cache, mlp)

        def inner(params, mlp_params, x):
            self.update(params)
            if mlp is not None:
                mlp.update(mlp_params)
            return call(self, x, mask, None, mlp)

        mlp_params = mlp.trainable_parameters() if mlp is not None else {}
        return mx.checkpoint(inner)(self.trainable_parameters(), mlp_params, x)

    subclass = type(f"Checkpointed{block_type.__name__}", (block_type,),
                    {"__call__": checkpointed, "checkpointed": True})
    for block in model.layers:
        block.__class__ = subclass


class Trainer:
    """Runs ``config.steps`` optimizer steps on ``model``'s trainable parameters.

    ``loss_fn(model, inputs, targets, mask, normalizer) -> scalar`` may be
    replaced (distillation); validation always reports plain cross-entropy.
    ``output_dir`` receives ``train_log.jsonl`` and
    ``checkpoints/``.
    """

    def __init__(self, model, train_stream: BatchStream, config: TrainConfig, *,
                 valid_stream: Optional[BatchStream] = None, output_dir=None,
                 loss_fn: Callable = cross_entropy_loss, group=None):
        self.model = model
        self.train_stream = train_stream
        self.valid_stream = valid_stream
        self.config = config
        self.loss_fn = loss_fn
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.group = group if group is not None else mx.distributed.init()
        self.rank = self.group.rank()
        self.world_size = self.group.size()
        if train_stream.batch_size % self.world_size:
            raise MlxsmallError(f"batch size {train_stream.batch_size} is not divisible by the "
                                f"{self.world_size} data-parallel processes")
        self.optimizer = build_optimizer(config)
        self.step = 0
        self.trained_tokens = 0
        self.last_val_loss = None
        self.initial_val_loss = None

    # -- state ---------------------------------------------------------------

    @property
    def checkpoint_root(self) -> Optional[Path]:
        return self.output_dir / "checkpoints" if self.output_dir else None

    def restore(self, path: Path):
        trainable, optimizer_state, state = ckpt.load_checkpoint(path)
        expected = set(k for k, _ in tree_flatten(self.model.trainable_parameters()))
        if set(trainable) != expected:
            missing = sorted(expected - set(trainable))[:1] or sorted(set(trainable) - expected)[:1]
            raise MlxsmallError(f"{path}: checkpoint does not match this model/method "
                                f"(first mismatched weight: {missing[0]})")
        if state.get("examples") != len(self.train_stream.examples):
            raise MlxsmallError(f"{path}: checkpoint was made with {state.get('examples')} training "
                                f"examples, the data now has {len(self.train_stream.examples)}")
        saved_config = state.get("config", {})
        for name in ("batch_size", "grad_accumulation", "seed"):  # they fix the data position
            if name in saved_config and saved_config[name] != getattr(self.config, name):
                raise MlxsmallError(f"{path}: the run used {name}={saved_config[name]}, this one "
                                    f"{getattr(self.config, name)}; resume with the same setting")
        self.model.load_weights(list(trainable.items()), strict=False)
        self.optimizer.state = optimizer_state
        self.step = int(state["step"])
        self.trained_tokens = int(state.get("trained_tokens", 0))
        self.last_val_loss = state.get("val_loss")
        self.initial_val_loss = state.get("initial_val_loss")
        mx.eval(self.model.parameters(), self.optimizer.state)

    def save_checkpoint(self):
        if self.rank != 0 or self.checkpoint_root is None:
            return None
        trainable = dict(tree_flatten(self.model.trainable_parameters()))
        state = {
            "position": self.step * self.config.grad_accumulation,
            "examples": len(self.train_stream.examples),
            "trained_tokens": self.trained_tokens,
            "val_loss": self.last_val_loss,
            "initial_val_loss": self.initial_val_loss,
            "config": asdict(self.config),
        }
        return ckpt.save_checkpoint(self.checkpoint_root, self.step, trainable,
                                    self.optimizer.state, state, keep=self.config.keep_checkpoints)

    # -- reporting -----------------------------------------------------------

    def emit(self, phase: str, **fields):
        if self.rank != 0:
            return
        record = dict(phase=phase, step=self.step, total_steps=self.config.steps, **fields)
        if self.output_dir is not None:  # the log first: it survives a subscriber that fails
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.output_dir / "train_log.jsonl", "a") as log:
                log.write(json.dumps(dict(record, time=time.time())) + "\n")
        events.publish("train", **record)

    # -- computation ---------------------------------------------------------

    def evaluate(self, num_batches: Optional[int] = None) -> Optional[float]:
        """Token-weighted validation loss over the first ``num_batches`` batches."""
        if self.valid_stream is None:
            return None
        num_batches = num_batches or self.config.val_batches
        num_batches = min(num_batches, self.valid_stream.batches_per_epoch)
        self.model.eval()
        total, tokens = mx.array(0.0), mx.array(0.0)
        for position in range(num_batches):
            batch = self.valid_stream.batch(position).shard(self.rank, self.world_size)
            mask = mx.array(batch.mask)
            total = total + cross_entropy_loss(self.model, mx.array(batch.inputs),
                                         mx.array(batch.targets), mask, mx.array(1.0))
            tokens = tokens + mask.sum()
            mx.eval(total, tokens)
        if self.world_size > 1:
            total = mx.distributed.all_sum(total, group=self.group, stream=mx.cpu)
            tokens = mx.distributed.all_sum(tokens, group=self.group, stream=mx.cpu)
        self.model.train()
        return (total / mx.maximum(tokens, 1.0)).item()

    def global_batches(self, step: int):
        accumulation = self.config.grad_accumulation
        first = step * accumulation
        return [self.train_stream.batch(first + i) for i in range(accumulation)]

    def build_step(self):
        model, optimizer, group = self.model, self.optimizer, self.group
        value_and_grad = nn.value_and_grad(model, self.loss_fn)
        world_size = self.world_size
        max_grad_norm = self.config.max_grad_norm
        state = [model.state, optimizer.state, mx.random.state]

        @partial(mx.compile, inputs=state, outputs=state)
        def micro_step(inputs, targets, mask, normalizer, accumulated):
            loss, grads = value_and_grad(model, inputs, targets, mask, normalizer)
            if accumulated is not None:
                grads = tree_map(mx.add, grads, accumulated)
            return loss, grads

        def update(grads):
            if world_size > 1:
                grads = tree_map(lambda g: mx.distributed.all_sum(g, group=group), grads)
            if max_grad_norm > 0:
                grads, _ = optim.clip_grad_norm(grads, max_grad_norm)
            optimizer.update(model, grads)

        apply = partial(mx.compile, inputs=state, outputs=state)(update)

        @partial(mx.compile, inputs=state, outputs=state)
        def whole_step(inputs, targets, mask, normalizer):
            # no accumulation: gradient and update in one graph, as mlx-lm's trainer does
            loss, grads = value_and_grad(model, inputs, targets, mask, normalizer)
            update(grads)
            return loss

        return micro_step, apply, whole_step, state

    def train(self, resume_from: Optional[Path] = None):
        config = self.config
        if resume_from is not None:
            self.restore(resume_from)
        if config.grad_checkpoint:
            use_grad_checkpointing(self.model)
        self.model.train()
        self.optimizer.init(self.model.trainable_parameters())
        micro_step, apply, whole_step, state = self.build_step()

        if self.step == 0:
            self.last_val_loss = self.initial_val_loss = self.evaluate()
        self.emit("start", resumed=resume_from is not None, val_loss=self.last_val_loss,
                  world_size=self.world_size,
                  trainable_parameters=sum(v.size for _, v in tree_flatten(self.model.trainable_parameters())))
        mx.reset_peak_memory()
        window_tokens, window_time = 0, 0.0
        run_start = time.perf_counter()
        steps_this_run = 0
        while self.step < config.steps:
            tic = time.perf_counter()
            # The RNG (dropout) is a function of (seed, step): resuming restores it exactly.
            mx.random.seed(config.seed * 1_000_003 + self.step)
            batches = self.global_batches(self.step)
            normalizer = mx.array(float(max(sum(b.num_tokens for b in batches), 1)))
            shards = [b.shard(self.rank, self.world_size) for b in batches]
            arrays = [(mx.array(s.inputs), mx.array(s.targets), mx.array(s.mask)) for s in shards]
            if len(arrays) == 1:
                loss = whole_step(*arrays[0], normalizer)
            else:
                grads, loss = None, mx.array(0.0)
                for inputs, targets, mask in arrays:
                    micro_loss, grads = micro_step(inputs, targets, mask, normalizer, grads)
                    loss = loss + micro_loss
                apply(grads)
            if self.world_size > 1:
                loss = mx.distributed.all_sum(loss, group=self.group, stream=mx.cpu)
            mx.eval(state, loss)
            step_tokens = sum(b.num_tokens for b in batches)
            self.step += 1
            steps_this_run += 1
            self.trained_tokens += step_tokens
            window_tokens += step_tokens
            window_time += time.perf_counter() - tic

            if self.step % config.report_every == 0 or self.step == config.steps:
                elapsed = time.perf_counter() - run_start
                remaining = config.steps - self.step
                self.emit("step", loss=loss.item(),
                          learning_rate=float(self.optimizer.learning_rate.item()),
                          tokens_per_second=window_tokens / max(window_time, 1e-9),
                          trained_tokens=self.trained_tokens,
                          peak_memory_gb=mx.get_peak_memory() / 1e9,
                          eta_seconds=elapsed / steps_this_run * remaining)
                window_tokens, window_time = 0, 0.0
            if config.eval_every and self.step % config.eval_every == 0 and self.step < config.steps:
                self.last_val_loss = self.evaluate()
                if self.last_val_loss is not None:
                    self.emit("eval", val_loss=self.last_val_loss)
            if config.save_every and self.step % config.save_every == 0 and self.step < config.steps:
                saved = self.save_checkpoint()
                if saved is not None:
                    self.emit("checkpoint", path=str(saved))

        self.last_val_loss = self.evaluate()
        if self.last_val_loss is not None:
            self.emit("eval", val_loss=self.last_val_loss)
        saved = self.save_checkpoint()
        self.emit("done", val_loss=self.last_val_loss, trained_tokens=self.trained_tokens,
                  checkpoint=str(saved) if saved else None)
        return TrainResult(self.output_dir, self.initial_val_loss, self.last_val_loss,
                           self.step, self.trained_tokens)
