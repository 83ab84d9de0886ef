"""Scores for evaluation tasks: pure functions of predictions and references.

Nothing here touches a model except ``loglikelihoods`` and ``perplexity``,
which only call ``model(tokens) -> logits`` (batch, length, vocab).
"""

import math
import re
import string
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import mlx.core as mx

# ---------------------------------------------------------------------------------------------
# Question answering: SQuAD's exact match and token F1


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower case, drop punctuation and articles, squeeze spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def f1_score(prediction: str, reference: str) -> float:
    prediction_tokens = normalize_answer(prediction).split()
    reference_tokens = normalize_answer(reference).split()
    if not prediction_tokens or not reference_tokens:
        return float(prediction_tokens == reference_tokens)
    common = Counter(prediction_tokens) & Counter(reference_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(prediction_tokens)
    recall = same / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------------------------------------
# Summarization: ROUGE through Google's rouge-score package

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge(prediction: str, reference: str) -> Dict[str, float]:
    """ROUGE-1/2/L F-measures (with Porter stemming, as the CNN/DM and XSum papers report)."""
    from rouge_score import rouge_scorer

    scorer = _rouge_scorer(rouge_scorer)
    scores = scorer.score(reference, prediction)
    return {name: scores[name].fmeasure for name in ROUGE_TYPES}


_SCORER = None


def _rouge_scorer(module):
    global _SCORER
    if _SCORER is None:
        _SCORER = module.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    return _SCORER


# ---------------------------------------------------------------------------------------------
# Text-to-SQL: normalised exact match (execution accuracy lives in sql_suite.py)


def normalize_sql(query: str) -> str:
    query = query.strip().rstrip(";").strip()
    query = re.sub(r"\s+", " ", query)
    query = re.sub(r"\s*([(),=<>])\s*", r"\1", query)
    return query.lower()


def sql_exact_match(prediction: str, reference: str) -> float:
    return float(normalize_sql(prediction) == normalize_sql(reference))


# ---------------------------------------------------------------------------------------------
# Log-likelihood scoring (multiple choice, perplexity)


def loglikelihoods(
    model,
    requests: Sequence[Tuple[List[int], List[int]]],
    *,
    batch_size: int = 8,
    max_length: int = 2048,
    pad_id: int = 0,
    on_batch: Optional[Callable[[int], None]] = None,
) -> List[Tuple[float, int, bool]]:
    """``(sum log p(continuation | context), number of tokens, is greedy)`` per request.

    Requests are ``(context_ids, continuation_ids)``; context_ids must be non-empty. Rows are
    right-padded into batches: with a causal mask, padding after a row's end cannot change
    its logits. Contexts longer than ``max_length`` lose their oldest tokens.
    """
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i][0]) - len(requests[i][1]))
    results: List[Optional[Tuple[float, int, bool]]] = [None] * len(requests)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        rows = []
        for i in chunk:
            context, continuation = requests[i]
            if not context or not continuation:
                raise ValueError("loglikelihood requests need a non-empty context and continuation")
            row = (list(context) + list(continuation))[-(max_length + 1):]
            rows.append((row, len(continuation)))
        width = max(len(row) - 1 for row, _ in rows)
        inputs = mx.array([row[:-1] + [pad_id] * (width - len(row) + 1) for row, _ in rows])
        logits = model(inputs).astype(mx.float32)
        for b, (i, (row, n)) in enumerate(zip(chunk, rows)):
            positions = logits[b, len(row) - 1 - n : len(row) - 1]
            logprobs = positions - mx.logsumexp(positions, axis=-1, keepdims=True)
            targets = mx.array(row[-n:])
            picked = mx.take_along_axis(logprobs, targets[:, None], axis=-1).squeeze(-1)
            greedy = mx.all(mx.argmax(logprobs, axis=-1) == targets)
            mx.eval(picked, greedy)
            results[i] = (picked.sum().item(), n, bool(greedy.item()))
        if on_batch is not None:
            on_batch(len(chunk))
    return results


def choose(logprob_sums: Sequence[float], lengths: Sequence[int]) -> Tuple[int, int]:
    """Index of the best choice by summed log-likelihood (lm-eval's ``acc``) and by
    log-likelihood divided by ``lengths`` (``acc_norm``: pass ``len(choice)`` of each choice
    string, without the target delimiter). Ties go to the first choice, as ``np.argmax``."""
    raw = max(range(len(logprob_sums)), key=lambda i: logprob_sums[i])
    normalised = max(range(len(logprob_sums)), key=lambda i: logprob_sums[i] / lengths[i] if lengths[i] else -math.inf)
    return raw, normalised


def perplexity(
    model,
    tokens: Sequence[int],
    *,
    window: int = 512,
    batch_size: int = 4,
    on_batch: Optional[Callable[[int], None]] = None,
) -> Dict[str, float]:
    """Token-level perplexity of ``tokens`` in non-overlapping windows of ``window`` tokens.

    Every token except the very first is predicted once; each window's first token is
    predicted from the end of the previous window (one token of overlap as context).
    """
    tokens = list(tokens)
    if len(tokens) < 2:
        raise ValueError("perplexity needs at least two tokens")
    requests = []
    for start in range(1, len(tokens), window):
        context_start = max(0, start - 1)
        requests.append(([tokens[context_start]], tokens[start : start + window]))
    # Each window carries its own single-token context: windows are scored independently.
    scored = loglikelihoods(model, requests, batch_size=batch_size, max_length=window + 1, on_batch=on_batch)
    nll = -sum(s for s, _, _ in scored)
    count = sum(n for _, n, _ in scored)
    return {"perplexity": math.exp(nll / count), "nll": nll, "tokens": count}
