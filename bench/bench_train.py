"""Training throughput: mlxsmall's trainer vs mlx-lm's LoRA machinery, side by side.

Same base weights (fp32, dequantized once), same LoRA layout (rank, scale,
every q/k/v/o/gate/up/down projection of every block), same data (rows of
exactly --seq-len + 1 tokens, so neither side pads), same batch size and
optimizer. Each side runs 2 x --steps steps; the first --steps are warm-up
(compilation) and the tokens/s of the second window counts. The sides run
--repeats times in alternating order (A B, B A, ...) and the best window of
each is compared, so a burst of load on a shared machine hurts neither side
systematically.

    python bench/bench_train.py                      # the offline default model
    python bench/bench_train.py --model ./my-model --steps 5 --seq-len 128
"""

import argparse
import time

import mlxsmall  # noqa: F401  (OpenBLAS before mlx)
import mlx.core as mx
import mlx.optimizers as optim
from mlx.utils import tree_map

TEXT = (
    "Small language models run on phones, tablets and laptops. MobileLLM is deep and thin; "
    "MobiLlama shares one feed-forward network across its blocks. Quantization stores weights "
    "in fewer bits, and low-rank adapters finetune a frozen base with a few million parameters. "
)


def make_rows(tokenizer, count, seq_len):
    ids = tokenizer.encode(TEXT * (1 + (count * (seq_len + 1)) // 40))
    need = count * (seq_len + 1)
    while len(ids) < need:
        ids = ids + ids
    return [ids[i * (seq_len + 1):(i + 1) * (seq_len + 1)] for i in range(count)]


def bench_ours(model_dir, rows, args):
    from mlxsmall import events
    from mlxsmall.loading import load_model
    from mlxsmall.train.adapters import apply_adapters
    from mlxsmall.train.data import BatchStream
    from mlxsmall.train.trainer import TrainConfig, Trainer

    model, _ = load_model(model_dir, dtype="float32", dequantize=True)
    mx.random.seed(0)
    apply_adapters(model, rank=args.rank, scale=20.0)
    stream = BatchStream([(r, 0) for r in rows], batch_size=args.batch_size,
                         max_length=args.seq_len, shuffle=False)
    config = TrainConfig(steps=2 * args.steps, batch_size=args.batch_size, learning_rate=1e-5,
                         report_every=args.steps, eval_every=0, save_every=0)
    reports = []
    unsubscribe = events.subscribe(
        lambda e: reports.append(e["tokens_per_second"]) if e.get("phase") == "step" else None)
    try:
        Trainer(model, stream, config).train()
    finally:
        unsubscribe()
    return reports[-1]


def bench_mlx_lm(model_dir, rows, args):
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.tuner.trainer import TrainingArgs, train
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import dequantize_model, load

    model, _ = load(str(model_dir))
    dequantize_model(model)
    model.update(tree_map(lambda p: p.astype(mx.float32), model.parameters()))
    model.freeze()
    mx.random.seed(0)
    keys = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    linear_to_lora_layers(model, len(model.layers),
                          {"rank": args.rank, "scale": 20.0, "dropout": 0.0, "keys": keys})

    class Rows:  # mlx-lm's dataset protocol: item -> (tokens, prompt offset)
        def __getitem__(self, i):
            return rows[i], 0

        def __len__(self):
            return len(rows)

    reports = []

    class Callback(TrainingCallback):
        def on_train_loss_report(self, info):
            reports.append(info["tokens_per_second"])

    training_args = TrainingArgs(batch_size=args.batch_size, iters=2 * args.steps,
                                 steps_per_report=args.steps, steps_per_eval=10**9,
                                 steps_per_save=10**9, max_seq_length=args.seq_len + 1,
                                 adapter_file=str(args.scratch / "mlx_lm_adapters.safetensors"))
    train(model, optim.AdamW(learning_rate=1e-5), Rows(), None, training_args,
          training_callback=Callback())
    return reports[-1]


def main():
    import tempfile
    from pathlib import Path

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory (default: offline default model)")
    parser.add_argument("--steps", type=int, default=4, help="steps per window (warm-up + measured)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds per side")
    args = parser.parse_args()
    args.scratch = Path(tempfile.mkdtemp(prefix="bench_train."))

    from mlxsmall.hub import resolve_model_path
    from mlxsmall.loading import load_tokenizer

    if args.model:
        model_dir = resolve_model_path(args.model)
    else:
        from mlxsmall.hub import default_model_path

        model_dir = default_model_path()
    tokenizer = load_tokenizer(model_dir)
    rows = make_rows(tokenizer, 2 * args.steps * args.batch_size, args.seq_len)

    started = time.time()
    runs = {"mlx-lm": [], "mlxsmall": []}
    sides = [("mlx-lm", bench_mlx_lm), ("mlxsmall", bench_ours)]
    for round_index in range(args.repeats):
        for name, bench in sides if round_index % 2 == 0 else sides[::-1]:
            runs[name].append(bench(model_dir, rows, args))
    theirs, ours = max(runs["mlx-lm"]), max(runs["mlxsmall"])
    print(f"\nmodel {model_dir.name}, LoRA rank {args.rank} on all projections, batch "
          f"{args.batch_size} x {args.seq_len} tokens, fp32, device {mx.default_device()}")
    print(f"mlx-lm lora trainer: {theirs:8.1f} tok/s   (rounds: {', '.join(f'{v:.1f}' for v in runs['mlx-lm'])})")
    print(f"mlxsmall trainer:    {ours:8.1f} tok/s   (rounds: {', '.join(f'{v:.1f}' for v in runs['mlxsmall'])})")
    print(f"ratio (ours / mlx-lm): {ours / theirs:.2f}x   ({time.time() - started:.0f} s total)")


if __name__ == "__main__":
    main()
