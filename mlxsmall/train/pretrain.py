"""Pretraining from scratch: deep-and-thin configs, an existing tokenizer,
packed text, and optional knowledge distillation from a teacher (logit KL)."""

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import mlx.core as mx
import mlx.nn as nn

from ..errors import MlxsmallError
from ..loading import build_model, save_model
from . import checkpoint as ckpt
from .data import BatchStream, load_text_corpus
from .shapes import ARCH_DEFAULTS, CONFIGS
from .trainer import TrainConfig, Trainer, cross_entropy_loss

def model_config(arch: str, size: str, vocab_size: int, *, layer_sharing: bool = False,
                 **overrides) -> dict:
    if arch not in CONFIGS:
        raise MlxsmallError(f"unknown --arch {arch!r}; choose one of {', '.join(CONFIGS)}")
    if size not in CONFIGS[arch]:
        raise MlxsmallError(f"unknown --config {size!r} for {arch}; choose one of "
                            f"{', '.join(CONFIGS[arch])}")
    config = dict(ARCH_DEFAULTS[arch], **CONFIGS[arch][size], vocab_size=vocab_size)
    if arch == "mobillama":
        config["num_key_value_heads"] = config["num_attention_heads"]
    if layer_sharing:
        if arch != "mobilellm":
            raise MlxsmallError("--layer-sharing is a MobileLLM option")
        config["layer_sharing"] = True
    config.update(overrides)
    return config


class TextTokenizer:
    """What pretraining needs from a tokenizer: ``encode``, ``eos_token_id``,
    ``vocab_size`` and a way to save it next to the model."""

    def __init__(self, encode, eos_token_id, vocab_size, source_dir=None, name=""):
        self.encode = encode
        self.eos_token_id = eos_token_id
        self.vocab_size = vocab_size
        self.source_dir = source_dir
        self.name = name


def load_text_tokenizer(spec: str) -> TextTokenizer:
    """A tokenizer directory (HF tokenizer.json or LLaMA SentencePiece
    tokenizer.model) or ``tiktoken:ENCODING`` (e.g. tiktoken:gpt2)."""
    if spec.startswith("tiktoken:"):
        name = spec.split(":", 1)[1]
        try:
            import tiktoken

            encoding = tiktoken.get_encoding(name)
        except Exception as error:  # unknown name, or its BPE file cannot be fetched offline
            raise MlxsmallError(f"{spec}: cannot load tiktoken encoding ({error})") from None
        return TextTokenizer(encoding.encode_ordinary, encoding.eot_token, encoding.n_vocab,
                             name=spec)
    directory = Path(spec)
    if not directory.is_dir():
        raise MlxsmallError(f"{spec}: not a tokenizer directory (or use tiktoken:NAME)")
    if (directory / "tokenizer.model").exists() and not (directory / "tokenizer.json").exists():
        return sentencepiece_tokenizer(directory)
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    try:
        tokenizer = load_tokenizer(directory)
    except Exception as error:
        raise MlxsmallError(f"{directory}: cannot load the tokenizer ({error})") from None
    vocab = len(tokenizer._tokenizer)
    return TextTokenizer(tokenizer.encode, tokenizer.eos_token_id, vocab, source_dir=directory,
                         name=str(directory))


def sentencepiece_tokenizer(directory: Path) -> TextTokenizer:
    """A bare LLaMA SentencePiece ``tokenizer.model`` (MobileLLM/MobiLlama's: bos 1, eos 2)."""
    import sentencepiece

    try:
        processor = sentencepiece.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
    except (OSError, RuntimeError) as error:
        raise MlxsmallError(f"{directory / 'tokenizer.model'}: not a SentencePiece model ({error})") from None
    bos = processor.bos_id()

    def encode(text):
        ids = processor.encode(text)
        return [bos] + ids if bos >= 0 else ids

    eos = processor.eos_id()
    return TextTokenizer(encode, eos if eos >= 0 else None, processor.get_piece_size(),
                         source_dir=directory, name=str(directory))


def round_vocab(size: int, multiple: int = 64) -> int:
    return -(-size // multiple) * multiple


def distillation_loss(teacher, alpha: float, temperature: float):
    """``(1 - alpha) * CE + alpha * T^2 * KL(teacher || student)`` per target token."""

    def loss(model, inputs, targets, mask, normalizer):
        logits = model(inputs).astype(mx.float32)
        teacher_logits = mx.stop_gradient(teacher(inputs).astype(mx.float32))
        ce = nn.losses.cross_entropy(logits, targets)
        teacher_logprobs = nn.log_softmax(teacher_logits / temperature, axis=-1)
        student_logprobs = nn.log_softmax(logits / temperature, axis=-1)
        kl = (mx.exp(teacher_logprobs) * (teacher_logprobs - student_logprobs)).sum(axis=-1)
        per_token = (1 - alpha) * ce + alpha * temperature**2 * kl
        return (per_token * mask).sum() / normalizer

    return loss


@dataclass
class PretrainSettings:
    arch: str = "mobillama"
    size: str = "tiny"
    layer_sharing: bool = False
    max_length: int = 256
    teacher: Optional[str] = None
    distill_alpha: float = 0.5
    distill_temperature: float = 2.0
    overrides: dict = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)


def pretrain(corpus: Sequence[str], tokenizer_spec: str, output_dir, settings: PretrainSettings,
             *, resume: bool = False, force: bool = False):
    """Train a new model on ``corpus``; writes ``output_dir/model``."""
    output_dir = Path(output_dir)
    group = mx.distributed.init()
    resume_from = ckpt.prepare_run_directory(output_dir, resume=resume, force=force,
                                             rank=group.rank())
    tokenizer = load_text_tokenizer(tokenizer_spec)
    config = model_config(settings.arch, settings.size, round_vocab(tokenizer.vocab_size),
                          layer_sharing=settings.layer_sharing, **settings.overrides)
    if tokenizer.eos_token_id is not None:
        config["eos_token_id"] = tokenizer.eos_token_id
    mx.random.seed(settings.train.seed)
    model = build_model(config)
    mx.eval(model.parameters())

    loss_fn = cross_entropy_loss
    if settings.teacher:
        from ..hub import resolve_model_path
        from ..loading import load_model

        teacher, teacher_config = load_model(resolve_model_path(settings.teacher), dtype="float32",
                                             dequantize=True)
        if teacher_config["vocab_size"] < tokenizer.vocab_size:
            raise MlxsmallError(f"{settings.teacher}: teacher vocabulary ({teacher_config['vocab_size']}) "
                                f"is smaller than the tokenizer's ({tokenizer.vocab_size})")
        teacher.freeze()
        teacher.eval()
        config["vocab_size"] = teacher_config["vocab_size"]  # KL needs the same logit space
        mx.random.seed(settings.train.seed)
        model = build_model(config)
        mx.eval(model.parameters())
        loss_fn = distillation_loss(teacher, settings.distill_alpha, settings.distill_temperature)

    train_examples, valid_examples = load_text_corpus(corpus, tokenizer.encode, tokenizer.eos_token_id,
                                                      seed=settings.train.seed)
    train_stream = BatchStream(train_examples, batch_size=settings.train.batch_size,
                               max_length=settings.max_length, pack=True, seed=settings.train.seed)
    valid_stream = None
    if valid_examples:
        rows = BatchStream.count_packed_rows(valid_examples, settings.max_length)
        valid_batch = min(settings.train.batch_size, rows)
        valid_batch -= valid_batch % group.size()
        if valid_batch > 0:
            valid_stream = BatchStream(valid_examples, batch_size=valid_batch,
                                       max_length=settings.max_length, pack=True, shuffle=False)
    settings.train.extra = {"arch": settings.arch, "size": settings.size, "tokenizer": tokenizer.name}
    trainer = Trainer(model, train_stream, settings.train, valid_stream=valid_stream,
                      output_dir=output_dir, group=group, loss_fn=loss_fn)
    result = trainer.train(resume_from=resume_from)
    if group.rank() == 0:
        if tokenizer.source_dir is None:
            config["tokenizer"] = tokenizer.name  # tiktoken: no HF tokenizer files to copy
        result.model_dir = save_model(output_dir / "model", model, copy.deepcopy(config),
                                       tokenizer_src_dir=tokenizer.source_dir, overwrite=True)
    return result
