"""Log-likelihoods of multiple-choice continuations, tokenized as lm-eval does, batched.

``encode_pair`` is lm-evaluation-harness's tokenization of one ``(context, continuation)``
request (``lm_eval/api/model.py``: ``loglikelihood`` and ``_encode_pair``).

``score_documents`` scores the choices of a document together. They share their context
(WinoGrande's share a prefix of it): the shared tokens of several documents go through
the model once, left-padded into one batch (mlx-lm's ``BatchKVCache`` masks the padding),
that cache is gathered so each choice row gets its document's copy, and the rest of every
choice runs in one right-padded pass on top of it. The logits of the shared prefixes are
never computed (MLX is lazy and only the cache is evaluated). Models whose cache is not a
plain ``KVCache`` per layer are scored request by request, padded across documents
(``metrics.loglikelihoods``, how scoring worked before), as are documents longer than
``max_length``; the numbers are the same.
"""

from typing import Callable, List, Optional, Sequence, Tuple

import mlx.core as mx
from mlx_lm.models.cache import BatchKVCache, KVCache, make_prompt_cache

from mlxsmall.eval import metrics

Request = Tuple[List[int], List[int]]  # (context ids, continuation ids)
Score = Tuple[float, int, bool]  # (sum log p(continuation | context), tokens, continuation is greedy)


def prefix_token_id(tokenizer) -> int:
    """What an empty context is replaced by: BOS, else EOS (lm-eval's ``prefix_token_id``)."""
    for name in ("bos_token_id", "eos_token_id"):
        token = getattr(tokenizer, name, None)
        if isinstance(token, int):
            return token
    return 0


def encode_pair(tokenizer, context: str, continuation: str) -> Request:
    """Token ids of ``context`` and ``continuation`` exactly as lm-eval makes them.

    Trailing spaces of the context move to the continuation; the continuation's ids are the
    joint text's ids after the context's own (so " Paris" keeps its word-boundary token).
    An empty context becomes the prefix token.
    """
    if not context:
        tail = tokenizer.encode(continuation, add_special_tokens=False)
        start = prefix_token_id(tokenizer)
        return ([start], tail) if tail[0] != start else (tail[:1], tail[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    head = tokenizer.encode(context)
    tail = whole[len(head):]
    if not tail:  # the context's last token swallowed the whole continuation (lm-eval would fail here)
        tail = tokenizer.encode(continuation, add_special_tokens=False)
    return head, tail


def _kv_layers(model) -> Optional[int]:
    """Cache slots of the model when every one is a plain KVCache (else None: no batched cache)."""
    cache = make_prompt_cache(model)
    return len(cache) if all(type(c) is KVCache for c in cache) else None


def _shared_prefix(requests: Sequence[Request]) -> int:
    """Tokens every request starts with, at most the shortest context."""
    rows = [context + continuation for context, continuation in requests]
    limit = min(len(context) for context, _ in requests)
    shared = 0
    while shared < limit and all(row[shared] == rows[0][shared] for row in rows):
        shared += 1
    return shared


def _score_rows(logits, rows, continuations, start: int) -> List[Score]:
    """Log-likelihood of each continuation from ``logits`` of ``row[start:-1]``, right-padded."""
    picked = []
    for b, (row, continuation) in enumerate(zip(rows, continuations)):
        end = len(row) - 1 - start[b]
        positions = logits[b, end - len(continuation) : end]
        logprobs = positions - mx.logsumexp(positions, axis=-1, keepdims=True)
        targets = mx.array(list(continuation))
        picked.append((mx.take_along_axis(logprobs, targets[:, None], axis=-1).sum(),
                       mx.all(mx.argmax(logprobs, axis=-1) == targets)))
    mx.eval(picked)
    return [(total.item(), len(c), bool(greedy.item())) for (total, greedy), c in zip(picked, continuations)]


def score_group(model, documents: Sequence[Sequence[Request]], layers: int, pad_id: int = 0) -> List[List[Score]]:
    """Several documents in two forward passes: their shared prefixes, then every choice."""
    # The last shared token stays in every choice row: its logits predict the first token that differs.
    cached = [max(_shared_prefix(requests) - 1, 0) for requests in documents]
    width = max(cached)
    cache = None
    if width:
        cache = [BatchKVCache([width - c for c in cached]) for _ in range(layers)]
        prefixes = [[pad_id] * (width - c) + list(requests[0][0][:c]) for requests, c in zip(documents, cached)]
        model(mx.array(prefixes), cache=cache)
        mx.eval([(layer.keys, layer.values) for layer in cache])
        owner = mx.array([d for d, requests in enumerate(documents) for _ in requests])
        for layer in cache:
            layer.filter(owner)  # one copy of its document's prefix per choice row
    rows, continuations, starts = [], [], []
    for requests, c in zip(documents, cached):
        for context, continuation in requests:
            rows.append(list(context) + list(continuation))
            continuations.append(continuation)
            starts.append(c)
    longest = max(len(row) - 1 - c for row, c in zip(rows, starts))
    inputs = mx.array([row[c:-1] + [pad_id] * (longest - (len(row) - 1 - c)) for row, c in zip(rows, starts)])
    scores = _score_rows(model(inputs, cache=cache).astype(mx.float32), rows, continuations, starts)
    grouped, at = [], 0
    for requests in documents:
        grouped.append(scores[at : at + len(requests)])
        at += len(requests)
    return grouped


def score_documents(
    model,
    documents: Sequence[Sequence[Request]],
    *,
    batch_size: int = 8,
    max_length: int = 2048,
    pad_id: int = 0,
    on_document: Optional[Callable[[int], None]] = None,
) -> List[List[Score]]:
    """``(log-likelihood, tokens, greedy)`` for every request of every document.

    ``batch_size`` caps the choice rows per forward pass (a document with more choices
    than that gets a pass of its own). Documents with a request longer than
    ``max_length + 1`` tokens are scored request by request, keeping the newest tokens.
    """
    for requests in documents:
        if not requests or any(not context or not continuation for context, continuation in requests):
            raise ValueError("loglikelihood requests need a non-empty context and continuation")
    layers = _kv_layers(model)
    results: List[Optional[List[Score]]] = [None] * len(documents)

    def done(index, scores):
        results[index] = scores
        if on_document is not None:
            on_document(len(scores))

    fits = []
    for index, requests in enumerate(documents):
        if max(len(c) + len(t) for c, t in requests) > max_length + 1:
            done(index, metrics.loglikelihoods(model, requests, batch_size=1, max_length=max_length))
        elif layers is None:
            done(index, metrics.loglikelihoods(model, requests, batch_size=batch_size, pad_id=pad_id))
        else:
            fits.append(index)
    # Similar lengths side by side: less padding in both passes.
    fits.sort(key=lambda i: (-len(documents[i][0][0]), -max(len(t) for _, t in documents[i])))
    group: List[int] = []
    for index in fits + [None]:
        if group and (index is None or sum(len(documents[i]) for i in group) + len(documents[index]) > batch_size):
            for i, scores in zip(group, score_group(model, [documents[i] for i in group], layers, pad_id)):
                done(i, scores)
            group = []
        if index is not None:
            group.append(index)
    return results
