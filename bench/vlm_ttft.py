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
from mlxsmall.vlm import build_vlm_model, vlm_config

MOBILELLM_125M = dict(model_type="mobilellm", hidden_size=576, num_hidden_layers=30, intermediate_size=1536,
                      num_attention_heads=9, num_key_value_heads=3, vocab_size=32000, share_embedding=True)


def measure(model, pixels, text_tokens: int, repeats: int):
    marker, n = model.args.image_token_index, model.num_image_tokens
    ids = mx.array([[1] + [marker] * n + list(range(100, 100 + text_tokens))])
    encode, ttft = [], []
    for run in range(repeats + 1):
        start = time.perf_counter()
        features = model.encode_image(pixels)
        mx.eval(features)
        encoded = time.perf_counter()
        embeddings = model.embed_inputs(ids, image_features=features)
        cache = make_prompt_cache(model)
        logits = model(ids, cache=cache, input_embeddings=embeddings)
        first = mx.argmax(logits[:, -1], axis=-1)
        mx.eval(first)
        done = time.perf_counter()
        if run:  # the first run warms up
            encode.append(encoded - start)
            ttft.append(done - encoded)
    return n + 1 + text_tokens, statistics.median(encode), statistics.median(ttft)


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
    base = build_vlm_model(vlm_config(MOBILELLM_125M, vision, projector_type="mlp2x_gelu"))
    base.set_dtype(dtype)
    mx.eval(base.parameters())
    pooled = build_vlm_model(vlm_config(MOBILELLM_125M, vision, projector_type="pool_mlp2x_gelu"))
    pooled.update(base.parameters())  # same weights: the projectors differ only in pooling
    print(f"device {mx.default_device()}, {args.dtype}, vision {args.vision}, LM MobileLLM-125M shape, "
          f"{args.text_tokens} text tokens, median of {args.repeats}")
    rows = []
    for name, model in (("mlp2x_gelu", base), ("pool_mlp2x_gelu", pooled)):
        prompt, encode, ttft = measure(model, pixels, args.text_tokens, args.repeats)
        rows.append((name, model.num_image_tokens, prompt, encode, ttft))
        print(f"{name:<16} image tokens {model.num_image_tokens:>4}  prompt {prompt:>4}  "
              f"image encode {encode * 1000:8.1f} ms  TTFT (prefill) {ttft * 1000:8.1f} ms  "
              f"total {(encode + ttft) * 1000:8.1f} ms")
    (_, _, _, e0, t0), (_, _, _, e1, t1) = rows
    print(f"compression: TTFT x{t0 / t1:.2f} faster, encode+TTFT x{(e0 + t0) / (e1 + t1):.2f} faster")


if __name__ == "__main__":
    main()
