"""Tokenizer files for converted models, loadable offline by `mlx_lm.tokenizer_utils.load(dir)`.

- A checkpoint with `tokenizer.json` (HF fast tokenizer): copy its tokenizer files.
- A LLaMA SentencePiece `tokenizer.model` only (MobileLLM, MobiLlama): build the equivalent fast
  tokenizer with transformers' SentencePiece converter and save `tokenizer.json`, after checking it
  encodes sample text exactly as SentencePiece does. MobileLLM's tokenizer_config has empty-string
  special tokens; the real ones come from the SentencePiece model (ids bos/eos/unk).
- A chat template (by name from `chat_templates`) and stop strings are written alongside.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from mlxsmall.errors import MlxsmallError

COPIED_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "added_tokens.json", "chat_template.jinja", "chat_template.json", "generation_config.json",
)
CHECK_TEXT = "Hello world! The capital of France is Paris. 1234 ünïcödé\n  code:\tx = 42"


def write_tokenizer(src: Path, dst: Path, *, chat_template: Optional[str] = None,
                    stop_strings: Optional[list] = None, eos_token_id=None) -> None:
    """Write the tokenizer of checkpoint dir `src` into model dir `dst` (which exists)."""
    src, dst = Path(src), Path(dst)
    if (src / "tokenizer.json").exists():
        for name in COPIED_FILES:
            if (src / name).exists():
                shutil.copy2(src / name, dst / name)
    elif (src / "tokenizer.model").exists():
        convert_sentencepiece(src, dst)
    else:
        raise MlxsmallError(f"{src}: no tokenizer (tokenizer.json or tokenizer.model) to convert")
    if chat_template is not None:
        set_chat_template(dst, chat_template)
    if stop_strings:
        write_generation_config(dst, stop_strings=stop_strings, eos_token_id=eos_token_id)


def _read_json(path: Path) -> dict:
    try:
        document = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except (ValueError, RecursionError) as error:  # bad JSON or UTF-8, huge numbers, deep nesting
        raise MlxsmallError(f"{path}: not valid JSON ({' '.join(str(error).split())[:100]})") from None
    if not isinstance(document, dict):
        raise MlxsmallError(f"{path}: expected a JSON object")
    return document


def convert_sentencepiece(src: Path, dst: Path) -> None:
    import sentencepiece as spm

    model_file = src / "tokenizer.model"
    try:
        processor = spm.SentencePieceProcessor(model_file=str(model_file))
    except (RuntimeError, OSError) as error:
        raise MlxsmallError(f"{model_file}: not a SentencePiece model ({error})") from None

    def piece(index, default):
        return processor.id_to_piece(index) if 0 <= index < processor.get_piece_size() else default

    upstream = _read_json(src / "tokenizer_config.json")
    specials = {
        "bos_token": piece(processor.bos_id(), "<s>"),
        "eos_token": piece(processor.eos_id(), "</s>"),
        "unk_token": piece(processor.unk_id(), "<unk>"),
    }
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": upstream.get("add_bos_token", True),
        "add_eos_token": upstream.get("add_eos_token", False),
        "model_max_length": upstream.get("model_max_length", 2048),
        **specials,
    }
    if isinstance(config["model_max_length"], (int, float)) and config["model_max_length"] > 1e9:
        config["model_max_length"] = 2048
    from transformers import LlamaTokenizer

    with tempfile.TemporaryDirectory() as work:
        shutil.copy2(model_file, Path(work) / "tokenizer.model")
        (Path(work) / "tokenizer_config.json").write_text(json.dumps(config))
        tokenizer = LlamaTokenizer.from_pretrained(work, **specials)
        tokenizer.save_pretrained(str(dst))
    shutil.copy2(model_file, dst / "tokenizer.model")

    expected = processor.encode(CHECK_TEXT)
    from tokenizers import Tokenizer

    got = Tokenizer.from_file(str(dst / "tokenizer.json")).encode(CHECK_TEXT, add_special_tokens=False).ids
    if got != expected:
        raise MlxsmallError(
            f"{model_file}: the converted tokenizer.json does not reproduce SentencePiece's ids "
            f"({got[:8]}... vs {expected[:8]}...)"
        )


def set_chat_template(dst: Path, template: str) -> None:
    """Store a Jinja chat template where transformers 4 and 5 both find it."""
    (dst / "chat_template.jinja").write_text(template)
    path = dst / "tokenizer_config.json"
    config = _read_json(path)
    config["chat_template"] = template
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False))


def write_generation_config(dst: Path, **fields) -> None:
    path = dst / "generation_config.json"
    config = _read_json(path)
    config.update({k: v for k, v in fields.items() if v is not None})
    path.write_text(json.dumps(config, indent=2))
