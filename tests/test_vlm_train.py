"""VLM training: stage 1 moves only the projector, stage 2 (LoRA, fused) the projector and the LM."""

import json
import shutil

import mlxsmall  # noqa: F401
import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from mlxsmall.convert.vlm import vlm_config
from mlxsmall.eval.shapes import draw_shape
from mlxsmall.images import image_processor_for
from mlxsmall.loading import build_model
from mlxsmall.train.trainer import TrainConfig
from mlxsmall.train.vlm_train import VLMTrainSettings, read_samples, tokenize_sample, train_vlm

TINY_CLIP = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, image_size=32, patch_size=8)


def setup(tmp_path, tiny_config, tiny_tokenizer_dir):
    from mlxsmall.loading import load_tokenizer

    tokenizer_dir = shutil.copytree(tiny_tokenizer_dir, tmp_path / "tokenizer")
    (tokenizer_dir / "config.json").write_text(json.dumps({"eos_token_id": 2}))
    rows = []
    for i, (shape, colour) in enumerate([("circle", "red"), ("square", "blue"), ("triangle", "green")]):
        draw_shape(shape, colour, 40).save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "caption": f"a {colour} {shape}"})
    rows.append({"image": "0.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"},
        {"from": "human", "value": "And the shape?"}, {"from": "gpt", "value": "circle"}]})
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    mx.random.seed(0)
    config = vlm_config(tiny_config("mobilellm"), TINY_CLIP)
    model = build_model(config)
    mx.eval(model.parameters())
    return model, config, load_tokenizer(tokenizer_dir), read_samples(tmp_path / "data.jsonl")


def snapshot(module):
    return {k: np.array(v) for k, v in tree_flatten(module.parameters())}


def changed(before, after):
    return {k for k in before if not np.array_equal(before[k], after[k])}


def test_loss_mask_covers_only_assistant_turns(tmp_path, tiny_config, tiny_tokenizer_dir):
    model, _, tokenizer, samples = setup(tmp_path, tiny_config, tiny_tokenizer_dir)
    ids, mask = tokenize_sample(tokenizer, samples[3], model.args.image_token_index, model.num_image_tokens)
    assert ids.count(model.args.image_token_index) == 16
    learned = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    assert learned.replace("\n", "") == "red<|im_end|>circle<|im_end|>"


def test_stage1_trains_only_the_projector_and_stage2_lora_fuses(tmp_path, tiny_config, tiny_tokenizer_dir):
    model, _, tokenizer, samples = setup(tmp_path, tiny_config, tiny_tokenizer_dir)
    processor = image_processor_for(TINY_CLIP)
    vision0, lm0, proj0 = snapshot(model.vision_tower), snapshot(model.language_model), \
        snapshot(model.multi_modal_projector)
    history = train_vlm(model, tokenizer, processor, samples,
                        VLMTrainSettings(stage="projector", train=TrainConfig(
                            steps=30, batch_size=4, learning_rate=3e-3, min_learning_rate=1.5e-4, warmup_steps=10,
                            report_every=5)))
    assert history[-1]["loss"] < history[0]["loss"]
    assert not changed(vision0, snapshot(model.vision_tower))
    assert not changed(lm0, snapshot(model.language_model))
    assert changed(proj0, snapshot(model.multi_modal_projector)) == set(proj0)

    train_vlm(model, tokenizer, processor, samples,
              VLMTrainSettings(stage="finetune", lora_rank=4, train=TrainConfig(
                  steps=4, batch_size=4, learning_rate=1e-3, min_learning_rate=5e-5, warmup_steps=10, report_every=2)))
    assert not changed(vision0, snapshot(model.vision_tower))
    lm1 = snapshot(model.language_model)
    assert set(lm1) == set(lm0)  # LoRA adapters fused away: same parameter names as before
    assert "model.layers.0.self_attn.q_proj.weight" in changed(lm0, lm1)


def test_cli_train_writes_a_loadable_model(tmp_path, tiny_config, tiny_tokenizer_dir, capsys):
    from mlxsmall import load
    from mlxsmall.cli import main
    from mlxsmall.loading import save_model

    model, config, _, _ = setup(tmp_path, tiny_config, tiny_tokenizer_dir)
    save_model(tmp_path / "vlm", model, config, tokenizer_src_dir=tmp_path / "tokenizer")
    train = ["vlm", "train", str(tmp_path / "vlm"), "--data", str(tmp_path / "data.jsonl"), "--stage", "finetune",
             "--batch-size", "4", "-o", str(tmp_path / "out")]
    assert main(train + ["--steps", "2", "--valid", str(tmp_path / "data.jsonl")]) == 0
    out = capsys.readouterr()
    assert "loss" in out.err and "validation loss:" in out.out
    log = [json.loads(l) for l in (tmp_path / "out.run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["phase"] == "step"] == [1, 2]
    assert main(train + ["--steps", "3"]) == 2  # a second run must not silently overwrite the first
    assert "already exists" in capsys.readouterr().err
    assert main(train + ["--steps", "3", "--resume"]) == 0  # the shared trainer's exact resume
    log = [json.loads(l) for l in (tmp_path / "out.run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["phase"] == "step"] == [1, 2, 3]
    trained, _ = load(tmp_path / "out")
    assert trained.num_image_tokens == 16
    assert main(["vlm", "train", str(tmp_path / "vlm"), "--data", str(tmp_path / "missing.json"),
                 "-o", str(tmp_path / "x")]) == 2
