"""Synthetic checkpoints in the exact upstream layouts, and an independent numpy reference forward.

Writers use torch (tests only): `torch.save` produces the real zip-pickle `pytorch_model.bin`,
with the dtypes and storage aliasing the real checkpoints have. The reference forward is a plain
numpy float64 LLaMA written from the papers/SPEC (HF rotate_half RoPE, GQA, RMSNorm, SwiGLU,
MobileLLM's shared-KV layer sharing), reading the upstream tensors directly.
"""

import io
import json
from pathlib import Path

import numpy as np

SP_TEXT = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Small language models run on phones, tablets and laptops.",
    "MobiLlama shares one feed-forward network across all of its blocks.",
    "Hello! How are you today? I am fine, thank you.",
    "MobileLLM is a deep and thin model with embedding sharing.",
]

# Tiny shapes: a few hundred thousand parameters.
TINY = dict(hidden_size=64, num_hidden_layers=4, intermediate_size=160, num_attention_heads=4,
            head_dim=16, vocab_size=400)


def train_sentencepiece(directory: Path, vocab_size: int = 400) -> Path:
    """A real LLaMA-style SentencePiece BPE model (byte fallback, bos=1 eos=2 unk=0)."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SP_TEXT * 10), model_writer=buffer, vocab_size=vocab_size,
        model_type="bpe", bos_id=1, eos_id=2, unk_id=0, pad_id=-1, byte_fallback=True,
        character_coverage=1.0, normalization_rule_name="identity", minloglevel=2,
        # LLaMA's settings: keep whitespace runs, one piece per digit.
        remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.model").write_bytes(buffer.getvalue())
    return directory / "tokenizer.model"


def _mobilellm_tokenizer_config(directory: Path):
    # MobileLLM's real tokenizer_config.json has empty-string special tokens.
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "bos_token": "", "eos_token": "",
        "unk_token": "", "clean_up_tokenization_spaces": False, "legacy": False,
        "model_max_length": 1000000000000000019884624838656, "pad_token": None,
        "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
    }))


def _linear(torch, gen, out_dim, in_dim, dtype):
    return (torch.randn(out_dim, in_dim, generator=gen) * (in_dim ** -0.5)).to(dtype)


def _norm(torch, gen, dim, dtype):
    return (1.0 + 0.1 * torch.randn(dim, generator=gen)).to(dtype)


def _attention_tensors(torch, gen, prefix, hidden, heads, kv_heads, head_dim, dtype):
    return {
        f"{prefix}.self_attn.q_proj.weight": _linear(torch, gen, heads * head_dim, hidden, dtype),
        f"{prefix}.self_attn.k_proj.weight": _linear(torch, gen, kv_heads * head_dim, hidden, dtype),
        f"{prefix}.self_attn.v_proj.weight": _linear(torch, gen, kv_heads * head_dim, hidden, dtype),
        f"{prefix}.self_attn.o_proj.weight": _linear(torch, gen, hidden, heads * head_dim, dtype),
        f"{prefix}.input_layernorm.weight": _norm(torch, gen, hidden, dtype),
        f"{prefix}.post_attention_layernorm.weight": _norm(torch, gen, hidden, dtype),
    }


def _mlp_tensors(torch, gen, hidden, ffn, dtype):
    return {
        "gate_proj": _linear(torch, gen, ffn, hidden, dtype),
        "up_proj": _linear(torch, gen, ffn, hidden, dtype),
        "down_proj": _linear(torch, gen, hidden, ffn, dtype),
    }


def write_mobilellm(directory: Path, *, dtype="float16", layer_sharing=False, redundant_lm_head=False,
                    seed=0, kv_heads=2) -> Path:
    """MobileLLM-125M style (fp16, no lm_head) or 600M style (bf16, redundant lm_head)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    tdtype = getattr(torch, dtype)
    c = TINY
    state = {"model.embed_tokens.weight": (torch.randn(c["vocab_size"], c["hidden_size"], generator=gen) * 0.5).to(tdtype)}
    for i in range(c["num_hidden_layers"]):
        prefix = f"model.layers.{i}"
        state.update(_attention_tensors(torch, gen, prefix, c["hidden_size"], c["num_attention_heads"],
                                        kv_heads, c["head_dim"], tdtype))
        for name, tensor in _mlp_tensors(torch, gen, c["hidden_size"], c["intermediate_size"], tdtype).items():
            state[f"{prefix}.mlp.{name}.weight"] = tensor
    state["model.norm.weight"] = _norm(torch, gen, c["hidden_size"], tdtype)
    if redundant_lm_head:
        state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state, directory / "pytorch_model.bin")
    config = {
        "architectures": ["MobileLLMForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_mobilellm.MobileLLMConfig",
                     "AutoModelForCausalLM": "modeling_mobilellm.MobileLLMForCausalLM"},
        "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
        "head_dim": c["head_dim"], "hidden_act": "silu", "hidden_size": c["hidden_size"],
        "initializer_range": 0.02, "intermediate_size": c["intermediate_size"],
        "layer_sharing": layer_sharing, "max_position_embeddings": 2048, "mlp_bias": False,
        "model_type": "mobilellm", "num_attention_heads": c["num_attention_heads"],
        "num_hidden_layers": c["num_hidden_layers"], "num_key_value_heads": kv_heads,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0,
        "share_embedding": True, "tie_word_embeddings": False, "torch_dtype": dtype,
        "transformers_version": "4.41.2", "use_cache": True, "vocab_size": c["vocab_size"],
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    train_sentencepiece(directory, c["vocab_size"])
    _mobilellm_tokenizer_config(directory)
    return directory


def write_mobillama(directory: Path, *, shared=True, dtype="float32", differ_at=None, seed=1,
                    chat=False) -> Path:
    """MobiLlama-05B style (one MLP object shared by every layer, so `torch.save` writes each
    layer's `mlp.*` as views of ONE storage) or 1B style (per-layer MLPs). `differ_at=i` makes
    layer i's copy different (a damaged shared checkpoint)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    tdtype = getattr(torch, dtype)
    c = TINY
    heads = c["num_attention_heads"]
    state = {"model.embed_tokens.weight": (torch.randn(c["vocab_size"], c["hidden_size"], generator=gen) * 0.5).to(tdtype)}
    shared_mlp = _mlp_tensors(torch, gen, c["hidden_size"], c["intermediate_size"], tdtype)
    for i in range(c["num_hidden_layers"]):
        prefix = f"model.layers.{i}"
        state.update(_attention_tensors(torch, gen, prefix, c["hidden_size"], heads, heads, c["head_dim"], tdtype))
        state[f"{prefix}.self_attn.rotary_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, c["head_dim"], 2).float() / c["head_dim"]))
        mlp = shared_mlp if shared else _mlp_tensors(torch, gen, c["hidden_size"], c["intermediate_size"], tdtype)
        for name, tensor in mlp.items():
            if differ_at == i:
                tensor = tensor.clone()
                tensor[0, 0] += 1.0
            state[f"{prefix}.mlp.{name}.weight"] = tensor  # the same tensor object: aliased storage
    state["model.norm.weight"] = _norm(torch, gen, c["hidden_size"], tdtype)
    state["lm_head.weight"] = _linear(torch, gen, c["vocab_size"], c["hidden_size"], tdtype)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state, directory / "pytorch_model.bin")
    config = {
        "_name_or_path": "MBZUAI/MobiLlama-05B" + ("-Chat" if chat else ""),
        "architectures": ["MobiLlamaForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_mobillama.MobiLlamaConfig",
                     "AutoModelForCausalLM": "modelling_mobillama.MobiLlamaForCausalLM"},
        "attention_bias": False, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
        "hidden_size": c["hidden_size"], "initializer_range": 0.02,
        "intermediate_size": c["intermediate_size"], "max_position_embeddings": 2048,
        "model_type": "llama", "num_attention_heads": heads,
        "num_hidden_layers": c["num_hidden_layers"],
        "num_key_value_heads": 1,  # bogus, as upstream: attention is full multi-head
        "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "torch_dtype": dtype, "transformers_version": "4.36.2",
        "use_cache": True, "vocab_size": c["vocab_size"],
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    train_sentencepiece(directory, c["vocab_size"])
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "pad_token": None, "legacy": False, "model_max_length": 2048,
        "tokenizer_class": "LlamaTokenizer",
    }))
    return directory


def write_llama_gguf(path, tokenizer, *, matrix_types, seed, context, rope_base, eps=1e-5,
                     layers=2, hidden=64, heads=4, kv_heads=2, ffn=128) -> dict:
    """A tiny llama GGUF written by llama.cpp's own `gguf` package: `tokenizer(writer)` adds the
    tokenizer keys and returns the vocabulary size; block matrices are quantized with
    `matrix_types[name]` (Q8_0 embedding, F32 norms). Returns {tensor name: float64 weights as
    stored, dequantized with that package}."""
    import gguf

    f32, q8 = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.Q8_0
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(context)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(eps)
    writer.add_rope_freq_base(rope_base)
    writer.add_rope_dimension_count(hidden // heads)
    vocab_size = tokenizer(writer)
    stored = {}

    def add(name, value, qtype=f32):
        value = value.astype(np.float32)
        if qtype == f32:
            writer.add_tensor(name, value)
            stored[name] = value
        else:
            data = gguf.quants.quantize(value, qtype)
            writer.add_tensor(name, data, raw_dtype=qtype)
            stored[name] = gguf.quants.dequantize(data, qtype).reshape(value.shape)

    head_dim = hidden // heads
    shapes = {"attn_q": (heads * head_dim, hidden), "attn_k": (kv_heads * head_dim, hidden),
              "attn_v": (kv_heads * head_dim, hidden), "attn_output": (hidden, heads * head_dim),
              "ffn_gate": (ffn, hidden), "ffn_up": (ffn, hidden), "ffn_down": (hidden, ffn)}
    add("token_embd.weight", rng.standard_normal((vocab_size, hidden)) * 0.5, q8)
    for i in range(layers):
        for name, shape in shapes.items():
            add(f"blk.{i}.{name}.weight", rng.standard_normal(shape) * shape[1] ** -0.5, matrix_types[name])
        add(f"blk.{i}.attn_norm.weight", 1 + 0.1 * rng.standard_normal(hidden))
        add(f"blk.{i}.ffn_norm.weight", 1 + 0.1 * rng.standard_normal(hidden))
    add("output_norm.weight", 1 + 0.1 * rng.standard_normal(hidden))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {k[: -len(".weight")]: v.astype(np.float64) for k, v in stored.items()}


def source_tensors(directory: Path) -> dict:
    """The checkpoint's tensors as float64 numpy, read with torch (independent of our reader)."""
    import torch

    state = torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    return {k: v.to(torch.float64).numpy() for k, v in state.items()}


# ------------------------------------------------------------------ numpy reference forward

def _rms_norm(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def _rope(x, theta):
    # HF rotate_half convention: pairs (i, i + d/2). x: (heads, T, d)
    d = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    angles = np.arange(x.shape[1])[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(angles)] * 2, axis=-1)
    sin = np.concatenate([np.sin(angles)] * 2, axis=-1)
    half = d // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def _project_kv(t, prefix, x, kv_heads, head_dim, theta):
    T = x.shape[0]
    k = (x @ t[f"{prefix}.self_attn.k_proj.weight"].T).reshape(T, kv_heads, head_dim).transpose(1, 0, 2)
    v = (x @ t[f"{prefix}.self_attn.v_proj.weight"].T).reshape(T, kv_heads, head_dim).transpose(1, 0, 2)
    return _rope(k, theta), v


def _attend(t, prefix, x, k, v, heads, head_dim, theta):
    T = x.shape[0]
    q = _rope((x @ t[f"{prefix}.self_attn.q_proj.weight"].T).reshape(T, heads, head_dim).transpose(1, 0, 2), theta)
    groups = heads // k.shape[0]
    k, v = np.repeat(k, groups, axis=0), np.repeat(v, groups, axis=0)
    scores = q @ k.transpose(0, 2, 1) / np.sqrt(head_dim)
    scores = scores + np.triu(np.full((T, T), -np.inf), 1)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    out = (scores / scores.sum(-1, keepdims=True)) @ v
    return out.transpose(1, 0, 2).reshape(T, -1) @ t[f"{prefix}.self_attn.o_proj.weight"].T


def _mlp(t, prefix, x):
    gate = x @ t[f"{prefix}.mlp.gate_proj.weight"].T
    up = x @ t[f"{prefix}.mlp.up_proj.weight"].T
    return (gate / (1 + np.exp(-gate)) * up) @ t[f"{prefix}.mlp.down_proj.weight"].T


def reference_logits(tensors: dict, config: dict, tokens) -> np.ndarray:
    """Logits (T, vocab) of an upstream-layout checkpoint, from its config.json fields.

    MobileLLM layer sharing: each block runs twice; the second run uses its own queries and the
    first run's keys/values (SPEC.md). MobiLlama: each layer's stored MLP copy; full multi-head.
    """
    eps = config.get("rms_norm_eps", 1e-5)
    theta = config.get("rope_theta", 10000.0)
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    kv_heads = tensors["model.layers.0.self_attn.k_proj.weight"].shape[0] // head_dim
    x = tensors["model.embed_tokens.weight"][np.asarray(tokens)]
    for i in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{i}"
        kv = None
        for _ in range(2 if config.get("layer_sharing") else 1):
            h = _rms_norm(x, tensors[f"{prefix}.input_layernorm.weight"], eps)
            if kv is None:
                kv = _project_kv(tensors, prefix, h, kv_heads, head_dim, theta)
            x = x + _attend(tensors, prefix, h, *kv, heads, head_dim, theta)
            x = x + _mlp(tensors, prefix, _rms_norm(x, tensors[f"{prefix}.post_attention_layernorm.weight"], eps))
    x = _rms_norm(x, tensors["model.norm.weight"], eps)
    if config.get("share_embedding") or config.get("tie_word_embeddings") or "lm_head.weight" not in tensors:
        return x @ tensors["model.embed_tokens.weight"].T
    return x @ tensors["lm_head.weight"].T


# ------------------------------------------------------------------ llama.cpp-layout reference

def _interleaved_rope(x, theta):
    # llama.cpp's convention for GGUF's (permuted) Q/K rows: rotate pairs (2i, 2i+1). x: (heads, T, d)
    d = x.shape[-1]
    angles = np.arange(x.shape[1])[:, None] * (1.0 / theta ** (np.arange(0, d, 2) / d))[None]
    cos, sin = np.cos(angles), np.sin(angles)
    out = np.empty_like(x)
    out[..., 0::2] = x[..., 0::2] * cos - x[..., 1::2] * sin
    out[..., 1::2] = x[..., 0::2] * sin + x[..., 1::2] * cos
    return out


def gguf_reference_logits(weight, *, layers, heads, kv_heads, theta, eps, tokens):
    """A plain numpy forward over dequantized GGUF tensors in llama.cpp's layout (no un-permute).

    `weight(name)` returns the dequantized float tensor of a GGUF tensor name ("blk.0.attn_q").
    """
    embedding = weight("token_embd")
    x = embedding[np.asarray(tokens)]
    T, head_dim = len(tokens), embedding.shape[1] // heads
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(layers):
        w = lambda name: weight(f"blk.{i}.{name}")  # noqa: E731
        h = _rms_norm(x, w("attn_norm"), eps)
        q = _interleaved_rope((h @ w("attn_q").T).reshape(T, heads, head_dim).transpose(1, 0, 2), theta)
        k = _interleaved_rope((h @ w("attn_k").T).reshape(T, kv_heads, head_dim).transpose(1, 0, 2), theta)
        v = (h @ w("attn_v").T).reshape(T, kv_heads, head_dim).transpose(1, 0, 2)
        k, v = np.repeat(k, heads // kv_heads, 0), np.repeat(v, heads // kv_heads, 0)
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(head_dim) + mask
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        attention = (scores / scores.sum(-1, keepdims=True)) @ v
        x = x + attention.transpose(1, 0, 2).reshape(T, -1) @ w("attn_output").T
        h = _rms_norm(x, w("ffn_norm"), eps)
        gate = h @ w("ffn_gate").T
        x = x + (gate / (1 + np.exp(-gate)) * (h @ w("ffn_up").T)) @ w("ffn_down").T
    return _rms_norm(x, weight("output_norm"), eps) @ embedding.T
