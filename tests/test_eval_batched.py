"""Batched multiple-choice scoring (shared context once, its KV cache reused per choice) gives the
numbers of scoring every request alone."""

import mlxsmall  # noqa: F401  (preloads OpenBLAS before mlx)
import pytest

from mlxsmall.eval import metrics
from mlxsmall.eval.loglikelihood import encode_pair, score_documents
from mlxsmall.eval.tasks import TASKS, load_docs


def sample_documents(tokenizer, per_task=3):
    documents = []
    for name in ("hellaswag", "winogrande", "boolq", "arc_easy", "siqa"):
        for doc in load_docs(TASKS[name], limit=per_task):
            documents.append([encode_pair(tokenizer, c, t) for c, t in TASKS[name].to_choices(doc).requests()])
    return documents


def assert_same(batched, documents, model, **kwargs):
    alone = [metrics.loglikelihoods(model, requests, batch_size=1, **kwargs) for requests in documents]
    for got, want in zip(batched, alone):
        assert [n for _, n, _ in got] == [n for _, n, _ in want]
        assert [s for s, _, _ in got] == pytest.approx([s for s, _, _ in want], abs=1e-4)
        assert [g for _, _, g in got] == [g for _, _, g in want]


@pytest.mark.parametrize("arch,overrides", [
    ("llama", {}),
    ("mobilellm", {}),
    ("mobilellm-ls", {"layer_sharing_kv": "shared"}),
    ("mobilellm-ls", {"layer_sharing_kv": "own"}),
    ("mobillama", {}),
])
def test_batched_scores_equal_one_request_at_a_time(make_tiny_model, arch, overrides):
    from mlxsmall.hub import load

    model, tokenizer = load(make_tiny_model(arch, **overrides))
    documents = sample_documents(tokenizer)
    # batch_size 3: one document per group, or two of two choices (BoolQ, WinoGrande); ARC's four
    # choices get a pass of their own. 64: every document in one group, left-padded prefixes of
    # different lengths (WinoGrande's shared prefix is shorter than its contexts).
    for batch_size in (3, 64):
        batched = score_documents(model, documents, batch_size=batch_size, pad_id=tokenizer.pad_token_id)
        assert_same(batched, documents, model)


def test_models_without_a_plain_kv_cache_and_long_documents_fall_back(make_tiny_model):
    from mlxsmall.hub import load

    model, tokenizer = load(make_tiny_model("llama"))

    class OtherCache:  # a model whose cache is not one KVCache per layer (sliding window, state space...)
        def __call__(self, inputs, cache=None):
            assert cache is None
            return model(inputs)

        def make_cache(self):
            return [object()]

    documents = sample_documents(tokenizer, per_task=1)
    assert_same(score_documents(OtherCache(), documents, batch_size=4), documents, model)
    # Longer than max_length: the oldest context tokens go, as when scoring alone.
    boolq = documents[2]  # short continuations (" no", " yes"), so only the context is cut
    long_documents = [[([5] * 40 + context, continuation) for context, continuation in boolq]]
    assert_same(score_documents(model, long_documents, max_length=32), long_documents, model, max_length=32)


def test_progress_counts_choices(make_tiny_model):
    from mlxsmall.hub import load

    model, tokenizer = load(make_tiny_model("llama"))
    documents = sample_documents(tokenizer, per_task=1)
    seen = []
    score_documents(model, documents, on_document=seen.append)
    assert sorted(seen) == sorted(len(requests) for requests in documents)
