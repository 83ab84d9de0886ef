"""mlxsmall vlm: vision-language models (build, convert, generate, chat, train, quantize)."""

import argparse
import sys

from ..errors import MlxsmallError
from ._common import Formatter, add_sampling_arguments, sampling_kwargs

EPILOG = """\
examples:
  mlxsmall vlm build --vision ./clip-vit-b16 --lm mobilellm-125m -o ./my-vlm --projector pool
  mlxsmall vlm train ./my-vlm --data captions.jsonl --stage projector -o ./my-vlm-s1
  mlxsmall vlm train ./my-vlm-s1 --data llava_instruct.json --stage finetune --lora-rank 8 -o ./my-vlm-s2
  mlxsmall vlm generate ./my-vlm-s2 --image photo.jpg -p "What is in the picture?"
  mlxsmall vlm chat ./my-vlm-s2 --image https://example.com/cat.png
  mlxsmall vlm quantize ./my-vlm-s2 -o ./my-vlm-q4 --bits 4 --vision fp16
  mlxsmall vlm convert ./llava-hf-checkpoint -o ./llava-mlx

A VLM directory is our usual model format (config.json + safetensors + tokenizer) with LLaVA keys:
vision_tower.*, multi_modal_projector.*, language_model.*.
"""


def register(subparsers):
    parser = subparsers.add_parser(
        "vlm", help="vision-language models: build, train, chat about images",
        description="Small vision-language models: a CLIP/SigLIP vision tower, a projector and one of "
        "our language models (LLaVA layout).", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(title="subcommands", metavar="SUBCOMMAND")

    build = sub.add_parser("build", help="assemble a new VLM from a vision tower and one of our LMs",
                           formatter_class=Formatter,
                           description="Vision tower (HF CLIP/SigLIP dir) + fresh projector + LM. "
                           "The projector is random: train it with `mlxsmall vlm train --stage projector`.")
    build.add_argument("--vision", required=True,
                       help="HF CLIPVisionModel/CLIPModel/SigLIP checkpoint: directory or repo id "
                       "(e.g. openai/clip-vit-base-patch16)")
    build.add_argument("--lm", required=True, help="language model: our model directory or alias")
    build.add_argument("-o", "--output", required=True, help="where to write the VLM")
    build.add_argument("--projector", choices=["mlp", "pool"], default="mlp",
                       help="mlp: LLaVA-1.5 Linear-GELU-Linear; pool: average-pool the patch grid first "
                       "(4x fewer image tokens with stride 2, e.g. 576 -> 144), faster first token")
    build.add_argument("--pool-stride", type=int, default=2, help="pooling window for --projector pool")
    build.add_argument("--feature-layer", type=int, default=-2,
                       help="vision layer to read (HF hidden_states index; -2 = penultimate, as LLaVA)")
    build.add_argument("--seed", type=int, default=0, help="projector initialisation seed")
    build.add_argument("--force", action="store_true", help="overwrite the output directory")
    build.set_defaults(func=run_build)

    convert = sub.add_parser("convert", help="convert a HF LLaVA-layout checkpoint", formatter_class=Formatter)
    convert.add_argument("source", help="HF LLaVA checkpoint directory or repo id (safetensors or pytorch_model.bin)")
    convert.add_argument("-o", "--output", required=True)
    convert.add_argument("--force", action="store_true")
    convert.set_defaults(func=run_convert)

    for name, help_text in (("generate", "answer one prompt about images"), ("chat", "chat about an image")):
        p = sub.add_parser(name, help=help_text, formatter_class=Formatter)
        p.add_argument("model", help="VLM directory")
        p.add_argument("-i", "--image", action="append", default=[], metavar="PATH_OR_URL",
                       help="image file or http(s) URL (repeatable)")
        if name == "generate":
            p.add_argument("-p", "--prompt", required=True, help="question / instruction ('-' reads stdin)")
            p.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
        p.add_argument("--dtype", default="auto", choices=["auto", "stored", "float32", "float16", "bfloat16"],
                       help="auto = fp32 on CPU (fastest there), stored elsewhere")
        add_sampling_arguments(p)
        p.set_defaults(func=run_generate if name == "generate" else run_chat)

    train = sub.add_parser("train", help="stage 1 (projector) or stage 2 (projector + LM) training",
                           formatter_class=Formatter,
                           description="Stage 1: --stage projector on image-caption JSON/JSONL "
                           '({"image": "a.jpg", "caption": "..."}). Stage 2: --stage finetune on LLaVA '
                           'conversation JSON ({"image": ..., "conversations": [{"from": "human", ...}, '
                           '{"from": "gpt", ...}]}), full or --lora-rank R (fused at the end). '
                           "The vision tower stays frozen.")
    train.add_argument("model", help="VLM directory")
    train.add_argument("--data", required=True, help="JSON list or JSONL of samples")
    train.add_argument("--valid", help="held-out samples (same format): validation loss before and after")
    train.add_argument("-o", "--output", required=True, help="where to write the trained VLM")
    train.add_argument("--stage", choices=["projector", "finetune"], default="projector")
    train.add_argument("--steps", type=int, default=200)
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--learning-rate", "--lr", type=float, default=1e-3)
    train.add_argument("--lora-rank", type=int, default=None, help="stage 2: LoRA rank instead of full finetuning")
    train.add_argument("--grad-accumulation", type=int, default=1, help="micro-batches per optimizer step")
    train.add_argument("--max-length", type=int, default=2048, help="tokens per example (image tokens included)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--run-dir", help="training log and checkpoints (default: OUTPUT.run)")
    train.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0: at the end)")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --run-dir")
    train.add_argument("--force", action="store_true", help="overwrite OUTPUT and start --run-dir over")
    train.set_defaults(func=run_train)

    quant = sub.add_parser("quantize", help="quantize the LM and projector; vision tower fp16 or quantized",
                           formatter_class=Formatter)
    quant.add_argument("model", help="VLM directory")
    quant.add_argument("-o", "--output", required=True)
    quant.add_argument("--bits", type=int, default=4)
    quant.add_argument("--group-size", type=int, default=64)
    quant.add_argument("--vision", choices=["fp16", "quantize", "keep"], default="fp16",
                       help="vision tower: fp16 (unquantized, per-module overrides), quantize, or keep as stored")
    quant.add_argument("--force", action="store_true")
    quant.set_defaults(func=run_quantize)
    evaluate = sub.add_parser("eval", help="VQA tasks: vqav2, textvqa, gqa, scienceqa (group: vqa)",
                              formatter_class=Formatter,
                              description="Visual question answering. --data sample (default) runs the tiny "
                              "offline sets in eval/data (images drawn with Pillow); --data hub downloads the "
                              "real datasets with the `datasets` package.")
    evaluate.add_argument("model", help="VLM directory")
    evaluate.add_argument("--tasks", default="vqa", help="comma-separated tasks or the group 'vqa'")
    evaluate.add_argument("--limit", type=int, default=None, help="documents per task")
    evaluate.add_argument("--data", choices=["sample", "hub"], default="sample")
    evaluate.add_argument("--chat", choices=["auto", "on", "off"], default="auto",
                          help="prompts through the chat template (auto: when the tokenizer has one)")
    evaluate.add_argument("--dtype", default="auto", choices=["auto", "stored", "float32", "float16", "bfloat16"])
    evaluate.add_argument("-o", "--output", help="write the results as JSON here")
    evaluate.set_defaults(func=run_eval)
    parser.set_defaults(func=lambda args: parser.print_help() or 0)


def load(args):
    from ..vlm import load_vlm

    if args.dtype == "stored":
        return load_vlm(args.model, dtype=None, dequantize=False)
    if args.dtype == "auto":
        return load_vlm(args.model)
    return load_vlm(args.model, dtype=args.dtype, dequantize=True)


def format_stats(step) -> str:
    encode = f"{step.image_encode_time * 1000:.0f} ms" if step.image_encode_time else "reused"
    if not step.image_tokens:
        encode = "no image"
    return (f"image encode: {encode} ({step.image_tokens} image tokens) | "
            f"TTFT (prefill, after encode): {step.time_to_first_token * 1000:.0f} ms, "
            f"{step.prompt_tokens} prompt tokens | generation: {step.generation_tokens} tokens, "
            f"{step.generation_tps:.1f} tok/s | peak memory: {step.peak_memory:.3f} GB")


def stream_to_stdout(steps):
    """Print the steps' text as it comes; returns ``(last step, whole text)``."""
    last, pieces = None, []
    try:
        for step in steps:
            sys.stdout.write(step.text)
            sys.stdout.flush()
            pieces.append(step.text)
            last = step
    except KeyboardInterrupt:
        print("\n[stopped]", file=sys.stderr)
    print()
    return last, "".join(pieces)


def run_generate(args):
    from ..vlm import load_image, stream_generate_vlm

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    images = [load_image(source) for source in args.image]
    model, tokenizer, processor = load(args)
    last, _ = stream_to_stdout(stream_generate_vlm(
        model, tokenizer, processor, prompt, images, chat=False if args.no_chat else None,
        max_tokens=args.max_tokens, stop=args.stop, **sampling_kwargs(args)))
    if last is not None:
        print(format_stats(last), file=sys.stderr)
    return 0


def run_chat(args):
    from ..vlm import IMAGE_PLACEHOLDER, encode_images, load_image, vision_chat_session

    images = [load_image(source) for source in args.image]
    model, tokenizer, processor = load(args)
    features, seconds = encode_images(model, processor, images) if images else (None, 0.0)
    if images:
        print(f"[{len(images)} image(s) encoded in {seconds * 1000:.0f} ms, "
              f"{model.num_image_tokens * len(images)} image tokens]", file=sys.stderr)
    session = vision_chat_session(model, tokenizer, features, max_tokens=args.max_tokens, stop=list(args.stop))
    print("Type a message (empty line or Ctrl-D to quit).", file=sys.stderr)
    first = True
    while True:
        try:
            text = input(">>> ").strip()
        except EOFError:
            break
        if not text:
            break
        if first and images:
            text = (IMAGE_PLACEHOLDER + "\n") * len(images) + text
        first = False
        last, _ = stream_to_stdout(session.send(text, **sampling_kwargs(args)))
        for notice in session.notices:
            print(f"[{notice}]", file=sys.stderr)
        if last is not None:
            print(f"TTFT: {last.time_to_first_token * 1000:.0f} ms ({last.prompt_tokens} new prompt tokens, "
                  f"image encoded once) | generation: {last.generation_tokens} tokens, {last.generation_tps:.1f} tok/s",
                  file=sys.stderr)
    return 0


def run_build(args):
    from ..convert.vlm import build_vlm
    from ..hub import checkpoint_dir, resolve_model_path

    projector = {"mlp": "mlp2x_gelu", "pool": "pool_mlp2x_gelu"}[args.projector]
    dst = build_vlm(checkpoint_dir(args.vision), resolve_model_path(args.lm), args.output, projector_type=projector, pool_stride=args.pool_stride,
                    feature_layer=args.feature_layer, seed=args.seed, overwrite=args.force)
    print(f"wrote {dst} (projector {projector}: untrained, run `mlxsmall vlm train {dst} --stage projector ...`)")
    return 0


def run_convert(args):
    from ..convert.vlm import convert_llava
    from ..hub import checkpoint_dir

    print(f"wrote {convert_llava(checkpoint_dir(args.source), args.output, overwrite=args.force)}")
    return 0


def run_train(args):
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from ..loading import read_config
    from ..train.vlm_train import TrainConfig, read_samples, train_vlm
    from ..vlm import load_vlm, save_vlm

    from pathlib import Path

    if Path(args.output).exists() and not (args.force or args.resume):
        raise MlxsmallError(f"{args.output}: already exists (pass --force to replace it)")
    samples = read_samples(args.data)
    model, tokenizer, processor = load_vlm(args.model)
    config = read_config(args.model)
    train_config = TrainConfig(stage=args.stage, steps=args.steps, batch_size=args.batch_size,
                               grad_accumulation=args.grad_accumulation, max_length=args.max_length,
                               learning_rate=args.learning_rate, lora_rank=args.lora_rank, seed=args.seed,
                               log_every=max(1, args.steps // 100), save_every=args.save_every)
    run_dir = args.run_dir or f"{args.output.rstrip('/')}.run"
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[status]}"), TimeRemainingColumn())
    with Progress(*columns, transient=False, console=Console(stderr=True)) as bar:
        task = bar.add_task(f"stage {args.stage}", total=args.steps, status="encoding images")

        def show(record):
            bar.update(task, completed=record["step"], status=f"loss {record['loss']:.4f}  "
                       f"lr {record['learning_rate']:.2e}  {record['tokens_per_second']:.0f} tok/s")

        history = train_vlm(model, tokenizer, processor, samples, train_config, on_step=show,
                            valid_samples=read_samples(args.valid) if args.valid else (), output_dir=run_dir,
                            resume=args.resume, force=args.force)
    if history and history[-1].get("phase") == "eval":
        print(f"validation loss: {history[-1]['initial_val_loss']:.4f} -> {history[-1]['val_loss']:.4f}")
    config.pop("quantization", None)  # loaded dequantized as fp32 on CPU; saved dense
    config.pop("quantization_config", None)
    overwrite = args.force or args.resume
    print(f"wrote {save_vlm(args.output, model, config, tokenizer_src_dir=args.model, overwrite=overwrite)} "
          f"(log and checkpoints: {run_dir})")
    return 0


def run_quantize(args):
    from ..loading import read_config
    from ..vlm import load_vlm, quantize_vlm, save_vlm

    model, _, _ = load_vlm(args.model, dtype=None, dequantize=False)
    config = quantize_vlm(model, read_config(args.model), bits=args.bits, group_size=args.group_size,
                          vision=args.vision)
    print(f"wrote {save_vlm(args.output, model, config, tokenizer_src_dir=args.model, overwrite=args.force)}")
    return 0


def run_eval(args):
    from pathlib import Path

    from ..eval import vqa  # noqa: F401  (registers the VQA tasks and their evaluator)
    from ..eval.report import write_json
    from ..eval.runner import EvalOptions, evaluate
    from ..eval.tasks import resolve_tasks

    tasks = resolve_tasks([args.tasks])
    model, tokenizer, _ = load(args)
    options = EvalOptions(limit=args.limit, data=args.data, chat=args.chat)

    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        bars = {}

        def started(task, total):
            bars[task.name] = bar.add_task(task.name, total=total)

        results = evaluate(model, tokenizer, tasks, options, on_task_start=started,
                           on_progress=lambda name, advance, total: bar.advance(bars[name], advance))
    for name, result in results.items():
        metrics = "  ".join(f"{k} {v:.3f}" if k != "image_encode_ms" else f"image encode {v:.1f} ms"
                            for k, v in result["metrics"].items())
        print(f"{name:<10} n={result['n']:<4} {metrics}  ({result['seconds']:.1f}s, {result['source']})")
    if args.output:
        write_json(Path(args.output), {"model": str(args.model), "results": results})
        print(f"wrote {args.output}")
    return 0
