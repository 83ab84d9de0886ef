"""Training data: mlx-lm's JSONL formats in, fixed-shape token batches out.

Records come in the three mlx-lm formats (``text``, ``prompt``/``completion``,
chat ``messages``); mlx-lm's dataset classes tokenize them (chat template
applied, prompt offset returned for masking). On top of that this module adds
what our trainer needs to resume exactly and to run data parallel:

- a batch order that is a pure function of ``(seed, epoch)``, so the data
  position is just the number of batches consumed;
- per-token loss masks (prompt tokens masked out, padding masked out);
- optional sequence packing (documents concatenated, cut into rows of
  ``max_length + 1`` tokens).
"""

import types
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import MlxsmallError
from ..jsonl import read_jsonl

# (token ids, number of leading tokens that are prompt and carry no loss)
Example = Tuple[List[int], int]

SPLIT_FILES = {"train": ("train.jsonl",), "valid": ("valid.jsonl", "validation.jsonl", "val.jsonl")}
PAD_MULTIPLE = 16  # pad unpacked batches to a multiple of this to limit recompiles


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def tokenize_records(records: Sequence[dict], tokenizer, *, mask_prompt: bool = True,
                     source: str = "data") -> List[Example]:
    """Tokenize mlx-lm style records into ``(tokens, prompt_length)`` pairs.

    Chat and prompt/completion records go through the tokenizer's chat template
    (mlx-lm's ``ChatDataset``/``CompletionsDataset``); a tokenizer without one
    (base MobileLLM) gets prompt + completion concatenated as plain text.
    """
    from mlx_lm.tuner.datasets import create_dataset

    kind = check_records(records, source)
    if kind != "text" and not has_chat_template(tokenizer):
        if kind == "messages":
            raise MlxsmallError(f"{source}: chat 'messages' records need a tokenizer with a chat "
                                "template; this model has none (use 'text' or 'prompt'/'completion')")
        return [plain_completion(r, tokenizer, mask_prompt) for r in records]
    config = types.SimpleNamespace(mask_prompt=mask_prompt and kind != "text")
    dataset = create_dataset(list(records), tokenizer, config)
    examples = []
    for index, record in enumerate(records):
        try:
            tokens, offset = dataset.process(record)
        except Exception as error:  # tokenizer/template errors name the record
            raise MlxsmallError(f"{source}: record {index}: {error}") from None
        examples.append((list(tokens), int(offset)))
    return examples


def check_records(records: Sequence[dict], source: str = "data") -> str:
    """The one format of ``records`` ("text", "completion" or "messages"); raises, naming the
    record, on an unknown or a second format. Needs no tokenizer: runs before the model loads."""
    kind = format_of(records[0], source)
    for index, record in enumerate(records):
        if format_of(record, source) != kind:
            raise MlxsmallError(f"{source}: record {index} is {format_of(record, source)!r}, "
                                f"but the first record is {kind!r}; use one format per file")
    return kind


def format_of(record: dict, source: str) -> str:
    if "messages" in record:
        return "messages"
    if "prompt" in record and "completion" in record:
        return "completion"
    if "text" in record:
        return "text"
    raise MlxsmallError(f"{source}: record has keys {sorted(record)}; expected 'text', "
                        "'prompt' and 'completion', or 'messages'")


def plain_completion(record: dict, tokenizer, mask_prompt: bool) -> Example:
    prompt = tokenizer.encode(record["prompt"])
    completion = tokenizer.encode(record["completion"], add_special_tokens=False)
    tokens = list(prompt) + list(completion)
    if tokenizer.eos_token_id is not None and tokens[-1] != tokenizer.eos_token_id:
        tokens.append(tokenizer.eos_token_id)
    return tokens, (len(prompt) if mask_prompt else 0)


def load_split_records(data: str, *, valid_fraction: float = 0.1, seed: int = 0):
    """Records for (train, valid) from a directory, one JSONL file or a hub dataset id.

    A directory holds ``train.jsonl`` and optionally ``valid.jsonl``; a single
    file or a directory without a validation file is split deterministically.
    """
    path = Path(data)
    if path.is_dir():
        train_file = find_split(path, "train")
        if train_file is None:
            raise MlxsmallError(f"{path}: no train.jsonl in this directory")
        train = read_jsonl(train_file)
        valid_file = find_split(path, "valid")
        if valid_file is not None:
            return train, read_jsonl(valid_file)
        return split_off(train, valid_fraction, seed)
    if path.suffix == ".jsonl" or path.exists():
        if not path.exists():
            raise MlxsmallError(f"{path}: no such file")
        return split_off(read_jsonl(path), valid_fraction, seed)
    return load_hub_records(data, valid_fraction, seed)


def find_split(directory: Path, split: str) -> Optional[Path]:
    for name in SPLIT_FILES[split]:
        if (directory / name).exists():
            return directory / name
    return None


def split_off(records, valid_fraction, seed):
    if len(records) < 2 or valid_fraction <= 0:
        return records, []
    order = np.random.default_rng(seed).permutation(len(records))
    n_valid = max(1, int(round(len(records) * valid_fraction)))
    valid = [records[i] for i in sorted(order[:n_valid])]
    train = [records[i] for i in sorted(order[n_valid:])]
    return train, valid


def load_hub_records(dataset_id: str, valid_fraction: float, seed: int):
    """A Hugging Face dataset, imported lazily (``pip install datasets``)."""
    try:
        import datasets
    except ImportError:
        raise MlxsmallError(f"{dataset_id}: not a local file or directory; to use a hub dataset "
                            "install the 'datasets' package (pip install datasets)") from None
    try:
        loaded = datasets.load_dataset(dataset_id)
    except Exception as error:
        raise MlxsmallError(f"{dataset_id}: could not load hub dataset ({error})") from None
    train = list(loaded["train"])
    for name in ("validation", "valid", "test"):
        if name in loaded:
            return train, list(loaded[name])
    return split_off(train, valid_fraction, seed)


@dataclass
class Batch:
    """One global batch: ``tokens`` (B, L+1) int32, ``mask`` (B, L) float32 over targets."""

    tokens: np.ndarray
    mask: np.ndarray

    @property
    def inputs(self):
        return self.tokens[:, :-1]

    @property
    def targets(self):
        return self.tokens[:, 1:]

    def shard(self, rank: int, world_size: int) -> "Batch":
        return Batch(self.tokens[rank::world_size], self.mask[rank::world_size])

    @property
    def num_tokens(self) -> int:
        return int(self.mask.sum())


def example_arrays(example: Example, max_length: int):
    tokens, prompt_length = example
    tokens = np.asarray(tokens[: max_length + 1], dtype=np.int32)
    mask = np.ones(max(len(tokens) - 1, 0), dtype=np.float32)
    # target t predicts token t+1: prompt tokens 1..prompt_length-1 carry no loss
    mask[: max(prompt_length - 1, 0)] = 0.0
    return tokens, mask


class BatchStream:
    """Deterministic, resumable batches over a list of examples.

    ``batch(position)`` is a pure function of the examples, the settings and
    the global batch index, so resuming is just continuing from a position and
    every data-parallel rank can build the same global batch and take its rows.
    """

    def __init__(self, examples: Sequence[Example], *, batch_size: int, max_length: int,
                 pack: bool = False, seed: int = 0, pad_id: int = 0, shuffle: bool = True):
        if not examples:
            raise MlxsmallError("the dataset is empty")
        self.examples = list(examples)
        self.batch_size = batch_size
        self.max_length = max_length
        self.pack = pack
        self.seed = seed
        self.pad_id = pad_id
        self.shuffle = shuffle
        self._epoch_cache = (None, None)
        rows = self.packed_row_count() if pack else len(self.examples)
        self.batches_per_epoch = rows // batch_size
        if self.batches_per_epoch == 0:
            unit = "packed rows" if pack else "examples"
            raise MlxsmallError(f"the dataset has {rows} {unit}, fewer than the batch size "
                                f"{batch_size}; lower --batch-size or add data")

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.examples))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))

    @staticmethod
    def count_packed_rows(examples: Sequence[Example], max_length: int) -> int:
        total = sum(len(tokens) for tokens, _ in examples)
        return max(total - 1, 0) // max_length

    def packed_row_count(self) -> int:
        return self.count_packed_rows(self.examples, self.max_length)

    def epoch_rows(self, epoch: int):
        """All packed rows of one epoch: a token stream cut into ``max_length + 1`` windows
        that overlap by one token, so every token is a target exactly once."""
        if self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        stream, masks = [], []
        for index in self.order(epoch):
            tokens, prompt_length = self.examples[index]
            stream.append(np.asarray(tokens, dtype=np.int32))
            weight = np.ones(len(tokens), dtype=np.float32)
            weight[:prompt_length] = 0.0  # weight of a token as a *target*
            masks.append(weight)
        stream = np.concatenate(stream)
        weights = np.concatenate(masks)
        n_rows = (len(stream) - 1) // self.max_length
        starts = np.arange(n_rows) * self.max_length
        window = starts[:, None] + np.arange(self.max_length + 1)[None, :]
        rows = (stream[window], weights[window[:, 1:]])
        self._epoch_cache = (epoch, rows)
        return rows

    def batch(self, position: int) -> Batch:
        epoch, index = divmod(position, self.batches_per_epoch)
        start = index * self.batch_size
        if self.pack:
            tokens, mask = self.epoch_rows(epoch)
            return Batch(tokens[start:start + self.batch_size], mask[start:start + self.batch_size])
        chosen = self.order(epoch)[start:start + self.batch_size]
        arrays = [example_arrays(self.examples[i], self.max_length) for i in chosen]
        longest = max(len(tokens) for tokens, _ in arrays)
        width = min(-(-(longest - 1) // PAD_MULTIPLE) * PAD_MULTIPLE, self.max_length)
        tokens = np.full((len(arrays), width + 1), self.pad_id, dtype=np.int32)
        mask = np.zeros((len(arrays), width), dtype=np.float32)
        for row, (t, m) in enumerate(arrays):
            tokens[row, : len(t)] = t
            mask[row, : len(m)] = m
        return Batch(tokens, mask)

    def __iter__(self) -> Iterable[Batch]:
        position = 0
        while True:
            yield self.batch(position)
            position += 1


def check_finetune_data(data: str, *, seed: int = 0):
    """``(train, valid)`` records of a local --data file or directory, read and checked (JSON,
    one known format per split) without a tokenizer, so that a bad file fails before the model
    loads; None for a hub dataset id (read later)."""
    path = Path(data).expanduser()
    if not path.exists():
        return None
    train_records, valid_records = load_split_records(str(path), seed=seed)
    if path.is_file():  # one file, split here: one format in all of it
        check_records(train_records + valid_records, str(data))
    else:
        check_records(train_records, f"{data} (train)")
        if valid_records:
            check_records(valid_records, f"{data} (valid)")
    return train_records, valid_records


def load_finetune_data(data: str, tokenizer, *, mask_prompt: bool = True, seed: int = 0, records=None):
    """Tokenized (train, valid) examples for ``mlxsmall finetune --data`` (``records``: already
    read by ``check_finetune_data``)."""
    train_records, valid_records = records or load_split_records(data, seed=seed)
    train = tokenize_records(train_records, tokenizer, mask_prompt=mask_prompt, source=f"{data} (train)")
    valid = (tokenize_records(valid_records, tokenizer, mask_prompt=mask_prompt, source=f"{data} (valid)")
             if valid_records else [])
    return train, valid


def load_text_corpus(sources: Sequence[str], encode, eos_id: Optional[int], *,
                     text_key: str = "text", valid_fraction: float = 0.05, seed: int = 0):
    """Pretraining documents from text files (one document per file, or JSONL
    ``text`` records) or hub datasets, tokenized with ``encode(str) -> ids``."""
    documents = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl", ".md"))
            if not files:
                raise MlxsmallError(f"{path}: no .txt/.jsonl/.md files in this directory")
        elif path.exists():
            files = [path]
        else:
            train, valid = load_hub_records(source, 0.0, seed)
            documents.extend(r[text_key] for r in train + valid if r.get(text_key))
            continue
        for file in files:
            if file.suffix == ".jsonl":
                for record in read_jsonl(file):
                    if text_key not in record:
                        raise MlxsmallError(f"{file}: a record has no {text_key!r} field")
                    documents.append(record[text_key])
            else:
                documents.append(file.read_text(encoding="utf-8"))
    examples = []
    for text in documents:
        ids = list(encode(text))
        if eos_id is not None:
            ids.append(eos_id)
        if len(ids) > 1:
            examples.append((ids, 0))
    if not examples:
        raise MlxsmallError("the corpus has no text")
    return split_off(examples, valid_fraction, seed)
