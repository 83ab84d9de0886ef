"""Data parallel for real: 2 processes on localhost over MLX's ring backend
follow the loss curve of one process with the same global batch."""

import json
import os
import subprocess
import sys
import textwrap

import mlx.core as mx
import numpy as np
import pytest

RUN = textwrap.dedent("""
    import json, sys
    import mlxsmall
    import mlx.core as mx
    from mlxsmall import events
    from mlxsmall.train.finetune import finetune
    from test_train_distributed import settings

    model, data, output = sys.argv[1:4]
    losses = []
    events.subscribe(lambda e: losses.append(e["loss"]) if e.get("phase") == "step" else None)
    result = finetune(model, data, output, settings())
    group = mx.distributed.init()
    if group.rank() == 0:
        with open(output + "/losses.json", "w") as f:
            json.dump({"world_size": group.size(), "losses": losses, "val": result.final_val_loss}, f)
""")


def settings():
    from mlxsmall.train.finetune import FinetuneSettings
    from mlxsmall.train.trainer import TrainConfig

    train = TrainConfig(steps=5, batch_size=4, grad_accumulation=2, learning_rate=1e-3,
                        warmup_steps=1, eval_every=0, save_every=0, val_batches=1)
    # dropout > 0: every rank must give each sample the mask one process gives it
    return FinetuneSettings(method="lora", rank=4, dropout=0.2, max_length=48, train=train)


@pytest.mark.slow  # minutes on 2 cores (measured with --durations)
def test_two_ring_processes_follow_the_single_process_loss_curve(make_tiny_model, tmp_path):
    model = make_tiny_model("mobillama")
    data = tmp_path / "data"
    data.mkdir()
    records = [{"prompt": f"Question {i}?", "completion": f"Answer {i * 7} is {i % 3}."} for i in range(24)]
    (data / "train.jsonl").write_text("\n".join(json.dumps(r) for r in records[:20]))
    (data / "valid.jsonl").write_text("\n".join(json.dumps(r) for r in records[20:]))
    script = tmp_path / "run.py"
    script.write_text(RUN)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.getcwd()]))
    port = 20000 + os.getpid() % 20000
    # `mlx.launch` (its entry point, run with this interpreter)
    launch = [sys.executable, "-c", "import sys; from mlx._distributed_utils.launch import main; sys.exit(main())",
              "--backend", "ring",
              "-n", "2", "--starting-port", str(port), sys.executable, str(script),
              str(model), str(data), str(tmp_path / "parallel")]
    completed = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300)
    if completed.returncode != 0 and "ring" in completed.stderr and "not available" in completed.stderr:
        pytest.skip("MLX ring backend not available")
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-3000:]
    parallel = json.loads((tmp_path / "parallel" / "losses.json").read_text())
    assert parallel["world_size"] == 2

    from mlxsmall import events
    from mlxsmall.train.finetune import finetune

    losses = []
    unsubscribe = events.subscribe(lambda e: losses.append(e["loss"]) if e.get("phase") == "step" else None)
    try:
        single = finetune(str(model), str(data), tmp_path / "single", settings())
    finally:
        unsubscribe()

    # same global batch: same curve up to float summation order
    np.testing.assert_allclose(parallel["losses"], losses, rtol=1e-4)
    assert parallel["val"] == pytest.approx(single.final_val_loss, rel=1e-4)
    a = mx.load(str(tmp_path / "parallel" / "adapters.safetensors"))
    b = mx.load(str(tmp_path / "single" / "adapters.safetensors"))
    for key in b:
        np.testing.assert_allclose(np.array(a[key]), np.array(b[key]), atol=1e-5)
    # only rank 0 wrote: one log, one line per step
    log = (tmp_path / "parallel" / "train_log.jsonl").read_text().splitlines()
    assert sum(json.loads(line)["phase"] == "step" for line in log) == 5
