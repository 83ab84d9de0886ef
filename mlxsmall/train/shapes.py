"""Model shapes for `mlxsmall pretrain --config` (plain data: the command checks --config
without importing MLX)."""

# Paper shapes (SPEC.md) and scaled-down deep-thin ones for laptops and tests.
# vocab_size comes from the tokenizer.
CONFIGS = {
    "mobilellm": {
        "tiny": dict(num_hidden_layers=12, hidden_size=128, num_attention_heads=4, num_key_value_heads=2, intermediate_size=352),
        "small": dict(num_hidden_layers=24, hidden_size=256, num_attention_heads=8, num_key_value_heads=4, intermediate_size=704),
        "125m": dict(num_hidden_layers=30, hidden_size=576, num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536),
        "350m": dict(num_hidden_layers=32, hidden_size=960, num_attention_heads=15, num_key_value_heads=5, intermediate_size=2560),
        "600m": dict(num_hidden_layers=40, hidden_size=1152, num_attention_heads=18, num_key_value_heads=6, intermediate_size=3072),
        "1b": dict(num_hidden_layers=54, hidden_size=1280, num_attention_heads=20, num_key_value_heads=5, intermediate_size=3584),
        "1.5b": dict(num_hidden_layers=54, hidden_size=1600, num_attention_heads=25, num_key_value_heads=5, intermediate_size=4352),
    },
    "mobillama": {
        "tiny": dict(num_hidden_layers=8, hidden_size=128, num_attention_heads=4, intermediate_size=352),
        "small": dict(num_hidden_layers=16, hidden_size=256, num_attention_heads=8, intermediate_size=704),
        "0.5b": dict(num_hidden_layers=22, hidden_size=2048, num_attention_heads=32, intermediate_size=5632),
        "0.8b": dict(num_hidden_layers=22, hidden_size=2560, num_attention_heads=32, intermediate_size=10240,
                     max_position_embeddings=2560),
    },
}
ARCH_DEFAULTS = {
    "mobilellm": dict(model_type="mobilellm", share_embedding=True, tie_word_embeddings=False,
                      rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=2048),
    "mobillama": dict(model_type="mobillama", shared_ffn=True, rms_norm_eps=1e-5,
                      max_position_embeddings=2048),
}
