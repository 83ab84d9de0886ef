"""Vision-language model: encoders against a numpy reference, splicing, cache, quantization, conversion, CLI."""

import json
import sys
from pathlib import Path

import mlxsmall  # noqa: F401  (OpenBLAS before mlx)
import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlxsmall.errors import MlxsmallError
from mlxsmall.models.projector import pool_patch_grid
from mlxsmall.models.vision import VisionConfig, VisionModel

sys.path.insert(0, str(Path(__file__).parent))  # tests/ helper modules (pytest runs in importlib mode)
from user_cli import mlxsmall as run_mlxsmall, user_env  # noqa: E402

TINY_CLIP = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                 num_attention_heads=4, image_size=32, patch_size=8)
TINY_SIGLIP = dict(TINY_CLIP, model_type="siglip_vision_model", layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh")


# --------------------------------------------------------------------------- numpy reference


def hf_vision_weights(config: dict, seed: int = 0, prefix: str = "vision_model.") -> dict:
    """Random weights in HF's layout (torch conv layout (O, C, kh, kw))."""
    rng = np.random.default_rng(seed)
    c = VisionConfig.from_dict(config)
    D, F, P = c.hidden_size, c.intermediate_size, c.patch_size

    def r(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = {"embeddings.patch_embedding.weight": r(D, 3, P, P),
         "embeddings.position_embedding.weight": r(c.num_patches + (1 if c.is_clip else 0), D),
         "post_layernorm.weight": 1 + r(D), "post_layernorm.bias": r(D)}
    if c.is_clip:
        w.update({"embeddings.class_embedding": r(D), "pre_layrnorm.weight": 1 + r(D), "pre_layrnorm.bias": r(D),
                  "embeddings.position_ids": np.arange(c.num_patches + 1)[None]})
    else:
        w["embeddings.patch_embedding.bias"] = r(D)
    for i in range(c.num_hidden_layers):
        p = f"encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            w[p + f"self_attn.{name}.weight"], w[p + f"self_attn.{name}.bias"] = r(D, D), r(D)
        for name in ("layer_norm1", "layer_norm2"):
            w[p + f"{name}.weight"], w[p + f"{name}.bias"] = 1 + r(D), r(D)
        w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"] = r(F, D), r(F)
        w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"] = r(D, F), r(D)
    return {prefix + k: v for k, v in w.items()}


def numpy_vision_forward(w: dict, config: dict, pixels_nchw: np.ndarray, feature_layer: int) -> np.ndarray:
    """HF CLIP/SigLIP vision forward, written from the papers/HF code in float64 numpy; returns
    hidden_states[feature_layer] with CLIP's class token dropped."""
    c = VisionConfig.from_dict(config)
    w = {k[len("vision_model."):]: v.astype(np.float64) for k, v in w.items() if k.startswith("vision_model.")}
    B, P, D, H = pixels_nchw.shape[0], c.patch_size, c.hidden_size, c.num_attention_heads
    g = c.image_size // P
    patches = pixels_nchw.reshape(B, 3, g, P, g, P).transpose(0, 2, 4, 1, 3, 5).reshape(B, g * g, 3 * P * P)
    x = patches @ w["embeddings.patch_embedding.weight"].reshape(D, -1).T
    if "embeddings.patch_embedding.bias" in w:
        x = x + w["embeddings.patch_embedding.bias"]
    if c.is_clip:
        x = np.concatenate([np.broadcast_to(w["embeddings.class_embedding"], (B, 1, D)), x], axis=1)
    x = x + w["embeddings.position_embedding.weight"]

    def ln(h, name):
        mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
        return (h - mu) / np.sqrt(var + c.layer_norm_eps) * w[name + ".weight"] + w[name + ".bias"]

    def linear(h, name):
        return h @ w[name + ".weight"].T + w[name + ".bias"]

    def act(h):
        if c.hidden_act == "quick_gelu":
            return h / (1 + np.exp(-1.702 * h))
        return 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))

    if c.is_clip:
        x = ln(x, "pre_layrnorm")
    hidden_states = [x]
    for i in range(c.num_hidden_layers):
        p = f"encoder.layers.{i}."
        h = ln(x, p + "layer_norm1")
        L = h.shape[1]
        q, k, v = (linear(h, p + f"self_attn.{n}").reshape(B, L, H, -1).transpose(0, 2, 1, 3)
                   for n in ("q_proj", "k_proj", "v_proj"))
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(D // H)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        attn = (scores / scores.sum(-1, keepdims=True)) @ v
        x = x + linear(attn.transpose(0, 2, 1, 3).reshape(B, L, D), p + "self_attn.out_proj")
        x = x + linear(act(linear(ln(x, p + "layer_norm2"), p + "mlp.fc1")), p + "mlp.fc2")
        hidden_states.append(x)
    out = hidden_states[feature_layer]
    return out[:, 1:] if c.is_clip else out


def write_hf_vision_dir(directory: Path, config: dict, seed=0, prefix="vision_model.") -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    weights = hf_vision_weights(config, seed, prefix)
    mx.save_safetensors(str(directory / "model.safetensors"), {k: mx.array(v) for k, v in weights.items()})
    (directory / "config.json").write_text(json.dumps({k: v for k, v in config.items()}))
    (directory / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3], "crop_size": {"height": 32, "width": 32}}))
    return weights


@pytest.mark.parametrize("config,prefix,feature_layer", [
    (TINY_CLIP, "vision_model.", -2), (TINY_CLIP, "", -1), (TINY_SIGLIP, "vision_model.", -2)])
def test_vision_tower_matches_numpy_reference(tmp_path, config, prefix, feature_layer):
    from mlxsmall.convert.vlm import load_vision_tower

    hf = write_hf_vision_dir(tmp_path / "tower", config, prefix=prefix)  # "" = transformers 5 bare layout
    vision_config, weights = load_vision_tower(tmp_path / "tower")
    assert vision_config["image_mean"] == [0.5, 0.4, 0.3]
    tower = VisionModel(VisionConfig.from_dict(vision_config))
    tower.load_weights(list(weights.items()), strict=True)
    pixels = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    ours = tower(mx.array(pixels.transpose(0, 2, 3, 1)), feature_layer=feature_layer)
    reference = numpy_vision_forward({"vision_model." + k[len(prefix):]: v for k, v in hf.items()},
                                     config, pixels.astype(np.float64), feature_layer)
    assert ours.shape == reference.shape == (2, 16, 32)
    np.testing.assert_allclose(np.array(ours), reference, rtol=1e-4, atol=1e-4)


def test_presets_build_and_count_tokens():
    from mlxsmall.models.vision import PRESETS

    assert VisionConfig.from_dict(PRESETS["clip-vit-l14-336"]).num_patches == 576
    assert VisionConfig.from_dict(PRESETS["clip-vit-b16-224"]).num_patches == 196
    features = mx.arange(2 * 576 * 3, dtype=mx.float32).reshape(2, 576, 3)
    pooled = pool_patch_grid(features, 2)
    assert pooled.shape == (2, 144, 3)
    grid = np.array(features).reshape(2, 24, 24, 3)
    expected = grid.reshape(2, 12, 2, 12, 2, 3).mean(axis=(2, 4)).reshape(2, 144, 3)
    np.testing.assert_allclose(np.array(pooled), expected, rtol=1e-6)


# --------------------------------------------------------------------------- composite


def tiny_vlm_config(tiny_config, arch="mobilellm", projector="mlp2x_gelu", vision=TINY_CLIP):
    from mlxsmall.convert.vlm import vlm_config

    return vlm_config(tiny_config(arch), vision, projector_type=projector)


def tiny_vlm_model(tiny_config, seed=0):
    from mlxsmall.loading import build_model

    mx.random.seed(seed)
    model = build_model(tiny_vlm_config(tiny_config))
    mx.eval(model.parameters())
    return model


@pytest.fixture
def tiny_vlm(tiny_config):
    return tiny_vlm_model(tiny_config)


def test_splicing_places_features_exactly_at_placeholders(tiny_vlm):
    model = tiny_vlm
    n, marker = model.num_image_tokens, model.args.image_token_index
    assert n == 16 and marker == 320  # default placeholder: vocab_size (never embedded)
    ids = mx.array([[5, 6, 7] + [marker] * n + [8, 9], [4] + [marker] * n + [10, 11, 12, 13]])
    features = mx.random.normal((2, n, 64))
    embedded = model.embed_inputs(ids, image_features=features)
    text = model.language_model.model.embed_tokens(mx.where(ids == marker, 0, ids))
    assert mx.array_equal(embedded[0, 3:3 + n], features[0]).item()
    assert mx.array_equal(embedded[1, 1:1 + n], features[1]).item()
    keep = np.array(ids != marker)
    np.testing.assert_array_equal(np.array(embedded)[keep], np.array(text)[keep])
    with pytest.raises(ValueError, match="image-token positions"):
        model.embed_inputs(ids[:, :10], image_features=features)


def test_cache_decode_equals_full_forward(tiny_vlm):
    from mlx_lm.models.cache import make_prompt_cache

    model = tiny_vlm
    marker, n = model.args.image_token_index, model.num_image_tokens
    prompt = mx.array([[1, 2] + [marker] * n + [3, 4, 5]])
    continuation = [7, 8, 9, 10]
    pixels = mx.random.normal((1, 32, 32, 3))
    full_ids = mx.concatenate([prompt, mx.array([continuation])], axis=1)
    full = model(full_ids, pixel_values=pixels)
    cache = make_prompt_cache(model)
    steps = [model(prompt, cache=cache, input_embeddings=model.embed_inputs(prompt, pixels))[:, -1]]
    for token in continuation:
        steps.append(model(mx.array([[token]]), cache=cache)[:, -1])
    incremental = mx.stack(steps[:-1], axis=1)
    expected = full[:, prompt.shape[1] - 1:-1]
    np.testing.assert_allclose(np.array(incremental), np.array(expected), rtol=1e-4, atol=1e-4)


def save_tiny_vlm(model, config, path, tokenizer_dir):
    from mlxsmall.loading import save_model

    return save_model(path, model, config, tokenizer_src_dir=tokenizer_dir)


def load_with_processor(path, **options):
    """``mlxsmall.load`` (the one loader) on a VLM directory, and the image processor the CLI asks for."""
    from mlxsmall import load
    from mlxsmall.images import image_processor_for

    model, tokenizer = load(path, **options)
    return model, tokenizer, image_processor_for(model.vision_config)


def test_generation_with_and_without_image(tiny_vlm, tiny_config, tiny_tokenizer_dir, tmp_path):
    from mlxsmall.generation import generate
    from mlxsmall.eval.shapes import draw_shape
    from mlxsmall.vlm import generate_vlm, stream_generate_vlm

    path = save_tiny_vlm(tiny_vlm, tiny_vlm_config(tiny_config), tmp_path / "vlm", tiny_tokenizer_dir)
    model, tokenizer, processor = load_with_processor(path)
    image = draw_shape("circle", "red", 48)
    steps = list(stream_generate_vlm(model, tokenizer, processor, "What is this?", [image], max_tokens=5))
    assert steps[-1].image_tokens == 16 and steps[-1].image_encode_time > 0
    assert steps[-1].prompt_tokens > 16
    # Text only: identical to the plain LM on the same prompt through the one generation loop.
    text = generate_vlm(model, tokenizer, processor, "Hello", chat=False, max_tokens=6)
    assert text == generate(model.language_model, tokenizer, "Hello", max_tokens=6)
    with pytest.raises(MlxsmallError, match="placeholders"):
        generate_vlm(model, tokenizer, processor, "<image> <image> two?", [image], max_tokens=2)


def test_chat_session_matches_one_shot_generation_and_reuses_the_cache(tiny_vlm, tiny_config,
                                                                        tiny_tokenizer_dir, tmp_path):
    from mlxsmall.eval.shapes import draw_shape
    from mlxsmall.vlm import encode_images, generate_vlm, vision_chat_session

    path = save_tiny_vlm(tiny_vlm, tiny_vlm_config(tiny_config), tmp_path / "vlm", tiny_tokenizer_dir)
    model, tokenizer, processor = load_with_processor(path)
    image = draw_shape("triangle", "green", 48)
    features, _ = encode_images(model, processor, [image])
    session = vision_chat_session(model, tokenizer, features, max_tokens=6)
    first = "".join(step.text for step in session.send("<image>\nWhat is it?"))
    assert first == generate_vlm(model, tokenizer, processor, "What is it?", [image], max_tokens=6)
    steps = list(session.send("And the colour?"))
    assert steps[-1].prompt_tokens < len(session.render(session.messages[:-1]))  # only the new turn prefilled
    with pytest.raises(MlxsmallError, match="placeholders"):
        list(vision_chat_session(model, tokenizer, None).send("<image> what?"))


def test_quantize_round_trip_keeps_vision_fp16(tiny_vlm, tiny_config, tiny_tokenizer_dir, tmp_path):
    from mlxsmall.loading import load_model
    from mlxsmall.quantize import quantize_vlm

    config = tiny_vlm_config(tiny_config)
    quantized = quantize_vlm(tiny_vlm, config, bits=4, group_size=32, vision="fp16")
    block = quantized["quantization"]
    assert block["bits"] == 4 and block["vision_tower.vision_model.encoder.layers.0.self_attn.q_proj"] is False
    path = save_tiny_vlm(tiny_vlm, quantized, tmp_path / "q4", tiny_tokenizer_dir)
    loaded, _ = load_model(path)  # as stored
    params = dict(tree_flatten(loaded.parameters()))
    assert params["vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight"].dtype == mx.float16
    assert "language_model.model.layers.0.self_attn.q_proj.scales" in params
    assert "multi_modal_projector.linear_1.scales" in params
    ids = mx.array([[1, 2] + [320] * 16 + [3]])
    pixels = mx.random.normal((1, 32, 32, 3)).astype(mx.float16)
    assert mx.array_equal(loaded(ids, pixel_values=pixels), tiny_vlm(ids, pixel_values=pixels)).item()


def test_the_one_loader_builds_and_checks_a_vlm(tiny_vlm, tiny_config, tiny_tokenizer_dir, tmp_path):
    from mlxsmall import load
    from mlxsmall.info import model_facts
    from mlxsmall.loading import load_model
    from mlxsmall.models import vlm
    from mlxsmall.quantize import quantize_vlm

    config = tiny_vlm_config(tiny_config)
    path = save_tiny_vlm(tiny_vlm, config, tmp_path / "vlm", tiny_tokenizer_dir)
    model, loaded = load_model(path)
    assert isinstance(model, vlm.Model) and loaded["model_type"] == "llava"
    with pytest.raises(MlxsmallError, match="a vision-language model; `mlxsmall info` describes language models"):
        model_facts(path)
    # On CPU `load` runs a quantized VLM as fp32, cast before dequantizing (as for every model).
    q4 = save_tiny_vlm(tiny_vlm_model(tiny_config), quantize_vlm(tiny_vlm_model(tiny_config), config, bits=4,
                       group_size=32), tmp_path / "q4", tiny_tokenizer_dir)
    model, _ = load(q4, dtype="float32", dequantize=True)
    params = dict(tree_flatten(model.parameters()))
    assert not any(key.endswith(".scales") for key in params)
    assert {v.dtype for v in params.values()} == {mx.float32}
    # The language model's dimensions are checked against its tensors, as for a plain LM.
    broken = json.loads((path / "config.json").read_text())
    broken["text_config"]["num_hidden_layers"] = 7
    (path / "config.json").write_text(json.dumps(broken))
    with pytest.raises(MlxsmallError, match=r"config.json: text_config: num_hidden_layers = 7 but the weights hold"):
        load_model(path)


def test_quantize_command_quantizes_the_vision_tower_too(tiny_config, tiny_tokenizer_dir, tmp_path):
    from mlxsmall.loading import load_model

    path = save_tiny_vlm(tiny_vlm_model(tiny_config), tiny_vlm_config(tiny_config), tmp_path / "vlm",
                         tiny_tokenizer_dir)
    result = run_mlxsmall("quantize", path, "-o", tmp_path / "q8", "--bits", "8", "--group-size", "32",
                      "--vision", "quantize", env=user_env(tmp_path, tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "q8" / "config.json").read_text())
    assert config["quantization"] == {"group_size": 32, "bits": 8}
    original, _ = load_model(path)
    quantized, _ = load_model(tmp_path / "q8")
    params = dict(tree_flatten(quantized.parameters()))
    assert "vision_tower.vision_model.encoder.layers.0.mlp.fc1.scales" in params
    assert "vision_tower.vision_model.embeddings.position_embedding.scales" in params
    ids = mx.array([[1, 2] + [320] * 16 + [3]])
    pixels = mx.random.normal((1, 32, 32, 3))
    a, b = original(ids, pixel_values=pixels), quantized(ids, pixel_values=pixels)
    assert float(mx.abs(a - b).max() / mx.abs(a).max()) < 0.05  # 8-bit: close, not equal


def test_build_from_hf_tower_then_generate_with_an_image(tmp_path, make_tiny_model, capsys):
    from mlxsmall.cli import main
    from mlxsmall.eval.shapes import draw_shape

    env = user_env(tmp_path, tmp_path / "cache")
    write_hf_vision_dir(tmp_path / "clip", TINY_CLIP, prefix="")
    lm = make_tiny_model("mobillama")
    vlm = tmp_path / "vlm"
    result = run_mlxsmall("vlm", "build", "--vision", tmp_path / "clip", "--lm", lm, "-o", vlm, "--projector", "pool",
                      env=env)
    assert result.returncode == 0, result.stderr
    model, _, processor = load_with_processor(vlm)
    assert model.num_image_tokens == 4 and processor.image_mean == [0.5, 0.4, 0.3]
    draw_shape("square", "blue", 40).save(tmp_path / "square.png")
    result = run_mlxsmall("generate", vlm, "--image", tmp_path / "square.png", "-p", "Describe the image.", "-m", "4",
                      env=env)
    assert result.returncode == 0, result.stderr
    assert "image encode:" in result.stderr and "(4 image tokens)" in result.stderr and "TTFT" in result.stderr
    assert main(["generate", str(vlm), "--image", str(tmp_path / "nope.png"), "-p", "x"]) == 2
    assert "nope.png: no such image file" in capsys.readouterr().err
    assert main(["generate", str(lm), "--image", str(tmp_path / "square.png"), "-p", "x"]) == 2
    assert "--image needs a vision-language model" in capsys.readouterr().err


def test_chat_about_an_image(tmp_path, make_tiny_model):
    from mlxsmall.convert.vlm import build_vlm
    from mlxsmall.eval.shapes import draw_shape

    write_hf_vision_dir(tmp_path / "clip", TINY_CLIP)
    build_vlm(tmp_path / "clip", make_tiny_model("mobilellm"), tmp_path / "vlm")
    draw_shape("circle", "red", 40).save(tmp_path / "circle.png")
    # The image encoded once, then turns on the core chat session (its KV cache kept across turns).
    result = run_mlxsmall("chat", tmp_path / "vlm", "--image", tmp_path / "circle.png", "-m", "3",
                      stdin="What is it?\nAnd the colour?\n/reset\nAgain?\n/quit\n",
                      env=user_env(tmp_path, tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    assert "[1 image(s) encoded in" in result.stderr and "16 image tokens]" in result.stderr
    assert result.stdout.count(">> ") == 5 and "[conversation cleared]" in result.stdout


def test_build_with_siglip_tower_and_quantized_lm(tmp_path, make_tiny_model):
    from mlxsmall.convert.vlm import build_vlm
    from mlxsmall.vlm import generate_vlm

    write_hf_vision_dir(tmp_path / "siglip", TINY_SIGLIP)
    lm = make_tiny_model("mobilellm", bits=4, group_size=32)
    build_vlm(tmp_path / "siglip", lm, tmp_path / "vlm")
    config = json.loads((tmp_path / "vlm" / "config.json").read_text())
    assert config["quantization"]["bits"] == 4 and config["vision_config"]["model_type"] == "siglip_vision_model"
    model, tokenizer, processor = load_with_processor(tmp_path / "vlm", dtype=None, dequantize=False)
    assert "language_model.model.layers.0.mlp.up_proj.scales" in dict(tree_flatten(model.parameters()))
    assert not processor.center_crop and model.num_image_tokens == 16  # SigLIP: no class token, squash resize
    from PIL import Image

    image = Image.new("RGB", (30, 20), (10, 200, 10))
    assert isinstance(generate_vlm(model, tokenizer, processor, "Hi", [image], max_tokens=2), str)


def test_convert_llava_transformers5_layout(tiny_config, tiny_tokenizer_dir, tmp_path):
    """A LLaVA checkpoint as transformers 5 saves it: bare vision tower keys, torch conv layout, classic
    `language_model.model.*` keys, `rope_parameters` in text_config."""
    import shutil

    from mlxsmall.convert.vlm import convert_llava
    from mlxsmall.loading import build_model

    text = dict(model_type="llama", hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, vocab_size=330, rms_norm_eps=1e-5,
                rope_parameters={"rope_theta": 10000.0, "rope_type": "default"}, tie_word_embeddings=False)
    hf_config = {"model_type": "llava", "image_token_index": 320, "vision_feature_layer": -2,
                 "vision_feature_select_strategy": "default", "projector_hidden_act": "gelu",
                 "text_config": text, "vision_config": TINY_CLIP, "tie_word_embeddings": False}
    src = tmp_path / "llava-hf"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(hf_config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_tokenizer_dir / name, src / name)
    mx.random.seed(3)
    ours_config = dict(hf_config, text_config=dict({k: v for k, v in text.items() if k != "rope_parameters"},
                                                   rope_theta=10000.0))
    reference = build_model(ours_config)
    weights = {}
    for key, value in tree_flatten(reference.parameters()):
        if key.startswith("vision_tower.vision_model."):
            key = "vision_tower." + key[len("vision_tower.vision_model."):]
            if key.endswith("patch_embedding.weight"):
                value = value.transpose(0, 3, 1, 2)
        weights[key] = value
    mx.save_safetensors(str(src / "model.safetensors"), weights)
    convert_llava(src, tmp_path / "converted")
    model, tokenizer, _ = load_with_processor(tmp_path / "converted")
    ids = mx.array([[1, 2] + [320] * 16 + [3, 4]])
    pixels = mx.random.normal((1, 32, 32, 3))
    np.testing.assert_allclose(np.array(model(ids, pixel_values=pixels)),
                               np.array(reference(ids, pixel_values=pixels)), rtol=1e-5, atol=1e-5)
    (tmp_path / "text-only").mkdir()
    (tmp_path / "text-only" / "config.json").write_text(json.dumps(text))
    with pytest.raises(MlxsmallError, match="not a LLaVA config"):
        convert_llava(tmp_path / "text-only", tmp_path / "bad")


def test_image_processor_resize_crop_normalise():
    from PIL import Image

    from mlxsmall.images import ImageProcessor

    image = Image.new("RGB", (64, 32), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 8, 32))  # blue left edge: cropped away by the center crop
    processor = ImageProcessor(16, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], center_crop=True)
    pixels = np.array(processor([image]))
    assert pixels.shape == (1, 16, 16, 3)
    np.testing.assert_allclose(pixels[0, :, :, 0], 2.0, atol=1e-5)  # (1 - 0.5) / 0.25
    np.testing.assert_allclose(pixels[0, :, :, 2], -2.0, atol=1e-5)
    squash = ImageProcessor(16, [0.5] * 3, [0.5] * 3, center_crop=False)
    assert np.array(squash([image]))[0, :, 0, 2].mean() > 0.9  # blue kept at the left edge


def noisy_image(width, height, seed=0):
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_clip_resize_truncates_the_long_side_like_transformers():
    from mlxsmall.images import ImageProcessor

    clip = ImageProcessor(224, [0.5] * 3, [0.5] * 3, center_crop=True)
    # int(224 * 640 / 480) = 298 (rounding gave 299); values from transformers'
    # get_resize_output_image_size(default_to_square=False), checked by hand.
    assert clip.resized_size(640, 480) == (298, 224)
    assert clip.resized_size(480, 640) == (224, 298)
    assert clip.resized_size(333, 517) == (224, 347)  # 347.77 -> 347
    assert clip.resized_size(100, 60) == (373, 224)  # upscaled: 373.33 -> 373
    assert ImageProcessor(224, [0.5] * 3, [0.5] * 3, center_crop=False).resized_size(640, 480) == (224, 224)


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (333, 517), (100, 60), (224, 224)])
def test_image_processor_matches_transformers_clip_and_siglip(size):
    transformers = pytest.importorskip("transformers")
    from mlxsmall.models.vision import CLIP_MEAN, CLIP_STD
    from mlxsmall.images import ImageProcessor

    image = noisy_image(*size)
    references = [
        (ImageProcessor(224, CLIP_MEAN, CLIP_STD, center_crop=True),
         transformers.CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})),
        (ImageProcessor(384, [0.5] * 3, [0.5] * 3, center_crop=False),
         transformers.SiglipImageProcessorPil(size={"height": 384, "width": 384})),
    ]
    for ours, theirs in references:
        expected = theirs(images=[image], return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        np.testing.assert_array_equal(np.array(ours([image]))[0], expected)


def test_load_image_from_a_url_served_locally(tmp_path):
    import functools
    import http.server
    import threading

    from mlxsmall.eval.shapes import draw_shape
    from mlxsmall.images import load_image

    draw_shape("circle", "blue", 24).save(tmp_path / "c.png")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert load_image(f"{url}/c.png").size == (24, 24)
        with pytest.raises(MlxsmallError, match="cannot download"):
            load_image(f"{url}/missing.png")
    finally:
        server.shutdown()
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(MlxsmallError, match="not an image"):
        load_image(tmp_path / "bad.png")


def test_prompt_tokens_keep_one_bos():
    from mlxsmall.vlm import tokenize_with_images

    class Tokenizer:  # a BOS-adding tokenizer (LLaMA SentencePiece style)
        bos_token, bos_token_id = "<s>", 1

        def encode(self, text, add_special_tokens=True):
            body = [ord(c) for c in text.replace("<s>", "\x01")]
            return ([1] if add_special_tokens else []) + body

    tok = Tokenizer()
    assert tokenize_with_images(tok, "<image>\nHi", 999, 2) == [1, 999, 999, 10, 72, 105]
    assert tokenize_with_images(tok, "Q <image>", 999, 2) == [1, 81, 32, 999, 999]
    assert tokenize_with_images(tok, "<s>[INST] <image>", 999, 1)[:2] == [1, ord("[")]  # template wrote BOS
