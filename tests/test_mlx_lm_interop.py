"""mlx-lm itself opens our MobileLLM/MobiLlama directories (through the generated
``model_file``) and generates the same greedy tokens as mlxsmall.

mlx-lm runs in a subprocess with a clean environment, as a user runs it: its CLI
(`python -m mlx_lm generate --trust-remote-code`), its Python ``load`` and its server.
"""

import ast
import importlib.util
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlxsmall.generation import stream_generate
from mlxsmall.hub import load
from mlxsmall.loading import build_model, load_model, save_model
from mlxsmall.mlx_lm_model_file import (
    MODEL_FILE,
    check_no_late_shadowing,
    inline_relative_imports,
    model_file_source,
)
from mlxsmall.quantize import quantize_model

sys.path.insert(0, str(Path(__file__).parent))  # tests/ helper modules (pytest runs in importlib mode)
from fixtures_convert import write_mobilellm, write_mobillama
from loopback import free_port, urlopen
from user_cli import clean_env as user_clean_env

PROMPT = "Hello! How are you"
MAX_TOKENS = 12

# kind -> (tiny_config_dict arch, overrides)
KINDS = {
    "mobilellm": ("mobilellm", {"num_key_value_heads": 4}),
    "mobilellm-gqa": ("mobilellm", {}),
    "mobilellm-ls-shared-kv": ("mobilellm-ls", {}),
    "mobilellm-ls-own-kv": ("mobilellm-ls", {"layer_sharing_kv": "own"}),
    "mobillama-shared-ffn": ("mobillama", {}),
    "mobillama-per-layer-ffn": ("mobillama-1b", {}),
}
PRECISIONS = ("fp32", "q4", "mixed_3_6")
CASES = [(kind, precision) for kind in KINDS for precision in PRECISIONS]


def cases(fast):
    """Every case; those not in ``fast`` are marked slow (CI runs them all)."""
    return [
        pytest.param(*case, id="-".join(case), marks=() if case in fast else pytest.mark.slow)
        for case in CASES
    ]


@pytest.fixture
def model_dirs(tmp_path, tiny_config, tiny_tokenizer_dir):
    """``model_dir(kind, precision) -> Path``: a tiny random model in our format."""
    made = {}

    def model_dir(kind, precision):
        if (kind, precision) not in made:
            arch, overrides = KINDS[kind]
            config = tiny_config(arch, **overrides)
            mx.random.seed(0)
            model = build_model(config)
            if precision == "q4":
                config = quantize_model(model, config, bits=4, group_size=32)
            elif precision != "fp32":
                config = quantize_model(model, config, recipe=precision, group_size=32)
            path = tmp_path / f"{kind}-{precision}"
            save_model(path, model, config, tokenizer_src_dir=tiny_tokenizer_dir)
            made[kind, precision] = path
        return made[kind, precision]

    return model_dir


def clean_env(tmp_path):
    return user_clean_env(tmp_path, TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def ours(path):
    """mlxsmall's greedy ``(token ids, text)``, weights exactly as stored (same kernels as mlx-lm)."""
    model, tokenizer = load(path, dtype=None, dequantize=False)
    steps = list(stream_generate(model, tokenizer, PROMPT, max_tokens=MAX_TOKENS, temperature=0.0))
    return [step.token for step in steps], "".join(step.text for step in steps)


MLX_LM_LOAD = """
import json, sys
import mlx.core as mx
import mlx_lm
from mlx_lm.sample_utils import make_sampler
model, tokenizer = mlx_lm.load(sys.argv[1], trust_remote_code=True)
prompt = tokenizer.encode(sys.argv[2])
tokens = [r.token for r in mlx_lm.stream_generate(
    model, tokenizer, prompt, max_tokens=int(sys.argv[3]), sampler=make_sampler(temp=0.0))]
logits = model(mx.array(prompt)[None])[0, -1]
print(json.dumps({"tokens": tokens, "logits": logits.tolist(),
                  "class": type(model).__module__ + "." + type(model).__name__}))
"""


@pytest.mark.parametrize("kind,precision", cases(fast={("mobilellm-gqa", "mixed_3_6")}))
def test_mlx_lm_load_generates_our_tokens(model_dirs, tmp_path, kind, precision):
    path = model_dirs(kind, precision)
    done = subprocess.run(
        [sys.executable, "-c", MLX_LM_LOAD, str(path), PROMPT, str(MAX_TOKENS)],
        capture_output=True, text=True, env=clean_env(tmp_path), timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    assert theirs["class"] == "custom_model.Model"  # built from our file, not an mlx-lm module
    tokens, _ = ours(path)
    assert len(tokens) > 1
    assert theirs["tokens"] == tokens
    # The whole next-token distribution, not only its argmax (tiny random models often
    # repeat one token, which a different function could repeat too).
    model, tokenizer = load(path, dtype=None, dequantize=False)
    logits = model(mx.array(tokenizer.encode(PROMPT))[None])[0, -1]
    np.testing.assert_allclose(np.array(theirs["logits"]), np.array(logits), rtol=1e-5, atol=1e-5)


def test_logit_comparison_tells_the_layer_sharing_modes_apart(tiny_config):
    """The same stored blocks under shared KV, own KV and no sharing give different
    logits, so matching logits above pin down which function mlx-lm runs."""
    from mlx.utils import tree_flatten

    mx.random.seed(0)
    shared = build_model(tiny_config("mobilellm-ls"))
    weights = list(tree_flatten(shared.parameters()))
    prompt = mx.array([[5, 17, 42, 99, 7, 3]])
    outputs = [np.array(shared(prompt)[0, -1])]
    for overrides in ({"layer_sharing_kv": "own"}, {"layer_sharing": False}):
        variant = build_model(tiny_config("mobilellm-ls", **overrides))
        variant.load_weights(weights)
        outputs.append(np.array(variant(prompt)[0, -1]))
    for i in range(3):
        for j in range(i + 1, 3):
            assert np.abs(outputs[i] - outputs[j]).max() > 1e-3


@pytest.mark.parametrize(
    "kind,precision",
    cases(fast={("mobillama-shared-ffn", "fp32"), ("mobilellm-ls-shared-kv", "q4")}),
)
def test_mlx_lm_cli_generates_our_text(model_dirs, tmp_path, kind, precision):
    path = model_dirs(kind, precision)
    done = subprocess.run(
        [sys.executable, "-m", "mlx_lm", "generate", "--model", str(path), "--trust-remote-code",
         "--prompt", PROMPT, "--max-tokens", str(MAX_TOKENS), "--temp", "0",
         "--ignore-chat-template", "--verbose", "False"],
        capture_output=True, text=True, env=clean_env(tmp_path), timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    tokens, text = ours(path)
    assert len(tokens) > 1
    assert done.stdout == text + "\n"


@pytest.mark.slow
@pytest.mark.parametrize("upstream,quantize", [("mobilellm-ls", True), ("mobillama", False)])
def test_converted_checkpoints_open_in_mlx_lm(tmp_path, upstream, quantize):
    """Upstream-layout checkpoints through `mlxsmall convert`, then mlx-lm's CLI."""
    source = (write_mobilellm(tmp_path / "hf", layer_sharing=True) if upstream == "mobilellm-ls"
              else write_mobillama(tmp_path / "hf", shared=True))
    path = tmp_path / "ours"
    env = clean_env(tmp_path)
    command = [sys.executable, "-m", "mlxsmall", "convert", str(source), "-o", str(path)]
    done = subprocess.run(command + (["-q"] if quantize else []), capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    done = subprocess.run(
        [sys.executable, "-m", "mlx_lm", "generate", "--model", str(path), "--trust-remote-code",
         "--prompt", PROMPT, "--max-tokens", str(MAX_TOKENS), "--temp", "0",
         "--ignore-chat-template", "--verbose", "False"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    tokens, text = ours(path)
    assert len(tokens) > 1
    assert done.stdout == text + "\n"


def test_model_file_is_written_only_where_mlx_lm_needs_it(make_tiny_model):
    for arch in ("mobilellm", "mobilellm-ls", "mobillama", "mobillama-1b"):
        path = make_tiny_model(arch)
        config = json.loads((path / "config.json").read_text())
        assert config["model_file"] == MODEL_FILE
        assert (path / MODEL_FILE).read_text() == model_file_source(config["model_type"])
        # Our loader builds its own classes and hands back a config without the key.
        _, loaded_config = load_model(path)
        assert "model_file" not in loaded_config
    llama = make_tiny_model("llama")  # mlx-lm ships llama: nothing to add
    assert not (llama / MODEL_FILE).exists()
    assert "model_file" not in json.loads((llama / "config.json").read_text())


def test_model_file_stands_alone_and_shares_weights(make_tiny_model):
    """The file imports only mlx, mlx_lm and the standard library; the shared FFN is one module."""
    for model_type in ("mobilellm", "mobillama"):
        tree = ast.parse(model_file_source(model_type))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0 and node.module.split(".")[0] != "mlxsmall"
            elif isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] != "mlxsmall" for a in node.names)
    path = make_tiny_model("mobillama", bits=4)
    spec = importlib.util.spec_from_file_location("custom_model", path / MODEL_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = json.loads((path / "config.json").read_text())
    model = module.Model(module.ModelArgs.from_dict(config))
    assert type(model.model).__name__ == "MobiLlamaModel"
    assert not hasattr(model.layers[0], "mlp") and hasattr(model.model, "shared_mlp")


def test_inlining_refuses_what_would_change_meaning():
    """One namespace for all modules: a later module may not rebind a global that an
    earlier one looks up at call time, and nothing outside mlx/mlx_lm/stdlib comes along."""
    base = "def helper():\n    return 1\n\ndef build():\n    return helper()\n"
    shadowing = "from . import base\n\ndef helper():\n    return 2\n"
    harmless = "from .base import helper\n\ndef build():\n    return helper() + 1\n"
    trees = {"base": ast.parse(base), "variant": ast.parse(shadowing)}
    with pytest.raises(ValueError, match="redefines 'helper'"):
        check_no_late_shadowing(["base", "variant"], trees)
    check_no_late_shadowing(["base", "variant"], {"base": ast.parse(base), "variant": ast.parse(harmless)})
    assert inline_relative_imports(harmless, ast.parse(harmless), "variant").startswith("helper = base.helper\n")
    with pytest.raises(ValueError, match="models/variant.py:1: imports torch"):
        inline_relative_imports("import torch\n", ast.parse("import torch\n"), "variant")


def test_export_leaves_the_model_file_behind(make_tiny_model, tmp_path):
    from mlxsmall.convert.export import export_hf

    out = export_hf(make_tiny_model("mobillama"), tmp_path / "hf")
    assert not (out / MODEL_FILE).exists()
    assert "model_file" not in json.loads((out / "config.json").read_text())


def complete_when_up(base: str, server: subprocess.Popen, log_path: Path) -> dict:
    """Wait (bounded) for the server to answer, then ask for one greedy completion."""
    deadline = time.monotonic() + 120
    while True:
        try:
            urlopen(base + "/v1/models", timeout=5).read()
            break
        except OSError:
            assert server.poll() is None, log_path.read_text()[-2000:]
            assert time.monotonic() < deadline, "mlx_lm.server did not start"
            time.sleep(0.5)
    request = urllib.request.Request(
        base + "/v1/completions",
        data=json.dumps({"model": "default_model", "prompt": PROMPT, "max_tokens": MAX_TOKENS,
                         "temperature": 0.0}).encode(),
        headers={"Content-Type": "application/json"},
    )
    return json.loads(urlopen(request, timeout=120).read())


@pytest.mark.slow
def test_mlx_lm_server_serves_our_model(model_dirs, tmp_path):
    path = model_dirs("mobilellm-ls-shared-kv", "q4")
    port = free_port()
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlx_lm", "server", "--model", str(path), "--trust-remote-code",
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=clean_env(tmp_path),
        )
        try:
            reply = complete_when_up(f"http://127.0.0.1:{port}", server, tmp_path / "server.log")
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    _, text = ours(path)
    assert reply["choices"][0]["text"] == text
