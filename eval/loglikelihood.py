"""Log-likelihoods of multiple-choice continuations, tokenized as lm-eval does.

``encode_pair`` is lm-evaluation-harness's tokenization of one ``(context, continuation)``
request (``lm_eval/api/model.py``: ``loglikelihood`` and ``_encode_pair``).
"""

from typing import Callable, List, Optional, Sequence, Tuple

from . import metrics

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

    ``batch_size`` caps the choices per forward pass. Documents with a request longer than
    ``max_length + 1`` tokens are scored request by request, keeping the newest tokens.
    """
    flat = [request for requests in documents for request in requests]
    scored = metrics.loglikelihoods(model, flat, batch_size=batch_size, max_length=max_length, pad_id=pad_id,
                                    on_batch=on_document)
    results, start = [], 0
    for requests in documents:
        results.append(scored[start : start + len(requests)])
        start += len(requests)
    return results
