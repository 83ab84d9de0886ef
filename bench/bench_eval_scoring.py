"""Multiple-choice scoring speed: one request at a time vs batched per document, in one process.

"flat" is how `mlxsmall eval` scored before: every (context, choice) request on its own row,
``--batch-size`` rows per forward pass across documents, each row carrying its whole context.
"batched" is `eval/loglikelihood.py`: the shared contexts of a few documents in one left-padded
pass, their KV cache reused by all choices in one right-padded pass. Rounds alternate (flat, batched, flat, ...) so that
background load hits both alike; prints items/s per round, the medians and their ratio, and the
largest difference between the two sides' log-likelihoods.

    python bench/bench_eval_scoring.py                     # default model, commonsense sample sets
    python bench/bench_eval_scoring.py ./my-model --tasks hellaswag,arc_easy --rounds 5
"""

import argparse
import json
import statistics
import time

import mlxsmall  # noqa: F401  (loads OpenBLAS before MLX on Linux)

from mlxsmall.eval import metrics
from mlxsmall.eval.loglikelihood import encode_pair, score_documents
from mlxsmall.eval.tasks import load_docs, resolve_tasks


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="model directory or alias (default: the offline default model)")
    parser.add_argument("--tasks", default="commonsense")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args()

    from mlxsmall.eval.variants import load_variant, parse_variant
    from mlxsmall.hub import default_model_path
    from mlxsmall.loading import running_on_cpu

    base = args.model or str(default_model_path())
    model, tokenizer, _ = load_variant(parse_variant(base, None), dequantize_after=running_on_cpu())
    documents = []
    for task in resolve_tasks([args.tasks]):
        for doc in load_docs(task):
            documents.append([encode_pair(tokenizer, c, t) for c, t in task.to_choices(doc).requests()])
    flat_requests = [request for requests in documents for request in requests]
    pad = tokenizer.pad_token_id if isinstance(tokenizer.pad_token_id, int) else 0

    def flat():
        return metrics.loglikelihoods(model, flat_requests, batch_size=args.batch_size, pad_id=pad)

    def batched():
        return [s for scores in score_documents(model, documents, batch_size=args.batch_size, pad_id=pad)
                for s in scores]

    # Wall-clock items/s, and CPU seconds per item (all threads of this process): on a shared
    # machine the second moves much less with other people's load than the first.
    rates = {"flat": [], "batched": []}
    cpu = {"flat": [], "batched": []}
    results = {}
    for round_ in range(args.rounds):
        for name, run in (("flat", flat), ("batched", batched)):
            start, start_cpu = time.perf_counter(), time.process_time()
            results[name] = run()
            rates[name].append(len(documents) / (time.perf_counter() - start))
            cpu[name].append((time.process_time() - start_cpu) / len(documents))
            print(f"round {round_ + 1} {name:8s} {rates[name][-1]:.3f} items/s, {cpu[name][-1]:.3f} CPU s/item",
                  flush=True)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu.items()}
    largest = max(abs(a[0] - b[0]) for a, b in zip(results["flat"], results["batched"]))
    record = {"items": len(documents), "requests": len(flat_requests), "rounds": rates, "cpu_s_per_item": cpu,
              "median_items_per_s": medians, "median_cpu_s_per_item": cpu_medians,
              "ratio": medians["batched"] / medians["flat"],
              "cpu_ratio": cpu_medians["flat"] / cpu_medians["batched"],
              "max_abs_loglikelihood_difference": largest}
    print(f"{len(documents)} items, {len(flat_requests)} requests (median of {args.rounds}): flat "
          f"{medians['flat']:.3f} items/s ({cpu_medians['flat']:.3f} CPU s/item), batched {medians['batched']:.3f} "
          f"items/s ({cpu_medians['batched']:.3f} CPU s/item); speed-up {record['ratio']:.2f}x wall, "
          f"{record['cpu_ratio']:.2f}x CPU; largest log-likelihood difference {largest:.2e}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(record, handle, indent=1)


if __name__ == "__main__":
    main()
