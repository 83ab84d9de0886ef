"""A run killed with SIGKILL and resumed ends with exactly the weights of an
uninterrupted run (adapters, optimizer state, step, RNG and data position)."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import mlx.core as mx
import numpy as np
import pytest

RUN = textwrap.dedent("""
    import os, signal, sys
    import mlxsmall
    from mlxsmall import events
    from mlxsmall.train.finetune import finetune
    from test_train_resume import settings

    model, data, output, mode = sys.argv[1:5]
    if mode == "kill":
        def on_event(event):
            # after step 5 finished: the last checkpoint is step 4, step 5 is lost
            if event.get("phase") == "step" and event["step"] == 5:
                os.kill(os.getpid(), signal.SIGKILL)
        events.subscribe(on_event)
    finetune(model, data, output, settings(), resume=(mode == "resume"))
""")


def settings():
    from mlxsmall.train.finetune import FinetuneSettings
    from mlxsmall.train.trainer import TrainConfig

    train = TrainConfig(steps=8, batch_size=2, grad_accumulation=2, learning_rate=3e-3,
                        warmup_steps=2, eval_every=3, save_every=2, keep_checkpoints=2,
                        val_batches=1, seed=5)
    return FinetuneSettings(method="lora", rank=4, dropout=0.2, max_length=48, train=train)


def run(script, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.getcwd()]))
    return subprocess.run([sys.executable, str(script), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # minutes on 2 cores (measured with --durations)
def test_sigkill_then_resume_matches_an_uninterrupted_run(make_tiny_model, tmp_path):
    model = make_tiny_model("mobillama")
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"Question {i}?", "completion": f"Answer {i * 7}."})
                              for i in range(24)))
    script = tmp_path / "run.py"
    script.write_text(RUN)

    killed = run(script, model, data, tmp_path / "resumed", "kill")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    checkpoints = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir())
    assert checkpoints == ["step-0000002", "step-0000004"]
    assert not (tmp_path / "resumed" / "adapters.safetensors").exists()

    resumed = run(script, model, data, tmp_path / "resumed", "resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    from mlxsmall.train.finetune import finetune

    finetune(str(model), str(data), tmp_path / "straight", settings())

    a = mx.load(str(tmp_path / "resumed" / "adapters.safetensors"))
    b = mx.load(str(tmp_path / "straight" / "adapters.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        assert np.array_equal(np.array(a[key]), np.array(b[key])), key
    log = [json.loads(line) for line in (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["phase"] == "step"] == [1, 2, 3, 4, 5, 5, 6, 7, 8]
