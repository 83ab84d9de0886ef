"""Training edges a user hits: fuse from another directory, resume with changed settings,
what a killed checkpoint write or prune leaves, dropout under data parallel."""

import json
import os
import subprocess
import sys

import mlxsmall  # noqa: F401  (preloads OpenBLAS before mlx)
import mlx.core as mx
import mlx.nn as nn
import pytest

from mlxsmall.train import checkpoint as ckpt
from mlxsmall.train.trainer import GlobalBatchDropout


def cli(cwd, *args):
    home = cwd.parent / "home" if cwd.name == "elsewhere" else cwd / "home"
    env = dict(os.environ, HOME=str(home), XDG_CACHE_HOME=str(home / "cache"), HF_HOME=str(home / "hf"),
               HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "mlxsmall", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_finetune_resume_and_fuse_from_the_command_line(make_tiny_model, tmp_path, tiny_corpus):
    make_tiny_model("llama", path=tmp_path / "tiny")
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps({"text": line}) for line in tiny_corpus * 3))
    common = ["finetune", "tiny", "--data", "data.jsonl", "-o", "run", "--rank", "4", "--batch-size", "2",
              "--max-length", "32", "--save-every", "1", "--eval-every", "0", "--val-batches", "1", "--quiet"]
    first = cli(tmp_path, *common, "--steps", "2")
    assert first.returncode == 0, first.stderr[-2000:]
    config = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert config["base_model"] == str((tmp_path / "tiny").resolve())

    # What a kill leaves: a half-written checkpoint of a dead process, a half-pruned one,
    # trash; a live process's temporary directory is not ours to remove.
    checkpoints = tmp_path / "run" / "checkpoints"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = [checkpoints / f".tmp-step-0000003-{dead.stdout.strip()}", checkpoints / "step-0000000",
             checkpoints / ".trash-step-0000001-1"]
    for path in stale:
        path.mkdir()
        (path / "trainable.safetensors").write_bytes(b"partial")
    live = checkpoints / f".tmp-step-0000009-{os.getpid()}"
    live.mkdir()

    changed_rank = cli(tmp_path, *common, "--steps", "3", "--resume", "--rank", "8")
    assert changed_rank.returncode != 0
    error = changed_rank.stderr.strip().splitlines()[-1]
    assert "the run used rank=4, this one 8" in error and "Traceback" not in changed_rank.stderr
    assert json.loads((tmp_path / "run" / "adapter_config.json").read_text())["lora_parameters"]["rank"] == 4
    assert not any(path.exists() for path in stale) and live.exists()

    changed_lr = cli(tmp_path, *common, "--steps", "3", "--resume", "--learning-rate", "3e-4")
    assert changed_lr.returncode == 0, changed_lr.stderr[-2000:]
    assert "warning:" in changed_lr.stderr and "learning_rate=0.0001" in changed_lr.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    fused = cli(elsewhere, "fuse", "--adapters", "../run", "-o", "fused")
    assert fused.returncode == 0, fused.stderr[-2000:]
    assert (elsewhere / "fused" / "config.json").is_file()


def test_fuse_finds_a_base_recorded_relative_to_the_adapters(make_tiny_model, tmp_path, monkeypatch):
    from mlxsmall.train.fuse import recorded_base

    make_tiny_model("llama", path=tmp_path / "tiny")
    (tmp_path / "adapters").mkdir()
    monkeypatch.chdir(tmp_path / "adapters")
    assert recorded_base(tmp_path / "adapters", {"base_model": "../tiny"}) == tmp_path / "adapters" / "../tiny"
    with pytest.raises(mlxsmall.errors.MlxsmallError, match=r"adapter_config.json: base_model .*moved"):
        recorded_base(tmp_path / "adapters", {"base_model": str(tmp_path / "gone")})


def test_remove_stale_keeps_complete_checkpoints(tmp_path):
    root = tmp_path / "checkpoints"
    ckpt.save_checkpoint(root, 1, {"w": mx.zeros(2)}, {}, {"examples": 1})
    half = root / "step-0000000"
    half.mkdir()
    (half / "state.json").write_text("{}")  # its weights were deleted first
    assert [p.name for p in ckpt.checkpoint_dirs(root)] == ["step-0000001"]
    assert ckpt.remove_stale(root) == [half]
    assert ckpt.latest_checkpoint(root).name == "step-0000001"


@pytest.mark.parametrize("rank", [0, 1])
def test_data_parallel_dropout_gives_each_sample_the_single_process_mask(rank):
    x = mx.ones((4, 3, 8))
    single = nn.Dropout(0.5)
    mx.random.seed(7)
    expected = single(x)[rank::2]
    sharded = nn.Dropout(0.5)
    sharded.__class__ = GlobalBatchDropout
    sharded.rank, sharded.world_size = rank, 2
    mx.random.seed(7)
    assert mx.array_equal(sharded(x[rank::2]), expected).item()
