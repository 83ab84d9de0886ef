"""Cross-checks against transformers (torch, tests only): CLIP/SigLIP vision towers and a whole LLaVA model."""

import mlxsmall  # noqa: F401
import mlx.core as mx
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32,
              patch_size=8)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_vision_tower_matches_transformers(tmp_path, kind):
    from mlxsmall.convert.vlm import load_vision_tower
    from mlxsmall.models.vision import VisionConfig, VisionModel

    torch.manual_seed(0)
    if kind == "clip":
        reference = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**VISION))
    else:
        reference = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**VISION))
    reference.eval().save_pretrained(tmp_path / kind)
    config, weights = load_vision_tower(tmp_path / kind)
    ours = VisionModel(VisionConfig.from_dict(config))
    ours.load_weights(list(weights.items()), strict=True)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        hidden = reference(pixel_values=pixels, output_hidden_states=True).hidden_states
    for layer in (-2, -1):
        expected = hidden[layer].numpy()
        expected = expected[:, 1:] if kind == "clip" else expected
        got = ours(mx.array(pixels.numpy().transpose(0, 2, 3, 1)), feature_layer=layer)
        np.testing.assert_allclose(np.array(got), expected, rtol=1e-4, atol=1e-4)


def test_llava_logits_match_transformers(tmp_path, tiny_tokenizer_dir):
    import shutil

    from mlxsmall import load
    from mlxsmall.convert.vlm import convert_llava

    torch.manual_seed(0)
    config = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(**VISION),
        text_config=transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, vocab_size=330),
        image_token_index=320)
    reference = transformers.LlavaForConditionalGeneration(config).eval()
    reference.save_pretrained(tmp_path / "llava")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_tokenizer_dir / name, tmp_path / "llava" / name)
    convert_llava(tmp_path / "llava", tmp_path / "ours")
    model, _ = load(tmp_path / "ours")
    ids = [1, 2, 3] + [320] * 16 + [4, 5, 6]
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor([ids]), pixel_values=pixels).logits.numpy()
    got = model(mx.array([ids]), pixel_values=mx.array(pixels.numpy().transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(np.array(got), expected, rtol=1e-4, atol=1e-4)
