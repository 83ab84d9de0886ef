"""mlxsmall vlm: what only vision-language models need (build one from parts, convert a LLaVA checkpoint, train).

Running one goes through the main commands: generate/chat --image, quantize --vision, eval --tasks vqa."""

import argparse

from ..errors import MlxsmallError
from ._common import Formatter, check_input_file, check_model, check_new_output, non_negative_int, positive_int

EPILOG = """\
examples:
  mlxsmall vlm build --vision ./clip-vit-b16 --lm mobilellm-125m -o ./my-vlm --projector pool
  mlxsmall vlm train ./my-vlm --data captions.jsonl --stage projector -o ./my-vlm-s1
  mlxsmall vlm train ./my-vlm-s1 --data llava_instruct.json --stage finetune --lora-rank 8 -o ./my-vlm-s2
  mlxsmall vlm convert ./llava-hf-checkpoint -o ./llava-mlx

running one: the main commands take a VLM directory
  mlxsmall generate ./my-vlm-s2 --image photo.jpg -p "What is in the picture?"
  mlxsmall chat ./my-vlm-s2 --image https://example.com/cat.png
  mlxsmall quantize ./my-vlm-s2 -o ./my-vlm-q4 --bits 4 --vision fp16
  mlxsmall eval ./my-vlm-s2 --tasks vqa --limit 50

A VLM directory is our usual model format (config.json + safetensors + tokenizer) with LLaVA keys:
vision_tower.*, multi_modal_projector.*, language_model.*.
"""


def register(subparsers):
    parser = subparsers.add_parser(
        "vlm", help="vision-language models: build, convert, train",
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
    build.add_argument("--pool-stride", type=positive_int, default=2, help="pooling window for --projector pool")
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
    train.add_argument("--steps", type=positive_int, default=200)
    train.add_argument("--batch-size", type=positive_int, default=8)
    train.add_argument("--learning-rate", "--lr", type=float, default=1e-3)
    train.add_argument("--lora-rank", type=positive_int, default=None,
                       help="stage 2: LoRA rank instead of full finetuning")
    train.add_argument("--grad-accumulation", type=positive_int, default=1, help="micro-batches per optimizer step")
    train.add_argument("--max-length", type=positive_int, default=2048,
                       help="tokens per example (image tokens included)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--run-dir", help="training log and checkpoints (default: OUTPUT.run)")
    train.add_argument("--save-every", type=non_negative_int, default=0,
                       help="checkpoint every N steps (0: at the end)")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --run-dir")
    train.add_argument("--force", action="store_true", help="overwrite OUTPUT and start --run-dir over")
    train.set_defaults(func=run_train)

    parser.set_defaults(func=lambda args: parser.print_help() or 0)


def run_build(args):
    check_model(args.vision)
    check_model(args.lm)
    check_new_output(args.output, args.force)
    from ..convert.vlm import build_vlm
    from ..hub import checkpoint_dir, resolve_model_path

    projector = {"mlp": "mlp2x_gelu", "pool": "pool_mlp2x_gelu"}[args.projector]
    dst = build_vlm(checkpoint_dir(args.vision), resolve_model_path(args.lm), args.output, projector_type=projector, pool_stride=args.pool_stride,
                    feature_layer=args.feature_layer, seed=args.seed, overwrite=args.force)
    print(f"wrote {dst} (projector {projector}: untrained, run `mlxsmall vlm train {dst} --stage projector ...`)")
    return 0


def run_convert(args):
    check_model(args.source)
    check_new_output(args.output, args.force)
    from ..convert.vlm import convert_llava
    from ..hub import checkpoint_dir

    print(f"wrote {convert_llava(checkpoint_dir(args.source), args.output, overwrite=args.force)}")
    return 0


def check_train_arguments(args) -> None:
    import json
    from pathlib import Path

    check_model(args.model)
    config = Path(args.model).expanduser() / "config.json"
    if config.is_file():  # a local directory: it must be a VLM (repo ids are checked once downloaded)
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except (ValueError, AttributeError):
            raise MlxsmallError(f"{config}: not valid JSON") from None
        if model_type != "llava":  # loading.VISION_LANGUAGE_TYPE (loading imports mlx-lm)
            raise MlxsmallError(f"{args.model}: not a vision-language model (build one with `mlxsmall vlm build`)")
    check_input_file(args.data, "--data")
    if args.valid:
        check_input_file(args.valid, "--valid")
    if Path(args.output).exists() and not (args.force or args.resume):
        raise MlxsmallError(f"{args.output}: already exists (pass --force to replace it)")


def run_train(args):
    check_train_arguments(args)
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from ..hub import load
    from ..images import image_processor_for
    from ..loading import read_config, save_model
    from ..train.trainer import TrainConfig
    from ..train.vlm_train import VLMTrainSettings, read_samples, train_vlm

    samples = read_samples(args.data)
    model, tokenizer = load(args.model)
    if not hasattr(model, "vision_tower"):
        raise MlxsmallError(f"{args.model}: not a vision-language model (build one with `mlxsmall vlm build`)")
    config = read_config(args.model)
    loop = TrainConfig(steps=args.steps, batch_size=args.batch_size, grad_accumulation=args.grad_accumulation,
                       learning_rate=args.learning_rate, min_learning_rate=args.learning_rate * 0.05, warmup_steps=10,
                       seed=args.seed, report_every=max(1, args.steps // 100), save_every=args.save_every)
    settings = VLMTrainSettings(stage=args.stage, max_length=args.max_length, lora_rank=args.lora_rank, train=loop)
    run_dir = args.run_dir or f"{args.output.rstrip('/')}.run"
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[status]}"), TimeRemainingColumn())
    with Progress(*columns, transient=False, console=Console(stderr=True)) as bar:
        task = bar.add_task(f"stage {args.stage}", total=args.steps, status="encoding images")

        def show(record):
            bar.update(task, completed=record["step"], status=f"loss {record['loss']:.4f}  "
                       f"lr {record['learning_rate']:.2e}  {record['tokens_per_second']:.0f} tok/s")

        history = train_vlm(model, tokenizer, image_processor_for(model.vision_config), samples, settings, on_step=show,
                            valid_samples=read_samples(args.valid) if args.valid else (), output_dir=run_dir,
                            resume=args.resume, force=args.force)
    if history and history[-1].get("phase") == "eval":
        print(f"validation loss: {history[-1]['initial_val_loss']:.4f} -> {history[-1]['val_loss']:.4f}")
    config.pop("quantization", None)  # loaded dequantized as fp32 on CPU; saved dense
    config.pop("quantization_config", None)
    overwrite = args.force or args.resume
    print(f"wrote {save_model(args.output, model, config, tokenizer_src_dir=args.model, overwrite=overwrite)} "
          f"(log and checkpoints: {run_dir})")
    return 0
