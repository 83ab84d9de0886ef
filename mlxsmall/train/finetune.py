"""Finetuning: LoRA, DoRA, QLoRA (adapters on a quantized base) and full.

``finetune(...)`` wires the pieces: load the base, add adapters (or unfreeze
everything), tokenize the data, run the ``Trainer`` and write the result:
``adapters.safetensors`` + ``adapter_config.json`` (adapter methods) or a
model directory ``model/`` (full), next to ``train_log.jsonl`` and
``checkpoints/``.
"""

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import mlx.core as mx

from ..errors import MlxsmallError
from ..hub import resolve_model_path
from ..loading import load_model, load_tokenizer, read_config, save_model
from ..quantize import is_quantized, quantize_model
from . import adapters as adapter_lib
from . import checkpoint as ckpt
from .data import BatchStream, check_finetune_data, example_arrays, load_finetune_data
from .trainer import TrainConfig, Trainer, TrainResult

METHODS = ("lora", "dora", "qlora", "full")


@dataclass
class FinetuneSettings:
    method: str = "lora"
    rank: int = 8
    scale: float = 20.0
    dropout: float = 0.0
    keys: Optional[Sequence[str]] = None
    per_layer_adapters: bool = False
    qlora_bits: int = 4
    qlora_group_size: int = 64
    max_length: int = 512
    pack: bool = False
    mask_prompt: bool = True
    dtype: Optional[str] = None  # "bfloat16": frozen base in bf16, adapters and loss in fp32
    train: TrainConfig = field(default_factory=TrainConfig)


def prepare_model(model_dir: Path, settings: FinetuneSettings):
    """Load the base and make the right parameters trainable; returns (model, config, adapter_config)."""
    method = settings.method
    if method not in METHODS:
        raise MlxsmallError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    stored_quantized = is_quantized(read_config(model_dir))
    if method == "full" and stored_quantized:
        raise MlxsmallError(f"{model_dir}: a full finetune needs a float model; this one is "
                            "quantized (use --method qlora, or dequantize it first)")
    # On CPU dense fp32 is the fast path, so LoRA/DoRA run on a dequantized base;
    # QLoRA keeps (or makes) the base quantized: the point is its memory.
    keep_quantized = method == "qlora"
    model, config = load_model(model_dir, dtype=settings.dtype,
                               dequantize=stored_quantized and not keep_quantized)
    if not keep_quantized and stored_quantized:
        config = {k: v for k, v in config.items() if k not in ("quantization", "quantization_config")}
    if method == "qlora" and not is_quantized(config):
        config = quantize_model(model, config, bits=settings.qlora_bits,
                                group_size=settings.qlora_group_size)
    if method == "full":
        model.unfreeze()
        return model, config, {"fine_tune_type": "full"}
    adapter_config = adapter_lib.apply_adapters(
        model, method="dora" if method == "dora" else "lora", rank=settings.rank,
        scale=settings.scale, dropout=settings.dropout, keys=settings.keys,
        per_layer=settings.per_layer_adapters)
    if method == "qlora":
        adapter_config["qlora"] = config["quantization"]
    return model, config, adapter_config


def check_something_to_learn(examples, settings: FinetuneSettings, data: str) -> None:
    """Refuse a run whose every row is prompt: --max-length shorter than the (templated) prompts
    would train on 0 tokens and report a loss of 0."""
    if settings.pack or not settings.mask_prompt:
        return
    if all(example_arrays(example, settings.max_length)[1].sum() == 0 for example in examples):
        longest = max(prompt for _, prompt in examples)
        raise MlxsmallError(f"{data}: nothing to train on: with --max-length {settings.max_length} every row is "
                            f"prompt (chat template included; the longest is {longest} tokens); raise --max-length "
                            "or pass --no-mask-prompt")


def finetune(model: str, data: str, output_dir, settings: FinetuneSettings, *,
             resume: bool = False, force: bool = False, records=None) -> TrainResult:
    """``records``: ``(train, valid)`` from ``check_finetune_data`` (read otherwise, and checked
    before the model loads)."""
    records = records or check_finetune_data(data, seed=settings.train.seed)
    model_dir = resolve_model_path(model)
    output_dir = Path(output_dir)
    group = mx.distributed.init()
    resume_from = ckpt.prepare_run_directory(output_dir, resume=resume, force=force,
                                             rank=group.rank())

    mx.random.seed(settings.train.seed)  # adapter initialisation
    net, config, adapter_config = prepare_model(model_dir, settings)
    tokenizer = load_tokenizer(model_dir)
    train_examples, valid_examples = load_finetune_data(
        data, tokenizer, mask_prompt=settings.mask_prompt, seed=settings.train.seed, records=records)
    check_something_to_learn(train_examples, settings, data)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train_stream = BatchStream(train_examples, batch_size=settings.train.batch_size,
                               max_length=settings.max_length, pack=settings.pack,
                               seed=settings.train.seed, pad_id=pad_id)
    valid_stream = None
    if valid_examples:
        valid_batch = min(settings.train.batch_size, len(valid_examples))
        valid_batch -= valid_batch % group.size()
        if valid_batch > 0:
            valid_stream = BatchStream(valid_examples, batch_size=valid_batch,
                                       max_length=settings.max_length, pad_id=pad_id, shuffle=False)

    # Absolute: `fuse` may run from another directory.
    base_model = str(Path(model_dir).resolve())
    method_settings = {k: v for k, v in asdict(settings).items() if k != "train"}
    settings.train.extra = {**method_settings, "base_model": base_model, "data": str(data)}
    trainer = Trainer(net, train_stream, settings.train, valid_stream=valid_stream,
                      output_dir=output_dir, group=group)
    if resume_from is not None:  # before adapter_config.json is rewritten with new settings
        trainer.check_resume(resume_from)
    adapter_config.update(base_model=base_model, data=str(data), settings=method_settings)
    if group.rank() == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        if settings.method != "full":
            ckpt.write_json_atomic(output_dir / adapter_lib.CONFIG_FILE, adapter_config)
    result = trainer.train(resume_from=resume_from)
    if group.rank() == 0:
        if settings.method == "full":
            result.model_dir = save_model(output_dir / "model", net, config,
                                          tokenizer_src_dir=model_dir, overwrite=True)
        else:
            result.adapter_dir = adapter_lib.save_adapters(output_dir, net, adapter_config)
    return result
