"""Training data: formats, prompt masking, packing, deterministic resumable batches."""

import json

import numpy as np
import pytest

from mlxsmall.errors import MlxsmallError
from mlxsmall.train.data import BatchStream, load_split_records, tokenize_records


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    from mlx_lm.tokenizer_utils import load

    return load(tiny_tokenizer_dir)


def test_prompt_tokens_are_masked_for_completions_and_chat(tokenizer):
    records = [{"prompt": "What is the capital of France?", "completion": "Paris."}]
    (tokens, prompt_length), = tokenize_records(records, tokenizer)
    prompt_only = tokenizer.apply_chat_template(
        [{"role": "user", "content": records[0]["prompt"]}], add_generation_prompt=True)
    assert tokens[:prompt_length] == list(prompt_only)
    assert tokenizer.decode(tokens[prompt_length:]).startswith("Paris.")

    chat = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}]
    (tokens, prompt_length), = tokenize_records(chat, tokenizer)
    assert 0 < prompt_length < len(tokens)
    assert tokenize_records(chat, tokenizer, mask_prompt=False)[0][1] == 0
    (text_tokens, text_prompt), = tokenize_records([{"text": "plain text"}], tokenizer)
    assert text_prompt == 0 and text_tokens[-1] == tokenizer.eos_token_id


def test_loss_mask_covers_only_completion_targets():
    examples = [([10, 11, 12, 13, 14], 3)]  # 3 prompt tokens, 2 completion tokens
    batch = BatchStream(examples, batch_size=1, max_length=8).batch(0)
    assert batch.tokens.shape[1] == batch.mask.shape[1] + 1
    targets_with_loss = batch.targets[batch.mask > 0].tolist()
    assert targets_with_loss == [13, 14]


def test_packing_uses_every_token_once_and_keeps_masks():
    examples = [(list(range(100 + 10 * i, 107 + 10 * i)), 2) for i in range(6)]
    stream = BatchStream(examples, batch_size=2, max_length=8, pack=True, seed=3)
    tokens, mask = stream.epoch_rows(0)
    assert tokens.shape[1] == 9 and mask.shape[1] == 8
    # rows overlap by one token: the stream is covered exactly once as targets
    assert np.array_equal(tokens[1:, 0], tokens[:-1, -1])
    prompt_starts = {t[0] for t, _ in examples} | {t[1] for t, _ in examples}
    for row_targets, row_mask in zip(tokens[:, 1:], mask):
        for target, weight in zip(row_targets, row_mask):
            assert (weight == 0) == (int(target) in prompt_starts)


def test_batches_are_a_pure_function_of_position():
    examples = [([1] * (3 + i), 0) for i in range(20)]
    a = BatchStream(examples, batch_size=4, max_length=32, seed=7)
    b = BatchStream(examples, batch_size=4, max_length=32, seed=7)
    for position in (0, 3, 5, 11):  # 11 is in the third epoch
        assert np.array_equal(a.batch(position).tokens, b.batch(position).tokens)
    assert not np.array_equal(a.order(0), a.order(1))  # reshuffled every epoch
    shard0, shard1 = a.batch(2).shard(0, 2), a.batch(2).shard(1, 2)
    assert shard0.tokens.shape[0] == shard1.tokens.shape[0] == 2


def test_bad_data_names_the_file_and_line(tmp_path, tokenizer):
    (tmp_path / "train.jsonl").write_text('{"text": "ok"}\n{not json}\n')
    with pytest.raises(MlxsmallError, match=r"train.jsonl:2"):
        load_split_records(str(tmp_path))
    (tmp_path / "train.jsonl").write_text(json.dumps({"question": "?"}) + "\n")
    train, _ = load_split_records(str(tmp_path))
    with pytest.raises(MlxsmallError, match="expected 'text'"):
        tokenize_records(train, tokenizer)
    with pytest.raises(MlxsmallError, match="fewer than the batch size"):
        BatchStream([([1, 2, 3], 0)], batch_size=4, max_length=8)


def test_single_file_is_split_into_train_and_valid(tmp_path):
    path = tmp_path / "all.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"doc {i}"}) for i in range(20)))
    train, valid = load_split_records(str(path))
    assert len(train) == 18 and len(valid) == 2
    assert load_split_records(str(path)) == (train, valid)
