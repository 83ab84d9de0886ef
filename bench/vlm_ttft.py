"""Image-encode time and time to first token, with and without token compression (issue 8).

    python bench/vlm_ttft.py                        # CLIP ViT-L/14-336 + MobileLLM-125M shape, random weights
    python bench/vlm_ttft.py --vision clip-vit-b16-224 --repeats 5

Random weights in the published shapes (timing does not depend on the values). One process, both
projectors measured side by side on the same vision tower and LM: `mlp2x_gelu` (576 image tokens for
L/14-336) and `pool_mlp2x_gelu` (stride 2: 144). Reports medians over --repeats after one warm-up.
"""

import argparse
import statistics
import time

import mlxsmall  # noqa: F401  (OpenBLAS before mlx)
import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import make_prompt_cache

from mlxsmall.models.vision import PRESETS
from mlxsmall.convert.vlm import vlm_config
from mlxsmall.loading import build_model

MOBILELLM_125M = dict(model_type="mobilellm", hidden_size=576, num_hidden_layers=30, intermediate_size=1536,
                      num_attention_heads=9, num_key_value_heads=3, vocab_size=32000, share_embedding=True)


def run_once(model, pixels, text_tokens: int):
    """``(encode s, prefill s, encode CPU s, prefill CPU s)`` for one image + ``text_tokens`` question tokens.

    CPU seconds (all threads of this process) are reported too: on a shared machine wall time swings with
    other people's load, CPU time much less."""
    marker, n = model.args.image_token_index, model.num_image_tokens
    ids = mx.array([[1] + [marker] * n + list(range(100, 100 + text_tokens))])
    start, cpu_start = time.perf_counter(), time.process_time()
    features = model.encode_image(pixels)
    mx.eval(features)
    encoded, cpu_encoded = time.perf_counter(), time.process_time()
    logits = model(ids, cache=make_prompt_cache(model), input_embeddings=model.embed_inputs(ids, image_features=features))
    mx.eval(mx.argmax(logits[:, -1], axis=-1))
    return (encoded - start, time.perf_counter() - encoded, cpu_encoded - cpu_start,
            time.process_time() - cpu_encoded)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vision", default="clip-vit-l14-336", choices=sorted(PRESETS))
    parser.add_argument("--text-tokens", type=int, default=32, help="question tokens after the image")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args()
    dtype = getattr(mx, args.dtype)
    vision = PRESETS[args.vision]
    size = vision["image_size"]
    pixels = mx.array(np.random.default_rng(0).standard_normal((1, size, size, 3)).astype(np.float32)).astype(dtype)
    mx.random.seed(0)
    base = build_model(vlm_config(MOBILELLM_125M, vision, projector_type="mlp2x_gelu"))
    base.set_dtype(dtype)
    mx.eval(base.parameters())
    pooled = build_model(vlm_config(MOBILELLM_125M, vision, projector_type="pool_mlp2x_gelu"))
    pooled.update(base.parameters())  # same weights: the projectors differ only in pooling
    print(f"device {mx.default_device()}, {args.dtype}, vision {args.vision}, LM MobileLLM-125M shape, "
          f"{args.text_tokens} text tokens, median of {args.repeats}")
    models = {"mlp2x_gelu": base, "pool_mlp2x_gelu": pooled}
    times = {name: [] for name in models}
    for repeat in range(args.repeats + 1):  # interleaved, so both see the same machine load; run 0 warms up
        for name, model in models.items():
            timing = run_once(model, pixels, args.text_tokens)
            if repeat:
                times[name].append(timing)
    summary = {}
    for name, model in models.items():
        encode, ttft, encode_cpu, ttft_cpu = (statistics.median(t[i] for t in times[name]) for i in range(4))
        summary[name] = (encode, ttft)
        prompt = 1 + model.num_image_tokens + args.text_tokens
        print(f"{name:<16} image tokens {model.num_image_tokens:>4}  prompt {prompt:>4}  "
              f"image encode {encode * 1000:8.1f} ms (CPU {encode_cpu * 1000:8.1f})  "
              f"TTFT (prefill) {ttft * 1000:8.1f} ms (CPU {ttft_cpu * 1000:8.1f})  "
              f"total {(encode + ttft) * 1000:8.1f} ms")
    (e0, t0), (e1, t1) = summary["mlp2x_gelu"], summary["pool_mlp2x_gelu"]
    print(f"compression: prefill x{t0 / t1:.2f} faster, encode + prefill x{(e0 + t0) / (e1 + t1):.2f} faster "
          "(the tower does the same work either way: pooling comes after it)")

if __name__ == "__main__":
    main()
