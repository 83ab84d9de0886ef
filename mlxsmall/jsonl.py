"""JSON Lines files (training records, evaluation documents): one error line naming file:line."""

import json
from pathlib import Path
from typing import Callable, List

from .errors import MlxsmallError


def must_be_object(value, where: str) -> None:
    if not isinstance(value, dict):
        raise MlxsmallError(f"{where}: each line must be a JSON object")


def read_jsonl(path: Path, check: Callable[[object, str], None] = must_be_object, what: str = "records") -> List[dict]:
    """The JSON value of every non-blank line; ``check(value, "file:line")`` refuses what does not fit."""
    values = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                raise MlxsmallError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            check(value, f"{path}:{number}")
            values.append(value)
    if not values:
        raise MlxsmallError(f"{path}: no {what}")
    return values
