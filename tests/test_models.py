"""Our models against independent references, to fp32 tolerance.

- plain / GQA / tied and untied heads / MobiLlama (FFN copied per layer) /
  layer sharing with ``own`` KV (blocks duplicated in order): the same weights
  expanded into mlx-lm's llama;
- layer sharing with ``shared`` KV: a plain numpy forward written here;
- incremental decoding with the cache equals the full forward, token by token.
"""

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlxsmall.llama_expand import to_mlx_lm_llama
from mlxsmall.loading import build_model

ATOL = 2e-4

CASES = {
    "mobilellm-gqa-shared-embedding": ("mobilellm", {}),
    "mobilellm-untied-head": ("mobilellm", {"share_embedding": False}),
    "mobilellm-layer-sharing-own": ("mobilellm-ls", {"layer_sharing_kv": "own"}),
    "mobilellm-layer-sharing-shared": ("mobilellm-ls", {}),
    "mobillama-shared-ffn": ("mobillama", {}),
    "mobillama-shared-ffn-bogus-kv-heads": ("mobillama", {"num_key_value_heads": 2}),
    "mobillama-1b-per-layer-ffn": ("mobillama-1b", {}),
    "llama-tied-theta-1e5": ("llama", {}),
}


def scaled_random_model(tiny_config, arch, seed=0, **overrides):
    """A tiny model with weights large enough that every path matters."""
    mx.random.seed(seed)
    config = tiny_config(arch, **overrides)
    model = build_model(config)
    params = tree_flatten(model.parameters())
    model.load_weights(
        [(k, (mx.random.normal(v.shape) * (0.3 if "norm" not in k else 0.1) + (1.0 if "norm" in k else 0.0)))
         for k, v in params]
    )
    mx.eval(model.parameters())
    return model, config


def tokens(n=12, seed=1, vocab=300):
    rng = np.random.default_rng(seed)
    return mx.array(rng.integers(0, vocab, size=(1, n)))


@pytest.mark.parametrize("case", [c for c in CASES if c != "mobilellm-layer-sharing-shared"])
def test_logits_equal_expanded_mlx_lm_llama(tiny_config, case):
    arch, overrides = CASES[case]
    model, _ = scaled_random_model(tiny_config, arch, **overrides)
    reference = to_mlx_lm_llama(model)
    x = tokens()
    ours, theirs = model(x), reference(x)
    assert ours.shape == (1, 12, model.args.vocab_size)
    np.testing.assert_allclose(np.array(ours), np.array(theirs), atol=ATOL, rtol=1e-4)


def test_mobillama_holds_one_ffn(tiny_config):
    model, _ = scaled_random_model(tiny_config, "mobillama")
    keys = [k for k, _ in tree_flatten(model.parameters())]
    assert sum("mlp" in k for k in keys) == 3  # gate, up, down: once
    assert all(not k.startswith("model.layers.") or "mlp" not in k for k in keys)
    reference = to_mlx_lm_llama(model)
    assert sum(".mlp." in k for k, _ in tree_flatten(reference.parameters())) == 3 * len(model.layers)


# ---------------------------------------------------------------- numpy reference


def rms_norm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rope(x, positions, theta):
    # HF rotate_half convention; x: (heads, L, head_dim)
    d = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    angles = positions[:, None] * inv[None, :]
    cos, sin = np.cos(angles), np.sin(angles)
    cos, sin = np.concatenate([cos, cos], -1), np.concatenate([sin, sin], -1)
    half = d // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


def attend(q, k, v):
    # q: (H, L, D), k/v: (KV, L, D) with GQA repeat
    repeat = q.shape[0] // k.shape[0]
    k, v = np.repeat(k, repeat, 0), np.repeat(v, repeat, 0)
    scores = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1])
    L = q.shape[1]
    scores = np.where(np.tril(np.ones((L, L), bool)), scores, -np.inf)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    return (scores / scores.sum(-1, keepdims=True)) @ v


def numpy_layer_shared_kv_forward(weights, config, ids):
    """MobileLLM layer sharing as the released weights compute it (SPEC.md):
    each block runs twice; the second run attends to the first run's K/V."""
    W = {k: np.array(v, dtype=np.float64) for k, v in weights.items()}
    H, KV = config["num_attention_heads"], config["num_key_value_heads"]
    D = config["hidden_size"] // H
    eps, theta = config["rms_norm_eps"], config["rope_theta"]
    x = W["model.embed_tokens.weight"][ids]
    L = len(ids)
    pos = np.arange(L, dtype=np.float64)

    def heads(t, n):
        return t.reshape(L, n, D).transpose(1, 0, 2)

    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        kv = None
        for _ in range(2):
            h = rms_norm(x, W[p + "input_layernorm.weight"], eps)
            q = rope(heads(h @ W[p + "self_attn.q_proj.weight"].T, H), pos, theta)
            if kv is None:
                k = rope(heads(h @ W[p + "self_attn.k_proj.weight"].T, KV), pos, theta)
                v = heads(h @ W[p + "self_attn.v_proj.weight"].T, KV)
                kv = (k, v)
            o = attend(q, *kv).transpose(1, 0, 2).reshape(L, H * D)
            x = x + o @ W[p + "self_attn.o_proj.weight"].T
            h = rms_norm(x, W[p + "post_attention_layernorm.weight"], eps)
            gate, up = h @ W[p + "mlp.gate_proj.weight"].T, h @ W[p + "mlp.up_proj.weight"].T
            x = x + (gate / (1 + np.exp(-gate)) * up) @ W[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, W["model.norm.weight"], eps)
    return x @ W["model.embed_tokens.weight"].T


def test_layer_sharing_shared_kv_matches_numpy(tiny_config):
    model, config = scaled_random_model(tiny_config, "mobilellm-ls")
    x = tokens()
    ours = np.array(model(x))[0]
    expected = numpy_layer_shared_kv_forward(dict(tree_flatten(model.parameters())), config, np.array(x)[0])
    np.testing.assert_allclose(ours, expected, atol=ATOL, rtol=1e-4)


def test_shared_and_own_semantics_differ(tiny_config):
    shared, _ = scaled_random_model(tiny_config, "mobilellm-ls")
    own, _ = scaled_random_model(tiny_config, "mobilellm-ls", layer_sharing_kv="own")
    x = tokens()
    assert np.abs(np.array(shared(x)) - np.array(own(x))).max() > 1e-2
    assert len(shared.make_cache()) == 4 and len(own.make_cache()) == 8


# ---------------------------------------------------------------- incremental decoding


@pytest.mark.parametrize("case", list(CASES))
def test_cache_decode_equals_full_forward(tiny_config, case):
    arch, overrides = CASES[case]
    model, _ = scaled_random_model(tiny_config, arch, **overrides)
    x = tokens(10)
    full = np.array(model(x))
    cache = model.make_cache()
    steps = [np.array(model(x[:, :4], cache=cache))]  # prefill 4, then one by one
    for t in range(4, 10):
        steps.append(np.array(model(x[:, t : t + 1], cache=cache)))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=ATOL, rtol=1e-4)


def test_input_embeddings_replace_token_embeddings(tiny_config):
    model, _ = scaled_random_model(tiny_config, "mobillama")
    x = tokens(6)
    embeddings = model.model.embed_tokens(x)
    np.testing.assert_allclose(
        np.array(model(x, input_embeddings=embeddings)), np.array(model(x)), atol=1e-6
    )


@pytest.mark.parametrize("arch, config, unique, applied, slots", [
    # SPEC.md: MobileLLM-125M 124,635,456 parameters; MobiLlama-05B 534,865,920 unique,
    # 1,261,529,088 with the shared FFN counted once per block.
    ("mobilellm", dict(model_type="mobilellm", hidden_size=576, num_hidden_layers=30, intermediate_size=1536,
                       num_attention_heads=9, num_key_value_heads=3, vocab_size=32000, share_embedding=True),
     124_635_456, 124_635_456, 30),
    ("mobilellm-ls", dict(model_type="mobilellm", hidden_size=576, num_hidden_layers=30, intermediate_size=1536,
                          num_attention_heads=9, num_key_value_heads=3, vocab_size=32000, share_embedding=True,
                          layer_sharing=True, layer_sharing_kv="own"),
     124_635_456, 124_635_456, 60),
    ("mobillama", dict(model_type="mobillama", hidden_size=2048, num_hidden_layers=22, intermediate_size=5632,
                       num_attention_heads=32, num_key_value_heads=4, vocab_size=32000, rope_theta=500000.0),
     534_865_920, 1_261_529_088, 22),
])
def test_models_own_their_facts(arch, config, unique, applied, slots):
    """Parameter counts and cache slots come from the model (lazy arrays: nothing is allocated),
    checked against the published counts and against mlx-lm's own parameter count."""
    from mlx_lm.utils import get_total_parameters

    from mlxsmall.loading import build_model

    model = build_model(config)
    assert model.unique_parameters == unique == get_total_parameters(model)
    assert model.applied_parameters == applied
    assert model.cache_slots == len(model.make_cache()) == slots
    if arch == "mobillama":  # facts the reference code fixes whatever the config says
        assert model.args.num_key_value_heads == 32 and model.args.rope_theta == 10000.0
        assert not model.args.output_uses_embedding and model.sharing == "one FFN shared by all blocks"
