"""Tiny VLM end to end on synthetic shapes: does it learn to name colour and shape? (issue 8)

    python bench/vlm_shapes.py            # ~1-3 minutes on 2 CPU cores

Builds a tiny random CLIP tower (frozen, never trained) + projector + tiny MobileLLM LM, a byte-level BPE
tokenizer, and draws coloured shapes (4 colours x 3 shapes, random position/size) with Pillow. Stage 0 trains
the LM on the captions alone (a stand-in for a pretrained LM), stage 1 the projector only, stage 2 projector
+ LM. Reports colour / shape accuracy of greedy captions on held-out images against chance.
"""

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import mlxsmall  # noqa: F401  (OpenBLAS before mlx)
import mlx.core as mx

from mlxsmall.convert.vlm import vlm_config
from mlxsmall.eval.shapes import SHAPE_COLOURS, SHAPES, draw_shape
from mlxsmall.images import image_processor_for
from mlxsmall.loading import build_model, load_tokenizer
from mlxsmall.train.trainer import TrainConfig
from mlxsmall.train.vlm_train import VLMTrainSettings, train_vlm
from mlxsmall.vlm import generate_vlm

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def build_tokenizer(directory: Path, texts):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "chat_template": CHATML}))
    (directory / "config.json").write_text(json.dumps({"eos_token_id": 2}))
    return load_tokenizer(directory)


def make_set(count, rng, size):
    samples = []
    for _ in range(count):
        colour, shape = rng.choice(list(SHAPE_COLOURS)), rng.choice(SHAPES)
        samples.append({"image": draw_shape(shape, colour, size, jitter=rng), "caption": f"a {colour} {shape}",
                        "colour": colour, "shape": shape})
    return samples


def accuracy(model, tokenizer, processor, samples):
    colour_hits = shape_hits = both = 0
    for s in samples:
        text = generate_vlm(model, tokenizer, processor, "Describe the image.", [s["image"]], max_tokens=8)
        words = text.replace(".", " ").split()[:3]  # the caption: "a <colour> <shape>"
        c, sh = s["colour"] in words, s["shape"] in words
        colour_hits += c
        shape_hits += sh
        both += c and sh
    n = len(samples)
    return {"colour": colour_hits / n, "shape": shape_hits / n, "both": both / n}


def run(args, seed):
    rng = random.Random(seed)
    image_size = 32
    train, test = make_set(args.train, rng, image_size), make_set(args.test, rng, image_size)
    texts = [f"a {c} {s}" for c in SHAPE_COLOURS for s in SHAPES] * 20 + ["Describe the image."] * 20
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(Path(tmp), texts)
    text_config = dict(model_type="mobilellm", hidden_size=128, num_hidden_layers=4, intermediate_size=256,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=320, share_embedding=True,
                       eos_token_id=2)
    vision_config = dict(model_type="clip_vision_model", hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, image_size=image_size, patch_size=8)
    mx.random.seed(seed)
    model = build_model(vlm_config(text_config, vision_config, projector_type=args.projector))
    processor = image_processor_for(vision_config)
    results = {"untrained": accuracy(model, tokenizer, processor, test)}
    # Stage 0 stands in for a pretrained LM: text-only captions (no image), so it knows the caption
    # language but cannot tell which caption fits an image.
    text_only = [{"caption": s["caption"]} for s in train]
    plan = [("0: LM on captions, no image", "finetune", text_only, args.steps0, 1e-3),
            ("1: projector only", "projector", train, args.steps1, 2e-3),
            ("2: projector + LM", "finetune", train, args.steps2, 1e-3)]
    for label, stage, data, steps, lr in plan:
        if steps <= 0:
            continue
        tic = time.perf_counter()
        history = train_vlm(model, tokenizer, processor, data,
                            VLMTrainSettings(stage=stage, train=TrainConfig(
                                steps=steps, batch_size=16, learning_rate=lr, min_learning_rate=lr * 0.05,
                                warmup_steps=10, report_every=50, seed=seed)))
        results[label] = accuracy(model, tokenizer, processor, test)
        print(f"seed {seed} stage {label}: {steps} steps {time.perf_counter() - tic:.0f}s, loss "
              + " ".join(f"{h['loss']:.3f}" for h in history) + f" -> {results[label]}")
    return model.num_image_tokens, results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=240)
    parser.add_argument("--test", type=int, default=60)
    parser.add_argument("--steps0", type=int, default=100)
    parser.add_argument("--steps1", type=int, default=150)
    parser.add_argument("--steps2", type=int, default=100)
    parser.add_argument("--projector", default="mlp2x_gelu", choices=["mlp2x_gelu", "pool_mlp2x_gelu"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    runs = [run(args, seed) for seed in args.seeds]
    tokens = runs[0][0]
    print(f"\n{args.projector}, {tokens} image tokens, {args.train} train / {args.test} held-out images, "
          f"seeds {args.seeds}")
    print(f"chance: colour {1 / len(SHAPE_COLOURS):.3f}  shape {1 / len(SHAPES):.3f}  "
          f"both {1 / len(SHAPE_COLOURS) / len(SHAPES):.3f}")
    for stage in runs[0][1]:
        values = {k: [r[1][stage][k] for r in runs] for k in ("colour", "shape", "both")}
        print(f"{stage:<30} " + "  ".join(f"{k} {sum(v) / len(v):.3f}" for k, v in values.items())
              + (f"  (per seed both: {', '.join(f'{x:.2f}' for x in values['both'])})" if len(runs) > 1 else ""))


if __name__ == "__main__":
    main()
