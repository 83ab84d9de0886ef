"""Shared fixtures: a tiny offline tokenizer and tiny random models saved in our format."""

import json
import os
from pathlib import Path

import mlxsmall  # noqa: F401  (preloads OpenBLAS before mlx is imported)
import mlx.core as mx
import pytest

RUN_SLOW_ENV = "MLXSMALL_RUN_SLOW"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true",
                     help=f"also run tests marked slow (CI does; so does {RUN_SLOW_ENV}=1)")


def pytest_collection_modifyitems(config, items):
    # Skipped, not deselected: a run of only slow tests reports them and never exits 5.
    if config.getoption("--runslow") or os.environ.get(RUN_SLOW_ENV, "") not in ("", "0"):
        return
    skip = pytest.mark.skip(reason=f"slow: run with --runslow or {RUN_SLOW_ENV}=1 (CI runs them)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def user_cache(tmp_path_factory) -> Path:
    """One XDG cache for the whole session: the default model is converted into it once."""
    return tmp_path_factory.mktemp("xdg-cache")


CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TRAINING_TEXT = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Small language models run on phones, tablets and laptops.",
    "MobileLLM is deep and thin; MobiLlama shares one feed-forward network.",
    "Quantization stores weights in fewer bits: 8, 6, 4, 3 or 2.",
    "Hello! How are you today? I am fine, thank you.",
    "def add(a, b):\n    return a + b\n",
    "SELECT name FROM users WHERE age > 30;",
]

TINY_VOCAB = 320  # byte-level BPE: 256 bytes + merges + specials, padded up in configs


def build_tiny_tokenizer(directory: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB - 8,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TRAINING_TEXT * 4, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": None,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "unk_token": None,
                "chat_template": CHATML_TEMPLATE,
                "model_max_length": 2048,
            }
        )
    )
    return directory


@pytest.fixture(scope="session")
def tiny_corpus():
    """The few sentences the tiny tokenizer was trained on (for tiny training runs)."""
    return list(TRAINING_TEXT)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def tiny_config_dict(arch: str, **overrides) -> dict:
    """A few-hundred-thousand-parameter config for ``arch``.

    arch: "mobilellm" (GQA, shared embedding), "mobilellm-ls" (layer sharing),
    "mobillama" (shared FFN), "mobillama-1b" (per-layer FFN), "llama" (tied, SmolLM2-like).
    """
    base = dict(
        hidden_size=64,
        num_hidden_layers=4,
        intermediate_size=160,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=TINY_VOCAB,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        max_position_embeddings=512,
        eos_token_id=2,
    )
    if arch == "mobilellm":
        base.update(model_type="mobilellm", share_embedding=True, tie_word_embeddings=False)
    elif arch == "mobilellm-ls":
        base.update(model_type="mobilellm", share_embedding=True, layer_sharing=True)
    elif arch == "mobillama":
        base.update(model_type="mobillama", shared_ffn=True, num_key_value_heads=4)
    elif arch == "mobillama-1b":
        base.update(model_type="mobillama", shared_ffn=False, num_key_value_heads=4)
    elif arch == "llama":
        base.update(model_type="llama", tie_word_embeddings=True, rope_theta=100000.0)
    else:
        raise ValueError(arch)
    base.update(overrides)
    return base


@pytest.fixture
def tiny_config():
    return tiny_config_dict


@pytest.fixture
def make_tiny_model(tmp_path, tiny_tokenizer_dir):
    """``make_tiny_model(arch, path=None, bits=None, seed=0, **overrides) -> Path``.

    Saves a tiny random model (with the tiny tokenizer) in our format.
    """
    from mlxsmall.loading import build_model, save_model
    from mlxsmall.quantize import quantize_model

    counter = iter(range(1000))

    def make(arch="mobilellm", path=None, bits=None, group_size=32, seed=0, **overrides):
        config = tiny_config_dict(arch, **overrides)
        mx.random.seed(seed)
        model = build_model(config)
        # Larger-than-default init so logits differ clearly between tokens.
        mx.eval(model.parameters())
        if bits:
            config = quantize_model(model, config, bits=bits, group_size=group_size)
        path = Path(path) if path else tmp_path / f"{arch}-{next(counter)}"
        save_model(path, model, config, tokenizer_src_dir=tiny_tokenizer_dir)
        return path

    return make
