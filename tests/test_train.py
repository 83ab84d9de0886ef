"""Finetuning on tiny random models: loss goes down, LoRA touches only adapters,
shared weights keep one adapter, QLoRA on a 4-bit base, fuse == base + adapter,
pretraining and distillation."""

import json

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlxsmall.errors import MlxsmallError
from mlxsmall.train.finetune import FinetuneSettings, finetune
from mlxsmall.train.trainer import TrainConfig

FACTS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Where do small models run?", "Small language models run on phones."),
    ("What is MobiLlama?", "MobiLlama shares one feed-forward network."),
    ("Say hello.", "Hello! How are you today?"),
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("data")
    records = [{"prompt": q, "completion": a} for q, a in FACTS] * 4
    (directory / "train.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    (directory / "valid.jsonl").write_text("\n".join(json.dumps(r) for r in records[:4]))
    return directory


def settings(method="lora", steps=12, **kwargs):
    train = TrainConfig(steps=steps, batch_size=4, learning_rate=kwargs.pop("learning_rate", 1e-2),
                        warmup_steps=1, eval_every=0, save_every=0, val_batches=1)
    return FinetuneSettings(method=method, rank=4, max_length=64, train=train, **kwargs)


def weights(model):
    return {k: np.array(v) for k, v in tree_flatten(model.parameters())}


def logits_of(model, tokens):
    return np.array(model(mx.array([tokens])).astype(mx.float32))


def test_lora_on_shared_ffn_lowers_loss_and_touches_only_adapters(make_tiny_model, data_dir, tmp_path):
    from mlxsmall.loading import load_model
    from mlxsmall.train.adapters import load_adapters

    base = make_tiny_model("mobillama")
    result = finetune(str(base), str(data_dir), tmp_path / "out", settings())
    assert result.final_val_loss < result.initial_val_loss - 0.3

    saved = mx.load(str(tmp_path / "out" / "adapters.safetensors"))
    # ONE adapter on the shared FFN, none per layer
    assert any(k.startswith("model.shared_mlp.gate_proj.lora_") for k in saved)
    assert not any(".mlp." in k for k in saved)
    assert all(k.endswith(("lora_a", "lora_b")) for k in saved)

    # the base weights on disk are untouched, and loading the adapters changes the output
    model, _ = load_model(base)
    before = weights(model)
    tokens = [1, 5, 9, 14, 3]
    plain = logits_of(model, tokens)
    load_adapters(model, tmp_path / "out")
    after = {k.replace(".linear.", "."): v for k, v in weights(model).items() if "lora_" not in k}
    assert after.keys() == before.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert not np.allclose(plain, logits_of(model, tokens), atol=1e-4)


def test_fuse_gives_the_same_logits_as_base_plus_adapter(make_tiny_model, data_dir, tmp_path):
    from mlxsmall.loading import load_model
    from mlxsmall.train.adapters import load_adapters
    from mlxsmall.train.fuse import fuse

    base = make_tiny_model("mobilellm-ls")
    finetune(str(base), str(data_dir), tmp_path / "out", settings(method="dora", steps=4))
    model, _ = load_model(base)
    load_adapters(model, tmp_path / "out")
    tokens = [1, 7, 20, 33, 2, 5]
    expected = logits_of(model, tokens)
    fused_dir = fuse(tmp_path / "out", tmp_path / "fused")
    fused, config = load_model(fused_dir)
    assert config.get("layer_sharing") is True
    np.testing.assert_allclose(logits_of(fused, tokens), expected, atol=2e-4, rtol=1e-4)


def test_per_layer_adapters_unshare_the_ffn_when_fused(make_tiny_model, data_dir, tmp_path):
    from mlxsmall.loading import load_model
    from mlxsmall.train.adapters import load_adapters
    from mlxsmall.train.fuse import fuse

    base = make_tiny_model("mobillama")
    finetune(str(base), str(data_dir), tmp_path / "out",
             settings(steps=3, per_layer_adapters=True, keys=["gate_proj", "down_proj"]))
    saved = mx.load(str(tmp_path / "out" / "adapters.safetensors"))
    assert {k.split(".mlp.")[0] for k in saved} == {f"model.layers.{i}" for i in range(4)}
    model, _ = load_model(base)
    load_adapters(model, tmp_path / "out")
    tokens = [1, 4, 8, 15, 16]
    expected = logits_of(model, tokens)
    fused, config = load_model(fuse(tmp_path / "out", tmp_path / "fused"))
    assert config["shared_ffn"] is False
    np.testing.assert_allclose(logits_of(fused, tokens), expected, atol=2e-4, rtol=1e-4)


def test_qlora_trains_adapters_on_a_4bit_base(make_tiny_model, data_dir, tmp_path):
    import mlx.nn as nn

    from mlxsmall.loading import load_model
    from mlxsmall.train.adapters import load_adapters
    from mlxsmall.train.finetune import prepare_model
    from mlxsmall.train.fuse import fuse

    base = make_tiny_model("llama", bits=4, group_size=32)
    result = finetune(str(base), str(data_dir), tmp_path / "out", settings(method="qlora", steps=3))
    assert result.final_val_loss < result.initial_val_loss
    model, config, _ = prepare_model(base, settings(method="qlora"))
    quantized = [m for _, m in model.named_modules() if isinstance(m, nn.QuantizedLinear)]
    assert quantized and config["quantization"]["bits"] == 4
    # the fused model stays 4-bit and matches base + adapter up to re-quantization
    fused, fused_config = load_model(fuse(tmp_path / "out", tmp_path / "fused"))
    assert fused_config["quantization"]["bits"] == 4
    reference, _ = load_model(base)
    load_adapters(reference, tmp_path / "out")
    tokens = [1, 2, 3, 4, 5]
    difference = np.abs(logits_of(fused, tokens) - logits_of(reference, tokens)).max()
    assert difference < 0.5 * np.abs(logits_of(reference, tokens)).max()


def test_full_finetune_writes_a_model_and_refuses_quantized_bases(make_tiny_model, data_dir, tmp_path):
    from mlxsmall.loading import load_model

    base = make_tiny_model("mobilellm")
    result = finetune(str(base), str(data_dir), tmp_path / "out",
                      settings(method="full", steps=6, learning_rate=3e-3))
    assert result.final_val_loss < result.initial_val_loss
    model, _ = load_model(result.model_dir)
    original, _ = load_model(base)
    assert not np.array_equal(np.array(model.model.norm.weight), np.array(original.model.norm.weight))
    with pytest.raises(MlxsmallError, match="quantized"):
        finetune(str(make_tiny_model("mobilellm", bits=4)), str(data_dir), tmp_path / "q",
                 settings(method="full"))
    with pytest.raises(MlxsmallError, match="--resume"):
        finetune(str(base), str(data_dir), tmp_path / "out", settings(method="full"))


def test_adafactor_grad_accumulation_and_checkpointing(make_tiny_model, data_dir, tmp_path):
    s = settings(steps=4)
    s.train.optimizer = "adafactor"
    s.train.grad_accumulation = 2
    s.train.grad_checkpoint = True
    s.train.save_every = 1
    s.train.keep_checkpoints = 2
    result = finetune(str(make_tiny_model("mobillama")), str(data_dir), tmp_path / "out", s)
    assert np.isfinite(result.final_val_loss)
    kept = sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir())
    assert kept == ["step-0000003", "step-0000004"]
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if r["phase"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(r["tokens_per_second"] > 0 and r["peak_memory_gb"] > 0 for r in steps)


def test_grad_checkpointing_gives_the_same_weights(make_tiny_model, data_dir, tmp_path):
    base = make_tiny_model("mobillama")  # the shared FFN is handed to each block as an argument
    saved = {}
    for checkpointing in (False, True):
        s = settings(steps=2)
        s.train.grad_checkpoint = checkpointing
        finetune(str(base), str(data_dir), tmp_path / str(checkpointing), s)
        saved[checkpointing] = mx.load(str(tmp_path / str(checkpointing) / "adapters.safetensors"))
    for key in saved[False]:
        np.testing.assert_allclose(np.array(saved[True][key]), np.array(saved[False][key]), atol=1e-6)
    s = settings(steps=1)
    s.train.grad_checkpoint = True
    with pytest.raises(MlxsmallError, match="grad-checkpoint"):
        finetune(str(make_tiny_model("mobilellm-ls")), str(data_dir), tmp_path / "ls", s)


def test_pretrain_tiny_with_distillation(tiny_tokenizer_dir, tiny_corpus, make_tiny_model, tmp_path):
    from mlxsmall.loading import load_model
    from mlxsmall.train.pretrain import PretrainSettings, pretrain

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": " ".join(tiny_corpus[i:] + tiny_corpus[:i])})
                                for i in range(7)))
    train = TrainConfig(steps=8, batch_size=2, learning_rate=3e-3, warmup_steps=1, val_batches=1)
    teacher = make_tiny_model("llama")
    result = pretrain([str(corpus)], str(tiny_tokenizer_dir), tmp_path / "run",
                       PretrainSettings(arch="mobilellm", size="tiny", layer_sharing=True,
                                        max_length=32, teacher=str(teacher), train=train,
                                        overrides=dict(num_hidden_layers=2)))
    assert result.final_val_loss < result.initial_val_loss
    model, config = load_model(result.model_dir)
    assert config["layer_sharing"] is True and config["vocab_size"] == 320


def test_llama_sentencepiece_tokenizer_for_pretraining(tiny_corpus, tmp_path):
    import sentencepiece

    from mlxsmall.train.pretrain import load_text_tokenizer, model_config

    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(tiny_corpus * 20), model_prefix=str(tmp_path / "tokenizer"),
        vocab_size=100, bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
    tokenizer = load_text_tokenizer(str(tmp_path))
    assert tokenizer.vocab_size == 100 and tokenizer.eos_token_id == 2
    assert tokenizer.encode("hello world")[0] == 1
    config = model_config("mobilellm", "125m", 32000)
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_key_value_heads"]) == (30, 576, 3)
    with pytest.raises(MlxsmallError, match="unknown --config"):
        model_config("mobillama", "125m", 32000)


def test_cli_finetune_then_fuse(make_tiny_model, data_dir, tmp_path, capsys):
    from mlxsmall.cli import main

    base = make_tiny_model("llama")
    out = tmp_path / "adapters"
    assert main(["finetune", str(base), "--data", str(data_dir), "-o", str(out), "--steps", "2",
                 "--batch-size", "2", "--max-length", "32", "--quiet"]) == 0
    assert "validation loss" in capsys.readouterr().err
    assert main(["finetune", str(base), "--data", str(data_dir), "-o", str(out), "--steps", "2"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["fuse", "--adapters", str(out), "-o", str(tmp_path / "fused")]) == 0
    assert (tmp_path / "fused" / "config.json").exists()


def test_prompts_longer_than_max_length_are_refused(make_tiny_model, data_dir, tmp_path):
    """Every row all prompt trained on 0 tokens and reported a loss of 0.0000; now one line."""
    base = make_tiny_model("llama")
    short = FinetuneSettings(method="lora", rank=4, max_length=4, train=settings().train)
    with pytest.raises(MlxsmallError, match="nothing to train on: with --max-length 4"):
        finetune(str(base), str(data_dir), tmp_path / "out", short)
