"""HF checkpoints in the exact upstream layouts -> our format, checked logit-for-logit against an
independent numpy forward over the source tensors; and every kind of bad input."""

import json
import shutil
import sys
from pathlib import Path

import mlxsmall  # noqa: F401
import mlx.core as mx
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/ helper modules (pytest runs in importlib mode)
from fixtures_convert import (reference_logits, source_tensors, write_mobilellm, write_mobillama)
from mlxsmall.convert.hf import convert_hf
from mlxsmall.errors import MlxsmallError
from mlxsmall.loading import load_model, load_tokenizer

torch = pytest.importorskip("torch")

TOKENS = [1, 5, 17, 99, 200, 3, 42, 7, 350, 12]
LAYOUTS = {
    "mobilellm-125m": lambda d: write_mobilellm(d, dtype="float16"),
    "mobilellm-125m-layer-share": lambda d: write_mobilellm(d, dtype="float16", layer_sharing=True),
    "mobilellm-600m": lambda d: write_mobilellm(d, dtype="bfloat16", redundant_lm_head=True, kv_heads=1),
    "mobillama-05b": lambda d: write_mobillama(d, shared=True, dtype="float32"),
    "mobillama-05b-chat-bf16": lambda d: write_mobillama(d, shared=True, dtype="bfloat16", chat=True),
    "mobillama-1b": lambda d: write_mobillama(d, shared=False, dtype="float32"),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("upstream")
    return {name: write(root / name) for name, write in LAYOUTS.items()}


def logits(model_dir, tokens=TOKENS):
    model, _ = load_model(model_dir)
    return np.array(model(mx.array([tokens]))[0].astype(mx.float32))


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_converted_logits_match_reference(checkpoints, tmp_path, name):
    src = checkpoints[name]
    dst = convert_hf(src, tmp_path / "out", dtype="float32")
    config = json.loads((dst / "config.json").read_text())
    upstream = json.loads((src / "config.json").read_text())
    expected = reference_logits(source_tensors(src), upstream, TOKENS)
    np.testing.assert_allclose(logits(dst), expected, atol=2e-4 * np.abs(expected).max(), rtol=0)
    assert "auto_map" not in config
    if name.startswith("mobillama"):
        assert config["model_type"] == "mobillama"
        assert config["num_key_value_heads"] == config["num_attention_heads"]  # not the bogus 1
        assert config["shared_ffn"] is (name != "mobillama-1b")
        keys = set(mx.load(str(dst / "model.safetensors")))
        assert not any("inv_freq" in k for k in keys)
        if config["shared_ffn"]:
            assert "model.shared_mlp.gate_proj.weight" in keys
            assert not any(".mlp." in k for k in keys)
    else:
        assert config["model_type"] == "mobilellm" and config["share_embedding"]
        assert "lm_head.weight" not in set(mx.load(str(dst / "model.safetensors")))


def test_native_dtype_kept_without_dtype(checkpoints, tmp_path):
    dst = convert_hf(checkpoints["mobilellm-600m"], tmp_path / "out")
    weights = mx.load(str(dst / "model.safetensors"))
    assert weights["model.embed_tokens.weight"].dtype == mx.bfloat16
    assert json.loads((dst / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_quantized_conversion_stays_close(checkpoints, tmp_path):
    src = checkpoints["mobillama-05b"]
    dst = convert_hf(src, tmp_path / "q8", bits=8, group_size=32)
    config = json.loads((dst / "config.json").read_text())
    assert config["quantization"]["bits"] == 8
    reference = reference_logits(source_tensors(src), json.loads((src / "config.json").read_text()), TOKENS)
    ours = logits(dst)
    assert (ours.argmax(-1) == reference.argmax(-1)).mean() >= 0.8
    assert np.abs(ours - reference).max() < 0.1 * np.abs(reference).max()


def test_sentencepiece_tokenizer_loads_offline_and_matches(checkpoints, tmp_path):
    import sentencepiece as spm
    from mlx_lm.tokenizer_utils import load as mlx_lm_load_tokenizer

    src = checkpoints["mobilellm-125m"]  # its tokenizer_config has empty-string special tokens
    dst = convert_hf(src, tmp_path / "out")
    processor = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    tokenizer = mlx_lm_load_tokenizer(dst)
    text = "The capital of France is Paris. 2024\n  Hello ünï!"
    assert tokenizer.encode(text) == [processor.bos_id()] + processor.encode(text)
    assert tokenizer.decode(processor.encode(text)) == text
    assert tokenizer.eos_token_id == processor.eos_id()
    assert load_tokenizer(dst).bos_token == "<s>"


def test_chat_template_for_mobillama_chat(checkpoints, tmp_path):
    dst = convert_hf(checkpoints["mobillama-05b-chat-bf16"], tmp_path / "chat", chat_template="fastchat-one-shot")
    tokenizer = load_tokenizer(dst)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Name a planet."}],
                                           add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("A chat between a curious human and an artificial intelligence assistant.")
    assert prompt.endswith("\n### Human: Name a planet.\n### Assistant:")
    assert json.loads((dst / "generation_config.json").read_text())["stop_strings"] == ["###"]
    base = convert_hf(checkpoints["mobillama-05b"], tmp_path / "base")
    assert not (base / "chat_template.jinja").exists()


def test_differing_ffn_copies_name_the_layer(tmp_path):
    src = write_mobillama(tmp_path / "bad", shared=True, differ_at=2)
    with pytest.raises(MlxsmallError, match=r"model\.layers\.2\.mlp"):
        convert_hf(src, tmp_path / "out")
    with pytest.raises(MlxsmallError, match=r"model\.layers\.2\.mlp\.\w+_proj.weight differs"):
        convert_hf(src, tmp_path / "out", shared_ffn=True)
    assert not (tmp_path / "out").exists()


def test_redundant_lm_head_that_differs_is_refused(checkpoints, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(checkpoints["mobilellm-125m"], src)
    state = torch.load(src / "pytorch_model.bin", weights_only=True)
    state["lm_head.weight"] = torch.randn_like(state["model.embed_tokens.weight"])
    torch.save(state, src / "pytorch_model.bin")
    with pytest.raises(MlxsmallError, match="lm_head.weight differs"):
        convert_hf(src, tmp_path / "out")


def test_unknown_architecture_lists_supported(checkpoints, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(checkpoints["mobilellm-125m"], src)
    config = json.loads((src / "config.json").read_text())
    config.update(model_type="gpt_neox", architectures=["GPTNeoXForCausalLM"])
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(MlxsmallError, match="unsupported architecture.*supported: mobilellm.*mobillama.*llama"):
        convert_hf(src, tmp_path / "out")


def test_truncated_safetensors_checkpoint(checkpoints, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(checkpoints["mobilellm-125m"], src, ignore=shutil.ignore_patterns("*.bin"))
    state = torch.load(checkpoints["mobilellm-125m"] / "pytorch_model.bin", weights_only=True)
    mx.save_safetensors(str(src / "model.safetensors"),
                        {k: mx.array(v.float().numpy()) for k, v in state.items()})
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(MlxsmallError, match=r"model\.safetensors: tensor '.*' ends at byte .* \(truncated\)"):
        convert_hf(src, tmp_path / "out")


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_disk_full_or_ctrl_c_during_save_leaves_nothing(checkpoints, tmp_path, monkeypatch, failure):
    calls = []

    def failing_save(path, arrays, metadata=None):
        calls.append(path)
        with open(path, "wb") as handle:  # half a file, then the failure
            handle.write(b"\0" * 100)
        raise failure

    monkeypatch.setattr(mx, "save_safetensors", failing_save)
    dst = tmp_path / "models" / "out"
    with pytest.raises((MlxsmallError, KeyboardInterrupt)) as error:
        convert_hf(checkpoints["mobilellm-125m"], dst)
    assert calls
    if isinstance(failure, OSError):
        assert "No space left on device" in str(error.value)
    assert not dst.exists()
    assert list((tmp_path / "models").iterdir()) == []  # no temp dirs left behind
    monkeypatch.undo()
    with pytest.raises(MlxsmallError):
        load_model(dst)


def test_cli_convert(checkpoints, tmp_path, capsys):
    from mlxsmall.cli import main

    dst = tmp_path / "cli-out"
    assert main(["convert", str(checkpoints["mobillama-1b"]), "-o", str(dst), "-q", "--bits", "4",
                 "--group-size", "32"]) == 0
    assert json.loads((dst / "config.json").read_text())["quantization"]["bits"] == 4
    assert main(["convert", str(checkpoints["mobillama-1b"]), "-o", str(dst)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_cli_guesses_mobillama_chat_template(checkpoints, tmp_path):
    from mlxsmall.cli import main

    assert main(["convert", str(checkpoints["mobillama-05b-chat-bf16"]), "-o", str(tmp_path / "chat")]) == 0
    assert "### Human:" in (tmp_path / "chat" / "chat_template.jinja").read_text()
    assert main(["convert", str(checkpoints["mobillama-05b-chat-bf16"]), "-o", str(tmp_path / "plain"),
                 "--chat-template", "none"]) == 0
    assert not (tmp_path / "plain" / "chat_template.jinja").exists()
    assert main(["convert", str(checkpoints["mobillama-05b"]), "-o", str(tmp_path / "base")]) == 0
    assert not (tmp_path / "base" / "chat_template.jinja").exists()
