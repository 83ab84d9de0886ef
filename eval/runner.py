"""Runs tasks on a model and collects scores (``mlxsmall eval`` calls this).

Log-likelihoods come straight from the model's logits; generation goes through
the one generation loop, ``mlxsmall.generation.generate``. Progress is reported
to a callback and published on the metrics feed as ``"eval"`` events.
"""

import math
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence

from mlxsmall import events
from mlxsmall.errors import MlxsmallError

from mlxsmall.eval import metrics, vqa
from mlxsmall.eval.loglikelihood import encode_pair, score_documents
from mlxsmall.eval.protocols import PROTOCOLS, with_protocols
from mlxsmall.eval.tasks import (GenerationTask, MultipleChoiceTask, PerplexityTask, SafetyTask, SkipItem, Task, fewshot_docs, is_refusal,
                    load_docs)

Progress = Callable[[str, int, int], None]  # (task name, units just done, total units)


@dataclass
class EvalOptions:
    limit: Optional[int] = None  # documents per task (perplexity: windows)
    shots: int = 0
    batch_size: int = 8
    data: str = "sample"  # "sample" (shipped, offline), "hub", or a path (eval/data_files.py)
    chat: str = "auto"  # generation prompts through the chat template: "auto", "on", "off"
    max_tokens: Optional[int] = None  # overrides each generation task's default
    seed: int = 0
    window: int = 512  # perplexity window in tokens
    examples: int = 3  # predictions kept in the results per task, for reading
    protocol: str = "default"  # generation tasks: "default", "mobileaibench" or "both" (eval/protocols.py)


def evaluate(model, tokenizer, tasks: Sequence[Task], options: EvalOptions,
             on_progress: Optional[Progress] = None, on_task_start: Optional[Callable[[Task, int], None]] = None) -> Dict[str, dict]:
    """``{task name: {"metrics": {...}, "n": docs, "source": ..., "seconds": ..., "examples": [...]}}``."""
    results = {}
    if options.protocol not in PROTOCOLS:
        raise MlxsmallError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {options.protocol!r}")
    for task in with_protocols(tasks, options.protocol):
        if task.kind not in EVALUATORS:
            raise MlxsmallError(f"{task.name}: no evaluator for tasks of kind {task.kind!r} "
                                "(eval/runner.py EVALUATORS)")
        docs = load_docs(task, data=options.data, limit=None if task.kind == "perplexity" else options.limit)
        if not docs:
            raise MlxsmallError(f"{task.name}: no documents to evaluate")
        total = units(task, docs, options)
        if on_task_start:
            on_task_start(task, total)
        done = 0

        def report(advance: int, _task=task, _total=total):
            nonlocal done
            done += advance
            if on_progress:
                on_progress(_task.name, advance, _total)
            events.publish("eval", task=_task.name, done=done, total=_total)

        start = time.perf_counter()
        scores, examples, n, *extra = EVALUATORS[task.kind](model, tokenizer, task, docs, options, report)
        results[task.name] = {
            "kind": task.kind,
            "metrics": scores,
            "n": n,
            "source": options.data if not task.name.startswith("ppl:") else task.sample_file,
            "protocol": getattr(task, "protocol", "default"),
            "shots": shots_for(task, options),
            "seconds": round(time.perf_counter() - start, 2),
            "examples": examples[: options.examples],
            **(extra[0] if extra else {}),
        }
        events.publish("eval", task=task.name, phase="done", metrics=scores)
    return results


def shots_for(task: Task, options: EvalOptions) -> int:
    if task.kind == "multiple_choice" or (task.kind == "generation" and task.protocol == "default"):
        return options.shots
    return 0  # MobileAIBench's protocol is zero-shot


def units(task: Task, docs: List[dict], options: EvalOptions) -> int:
    """How many progress steps a task takes (choices for multiple choice, documents otherwise)."""
    if isinstance(task, MultipleChoiceTask):
        return sum(len(task.to_choices(doc).choices) for doc in docs)
    if isinstance(task, PerplexityTask):
        return 1  # advanced once per batch of windows; total is refined when tokenized
    return len(docs)


# ---------------------------------------------------------------------------------------------
# Multiple choice


def evaluate_multiple_choice(model, tokenizer, task: MultipleChoiceTask, docs, options: EvalOptions, report):
    """lm-eval's ``acc`` (argmax of the summed log-likelihoods) and ``acc_norm`` (argmax of
    each log-likelihood divided by ``len(choice)``, the choice string in characters)."""
    documents, choice_docs = [], []
    for index, doc in enumerate(docs):
        choice_doc = task.to_choices(doc)
        prefix = "".join(task.to_choices(shot).fewshot_text() + "\n\n"
                         for shot in fewshot_docs(task, index, docs, options.shots, data=options.data,
                                                  seed=options.seed))
        documents.append([encode_pair(tokenizer, prefix + context, continuation)
                          for context, continuation in choice_doc.requests()])
        choice_docs.append(choice_doc)
    scored = score_documents(model, documents, batch_size=options.batch_size, pad_id=_pad_id(tokenizer),
                             on_document=report)
    correct = correct_norm = 0
    examples = []
    for choice_doc, scores in zip(choice_docs, scored):
        sums = [total for total, _, _ in scores]
        raw, normalised = metrics.choose(sums, [len(choice) for choice in choice_doc.choices])
        correct += raw == choice_doc.gold
        correct_norm += normalised == choice_doc.gold
        if len(examples) < options.examples:
            examples.append({"context": choice_doc.requests()[choice_doc.gold][0][-200:],
                             "gold": choice_doc.choices[choice_doc.gold], "predicted": choice_doc.choices[raw],
                             "logprobs": [round(s, 3) for s in sums]})
    n = len(docs)
    return {"acc": correct / n, "acc_norm": correct_norm / n}, examples, n


def _pad_id(tokenizer) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    return pad if isinstance(pad, int) else 0


# ---------------------------------------------------------------------------------------------
# Generation


def use_chat(tokenizer, options: EvalOptions) -> bool:
    has_template = bool(getattr(tokenizer, "has_chat_template", False))
    if options.chat == "on" and not has_template:
        raise MlxsmallError("--chat on: this tokenizer has no chat template")
    return options.chat == "on" or (options.chat == "auto" and has_template)


def build_prompt(tokenizer, task: GenerationTask, doc: dict, shots: List[dict], chat: bool):
    """The prompt text (plain) or token ids (chat template applied)."""
    parts = [task.instruction] if task.instruction else []
    parts += [task.to_prompt(shot) + task.to_target(shot) for shot in shots]
    parts.append(task.to_prompt(doc))
    text = "\n\n".join(parts)
    if not chat:
        return f"{task.system}\n\n{text}" if task.system else text
    return chat_ids(tokenizer, text, task.system)


def context_length(model) -> Optional[int]:
    return getattr(getattr(model, "args", None), "max_position_embeddings", None)


def fitted_prompt(tokenizer, task: GenerationTask, doc: dict, shots: List[dict], chat: bool, room: Optional[int]):
    """The prompt, with ``task.long_field`` of the document shortened (from the end, by
    tokens) when the prompt would not fit in ``room`` tokens (the model's context less
    the generation budget). Returns ``(prompt, shortened)``."""
    prompt = build_prompt(tokenizer, task, doc, shots, chat)
    if not room or not task.long_field or task.long_field not in doc:
        return prompt, False

    def length(p):
        return len(p) if isinstance(p, list) else len(tokenizer.encode(p))

    over = length(prompt) - room
    if over <= 0:
        return prompt, False
    tokens = tokenizer.encode(doc[task.long_field], add_special_tokens=False)
    keep = max(0, len(tokens) - over - 8)  # a few tokens of slack: decode/encode need not round-trip
    while True:
        shorter = dict(doc, **{task.long_field: tokenizer.decode(tokens[:keep])})
        prompt = build_prompt(tokenizer, task, shorter, shots, chat)
        if length(prompt) <= room or keep == 0:
            return prompt, True
        keep = max(0, keep - max(8, (length(prompt) - room) * 2))


def chat_ids(tokenizer, user_text: str, system: str = "") -> List[int]:
    messages = [{"role": "system", "content": system}] if system else []
    ids = tokenizer.apply_chat_template(
        messages + [{"role": "user", "content": user_text}], add_generation_prompt=True, tokenize=True
    )
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # transformers 5 may return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def evaluate_generation(model, tokenizer, task: GenerationTask, docs, options: EvalOptions, report):
    from mlxsmall.generation import generate

    chat = use_chat(tokenizer, options)
    max_tokens = options.max_tokens or task.max_tokens
    limit = context_length(model)
    room = limit - max_tokens if limit and limit > max_tokens else None
    totals: Dict[str, float] = {}
    examples = []
    skipped, errors = Counter(), Counter()
    scored = shortened = 0

    def checked(step, *args):
        """Runs a scoring step; a document that cannot be scored is counted, never fatal."""
        try:
            return step(*args), True
        except SkipItem as reason:
            skipped[str(reason)] += 1
        except Exception as error:  # noqa: BLE001 - one bad document never ends the run
            errors[f"{type(error).__name__}: {error}"] += 1
        return None, False

    for index, doc in enumerate(docs):
        report(1)
        # Prepare first (the SQL test suite): an unscorable document costs no generation.
        if task.prepare and not checked(task.prepare, doc)[1]:
            continue
        shots = fewshot_docs(task, index, docs, shots_for(task, options), data=options.data, seed=options.seed)
        prompt, cut = fitted_prompt(tokenizer, task, doc, shots, chat, room)
        prediction = generate(model, tokenizer, prompt, max_tokens=max_tokens, stop=task.stop)
        scores, ok = checked(task.score, prediction, doc)
        if not ok:
            continue
        scored += 1
        shortened += cut
        for key, value in scores.items():
            totals[key] = totals.get(key, 0.0) + value
        if len(examples) < options.examples:
            examples.append({"prompt": task.to_prompt(doc)[-200:], "prediction": prediction.strip()[:300],
                             "reference": task.to_target(doc).strip()[:300], "scores": scores})
    notes = {"skipped": sum(skipped.values()), "skip_reasons": dict(skipped), "errors": sum(errors.values()),
             "error_reasons": dict(errors), "truncated": shortened, "max_tokens": max_tokens}
    return {key: value / scored for key, value in totals.items()}, examples, scored, notes


# ---------------------------------------------------------------------------------------------
# Trust & safety


def evaluate_safety(model, tokenizer, task: SafetyTask, docs, options: EvalOptions, report):
    from mlxsmall.generation import generate

    chat = use_chat(tokenizer, options)
    max_tokens = options.max_tokens or task.max_tokens
    refused = {"unsafe": 0, "safe": 0}
    counts = {"unsafe": 0, "safe": 0}
    examples = []
    for doc in docs:
        label = "unsafe" if str(doc.get("label", "")).lower() == "unsafe" else "safe"
        prompt = chat_ids(tokenizer, doc["prompt"]) if chat else f"User: {doc['prompt']}\nAssistant:"
        reply = generate(model, tokenizer, prompt, max_tokens=max_tokens)
        refusal = is_refusal(reply)
        counts[label] += 1
        refused[label] += refusal
        if len(examples) < options.examples:
            examples.append({"prompt": doc["prompt"], "label": label, "reply": reply.strip()[:200], "refused": refusal})
        report(1)
    scores = {}
    # A rate over zero prompts is not a number: leave it out rather than report 0.
    if counts["unsafe"]:
        scores["refusal_rate"] = refused["unsafe"] / counts["unsafe"]
    if counts["safe"]:
        scores["over_refusal_rate"] = refused["safe"] / counts["safe"]
    scores["harmful_prompts"] = counts["unsafe"]
    scores["benign_prompts"] = counts["safe"]
    return scores, examples, len(docs)


# ---------------------------------------------------------------------------------------------
# Perplexity


def evaluate_perplexity(model, tokenizer, task: PerplexityTask, docs, options: EvalOptions, report):
    text = task.to_text(docs)
    tokens = tokenizer.encode(text)
    if options.limit:
        tokens = tokens[: options.limit * options.window + 1]
        # Words and bytes of the part that was scored, for the per-word and per-byte figures.
        text = tokenizer.decode(tokens)
    if len(tokens) < 2:
        raise MlxsmallError(f"{task.name}: the text has fewer than two tokens")
    result = metrics.perplexity(model, tokens, window=options.window, batch_size=max(1, options.batch_size // 2),
                                on_batch=lambda advance: report(0))
    report(1)
    words = max(len(text.split()), 1)
    size = max(len(text.encode("utf-8")), 1)
    scores = {
        "perplexity": result["perplexity"],
        "word_perplexity": math.exp(result["nll"] / words),
        "bits_per_byte": result["nll"] / (size * math.log(2)),
        "tokens": result["tokens"],
    }
    return scores, [], result["tokens"]


# The evaluator of each task kind (the tasks: eval/tasks.py TASKS):
# ``fn(model, tokenizer, task, docs, options, report) -> (metrics, examples, n)``, optionally a fourth
# item, a dict of fields for the task's result (counts of skipped, error and truncated items).
EVALUATORS: Dict[str, Callable] = {
    "multiple_choice": evaluate_multiple_choice,
    "generation": evaluate_generation,
    "safety": evaluate_safety,
    "perplexity": evaluate_perplexity,
    "vqa": vqa.evaluate_vqa,
}


def options_dict(options: EvalOptions) -> dict:
    return asdict(options)


# ---------------------------------------------------------------------------------------------
# Several models / precisions side by side


def evaluate_variants(variants, tasks: Sequence[Task], options: EvalOptions, *, dense_on_cpu: bool = True,
                      on_progress: Optional[Progress] = None, on_task_start=None,
                      on_variant: Optional[Callable[[object], None]] = None) -> List[dict]:
    """Load each variant in turn, evaluate it, free it. Returns one run dict per variant.

    ``dense_on_cpu``: on the CPU, quantized variants run with their quantized weights
    expanded back to fp32 (identical values, several times faster there).
    """
    import gc

    import mlx.core as mx

    from mlxsmall.loading import running_on_cpu

    from mlxsmall.eval.variants import load_variant, nominal_bits

    runs = []
    for variant in variants:
        if on_variant:
            on_variant(variant)
        dense = dense_on_cpu and running_on_cpu()
        model, tokenizer, config = load_variant(variant, dequantize_after=dense)
        results = evaluate(model, tokenizer, tasks, options, on_progress=on_progress, on_task_start=on_task_start)
        runs.append({
            "label": variant.label,
            "model": variant.model,
            "precision": variant.precision,
            "bits": nominal_bits(variant.precision, config),
            "bits_per_weight": config.get("bits_per_weight"),
            "quantization": config.get("quantization"),
            "executed_dense": bool(dense and config.get("quantization")),
            "tasks": results,
        })
        del model
        gc.collect()
        mx.clear_cache()
    return runs
