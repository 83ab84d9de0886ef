"""VQA task: the VQAv2 metric, sample sets with drawn images, and the evaluator on a tiny VLM."""

import json
import sys
from pathlib import Path

import mlxsmall  # noqa: F401
import mlx.core as mx
import pytest

from mlxsmall.eval import tasks as task_table, vqa
from mlxsmall.eval.runner import EvalOptions, evaluate
from mlxsmall.eval.tasks import load_docs, resolve_tasks

sys.path.insert(0, str(Path(__file__).parent))  # tests/ helper modules (pytest runs in importlib mode)
from user_cli import mlxsmall as run_mlxsmall, user_env  # noqa: E402

TINY_CLIP = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, image_size=32, patch_size=8)


def test_vqa_accuracy_follows_the_official_metric():
    answers = ["two"] * 3 + ["2"] * 1 + ["three"] * 6
    # "two" and "2" normalise alike: 4 annotators; each leave-one-out subset has 3 or 4 -> min(1, n/3) = 1
    assert vqa.vqa_accuracy("Two.", answers) == pytest.approx(1.0)
    # 2 of 10 annotators: 8 subsets with 2 matches (2/3), 2 subsets with 1 match (1/3)
    assert vqa.vqa_accuracy("red", ["red"] * 2 + ["blue"] * 8) == pytest.approx((8 * 2 / 3 + 2 * 1 / 3) / 10)
    assert vqa.vqa_accuracy("a dog", ["dog"] * 10) == 1.0
    assert vqa.normalize_vqa_answer("Isnt it 3.5?") == "isn't it 3.5"
    assert vqa.vqa_accuracy("cat", ["dog"] * 10) == 0.0


def test_sample_sets_load_and_draw():
    tasks = resolve_tasks(["vqa"])
    assert [t.name for t in tasks] == ["vqav2", "textvqa", "gqa", "scienceqa"]
    for task in tasks:
        docs = load_docs(task, data="sample")
        assert len(docs) >= 12
        request = task.to_request(docs[0])
        assert request["question"]
        image = vqa.doc_image(docs[0])
        assert image.size == (64, 64) and image.mode == "RGB"
    hub_like = {"question": "q", "answers": [{"answer": "yes", "answer_confidence": "yes", "answer_id": 1}]}
    assert task_table.vqav2_request(hub_like)["answers"] == ["yes"]
    assert "vqav2" not in [t.name for t in resolve_tasks(["all"])]  # "all": what a language model can run


def test_evaluator_runs_on_a_tiny_vlm(tiny_config, tiny_tokenizer_dir, tmp_path):
    import shutil

    from mlxsmall.convert.vlm import vlm_config
    from mlxsmall.loading import build_model, load_tokenizer

    mx.random.seed(0)
    model = build_model(vlm_config(tiny_config("mobilellm"), TINY_CLIP, projector_type="pool_mlp2x_gelu"))
    tokenizer_dir = shutil.copytree(tiny_tokenizer_dir, tmp_path / "tokenizer")
    (tokenizer_dir / "config.json").write_text(json.dumps({"eos_token_id": 2}))
    tokenizer = load_tokenizer(tokenizer_dir)
    results = evaluate(model, tokenizer, resolve_tasks(["vqav2", "scienceqa", "gqa"]),
                       EvalOptions(limit=3, max_tokens=3))
    assert 0.0 <= results["vqav2"]["metrics"]["vqa_accuracy"] <= 1.0
    assert 0.0 <= results["scienceqa"]["metrics"]["accuracy"] <= 1.0
    assert 0.0 <= results["gqa"]["metrics"]["exact_match"] <= 1.0
    assert results["vqav2"]["n"] == 3 and results["vqav2"]["metrics"]["image_encode_ms"] > 0
    assert results["scienceqa"]["examples"][0]["prediction"] in ("circle", "square", "triangle", "red", "green",
                                                                  "blue", "yellow")


def test_eval_command_runs_the_vqa_tasks_on_a_vlm_directory(tiny_config, tiny_tokenizer_dir, tmp_path):
    from mlxsmall.convert.vlm import vlm_config
    from mlxsmall.loading import build_model, save_model

    config = vlm_config(tiny_config("mobilellm"), TINY_CLIP, projector_type="pool_mlp2x_gelu")
    save_model(tmp_path / "vlm", build_model(config), config, tokenizer_src_dir=tiny_tokenizer_dir)
    result = run_mlxsmall("eval", tmp_path / "vlm", "--tasks", "vqav2,scienceqa", "--limit", "2",
                      "-o", tmp_path / "results.json", env=user_env(tmp_path, tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    run = json.loads((tmp_path / "results.json").read_text())["runs"][0]
    assert run["tasks"]["vqav2"]["n"] == 2 and 0.0 <= run["tasks"]["vqav2"]["metrics"]["vqa_accuracy"] <= 1.0
    assert 0.0 <= run["tasks"]["scienceqa"]["metrics"]["accuracy"] <= 1.0
    encode_ms = run["tasks"]["vqav2"]["metrics"]["image_encode_ms"]
    assert f"| image_encode_ms ↓ | {encode_ms:.3f} |" in result.stdout  # milliseconds, not a percentage
