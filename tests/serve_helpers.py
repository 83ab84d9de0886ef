"""Starting `mlxsmall serve` on a tiny model for the server, attach and browser tests."""

import contextlib
import re
import subprocess
import sys
import threading

import pytest
from loopback import loopback_url
from user_cli import clean_env

MODEL_ID = "tiny"
TIMEOUT = 120  # seconds any one request may take on a busy 2-core machine (a hang fails, not blocks)


def save_tiny_mobillama(path, tokenizer_dir):
    """A tiny random MobiLlama (shared FFN) in our format, for module-scoped servers."""
    import mlx.core as mx
    from mlxsmall.loading import build_model, save_model

    config = dict(hidden_size=64, num_hidden_layers=4, intermediate_size=160, num_attention_heads=4,
                  num_key_value_heads=4, vocab_size=320, rms_norm_eps=1e-5, rope_theta=10000.0,
                  max_position_embeddings=512, eos_token_id=2, model_type="mobillama", shared_ffn=True)
    mx.random.seed(0)
    model = build_model(config)
    mx.eval(model.parameters())
    save_model(path, model, config, tokenizer_src_dir=tokenizer_dir)
    return path


@contextlib.contextmanager
def serving(model_dir, tmp_path, *extra):
    """`mlxsmall serve` on a free port for the ``with`` block: (process, base URL, stderr lines)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "mlxsmall", "serve", str(model_dir), "--host", "127.0.0.1", "--port", "0", "--model-id", MODEL_ID,
         "-m", "16", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=clean_env(tmp_path),
    )
    lines, ready = [], threading.Event()

    def read():
        for line in process.stderr:
            lines.append(line)
            if "serving" in line:
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    ready.wait(timeout=180)
    match = next((re.search(r"(http://[\d.]+:\d+)/v1", line) for line in lines if "serving" in line), None)
    if match is None:
        process.kill()
        pytest.fail("server did not start:\n" + "".join(lines))
    try:
        yield process, loopback_url(match.group(1)), lines
    finally:
        process.terminate()
        process.wait(timeout=30)
