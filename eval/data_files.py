"""Evaluation documents from local files: the shipped sample sets and ``mlxsmall eval --data PATH``.

Every task reads its documents in the field layout of its Hugging Face dataset, whether
they come from the hub, from ``eval/data`` or from your own file. ``FIELDS`` says which
fields each task reads; ``read_docs`` checks every line against it, so a missing or wrong
field is one line naming the file, the line number and the field, not a KeyError halfway
through a run. Other fields on a line are ignored.

``--data PATH`` is a JSONL file (the documents of the one task being run) or a directory
with one file per task: ``<task>.jsonl`` (or the task's sample file name, so
``--data eval/data`` reads the shipped sets); perplexity tasks read ``<task>.txt`` (plain
text) or ``<task>.jsonl`` (lines with a ``text`` field, joined).

This module imports nothing from the rest of ``eval`` (``tasks`` imports it); a task is
anything with ``name``, ``kind`` and ``sample_file``.
"""

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from mlxsmall import jsonl
from mlxsmall.errors import MlxsmallError

KEYWORDS = ("sample", "hub")  # the --data values that are not paths


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # how --help and the docs describe the value
    ok: Callable[[object], bool]
    optional: bool = False


def _text(value) -> bool:
    return isinstance(value, str)


def _integer(value) -> bool:  # the hub has both 0 and "0" for labels
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and value.isdigit())


def _texts(value) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(isinstance(v, str) for v in value)


def _lettered(value) -> bool:
    return (isinstance(value, dict) and _texts(value.get("text")) and _texts(value.get("label"))
            and len(value["text"]) == len(value["label"]))


def _paragraphs(value) -> bool:
    return (isinstance(value, dict) and _texts(value.get("title")) and isinstance(value.get("sentences"), list)
            and len(value["sentences"]) == len(value["title"]) and all(_texts(s) for s in value["sentences"]))


def _vqa_answers(value) -> bool:  # plain strings, or the hub's [{"answer": ...}, ...]
    return isinstance(value, list) and len(value) > 0 and all(
        isinstance(v, str) or (isinstance(v, dict) and isinstance(v.get("answer"), str)) for v in value)


def _image(value) -> bool:
    return isinstance(value, str) or (isinstance(value, dict) and isinstance(value.get("draw"), dict))


TEXT = ("text", _text)
INTEGER = ("integer", _integer)
BOOLEAN = ("true or false", lambda v: isinstance(v, bool))
TEXTS = ("[texts]", _texts)
LETTERED = ('{"text": [texts], "label": [texts]}', _lettered)
PARAGRAPHS = ('{"title": [texts], "sentences": [[texts]]}', _paragraphs)
SAFETY_LABEL = ('"unsafe" or "safe"', lambda v: isinstance(v, str) and v.lower() in ("safe", "unsafe"))
VQA_ANSWERS = ("[texts]", _vqa_answers)
IMAGE = ('path, URL or {"draw": {...}}', _image)


def field(name: str, kind: Tuple[str, Callable], about: str = "", optional: bool = False) -> Field:
    """``about`` replaces the kind's own words in the help (``label: 0 or 1``)."""
    return Field(name, about or kind[0], kind[1], optional)


def _index(doc, name: str, count: int, base: int = 0) -> Optional[str]:
    if base <= int(doc[name]) < base + count:
        return None
    return f"{doc[name]!r} is not between {base} and {base + count - 1}"


def _answer_key(doc, strip: bool = False) -> Optional[Tuple[str, str]]:
    key = doc["answerKey"].strip() if strip else doc["answerKey"]  # OpenBookQA's lm-eval template strips it
    if key not in doc["choices"]["label"]:
        return "answerKey", f"{doc['answerKey']!r} is not one of choices.label {doc['choices']['label']}"
    return None


def _checked(name: str, problem: Optional[str]) -> Optional[Tuple[str, str]]:
    return (name, problem) if problem else None


ARC = [field("question", TEXT), field("choices", LETTERED), field("answerKey", TEXT, "one of choices.label")]
VQA = [field("image", IMAGE), field("question", TEXT), field("answers", VQA_ANSWERS)]

# task -> (fields, a check across fields returning (field, problem) or None)
FIELDS: Dict[str, Tuple[List[Field], Optional[Callable[[dict], Optional[Tuple[str, str]]]]]] = {
    "arc_easy": (ARC, _answer_key),
    "arc_challenge": (ARC, _answer_key),
    "boolq": ([field("passage", TEXT), field("question", TEXT), field("answer", BOOLEAN)], None),
    "piqa": ([field("goal", TEXT), field("sol1", TEXT), field("sol2", TEXT), field("label", INTEGER, "0 or 1")],
             lambda d: _checked("label", _index(d, "label", 2))),
    "siqa": ([field("context", TEXT), field("question", TEXT), field("answerA", TEXT), field("answerB", TEXT),
              field("answerC", TEXT), field("label", INTEGER, '1, 2 or 3 (may be "1")')],
             lambda d: _checked("label", _index(d, "label", 3, base=1))),
    "hellaswag": ([field("activity_label", TEXT), field("ctx_a", TEXT), field("ctx_b", TEXT),
                   field("endings", TEXTS), field("label", INTEGER, 'index into endings (may be "0")')],
                  lambda d: _checked("label", _index(d, "label", len(d["endings"])))),
    "openbookqa": ([field("question_stem", TEXT), field("choices", LETTERED),
                    field("answerKey", TEXT, "one of choices.label")], lambda d: _answer_key(d, strip=True)),
    "winogrande": ([field("sentence", TEXT, "text with one _ blank"), field("option1", TEXT), field("option2", TEXT),
                    field("answer", INTEGER, '"1" or "2"')],
                   lambda d: ("sentence", "has no _ blank") if "_" not in d["sentence"]
                   else _checked("answer", _index(d, "answer", 2, base=1))),
    "mmlu": ([field("question", TEXT), field("choices", TEXTS, "[1 to 4 texts]"),
              field("answer", INTEGER, "index into choices"), field("subject", TEXT, optional=True)],
             lambda d: ("choices", "has more than 4 (A-D)") if len(d["choices"]) > 4
             else _checked("answer", _index(d, "answer", len(d["choices"])))),
    "gsm8k": ([field("question", TEXT), field("answer", TEXT, "worked solution ending '#### N'")],
              lambda d: None if re.search(r"\d", d["answer"]) else ("answer", "has no number (end it with '#### N')")),
    "hotpotqa": ([field("question", TEXT), field("answer", TEXT), field("context", PARAGRAPHS)], None),
    "dolly": ([field("instruction", TEXT), field("response", TEXT), field("context", TEXT, optional=True),
               field("category", TEXT, optional=True)], None),
    "cnn_dailymail": ([field("article", TEXT), field("highlights", TEXT)], None),
    "xsum": ([field("document", TEXT), field("summary", TEXT)], None),
    "sql": ([field("question", TEXT), field("context", TEXT, "CREATE TABLE statements"),
             field("answer", TEXT, "gold SQLite query")], None),
    "wikitext": ([field("text", TEXT, "text (lines are joined; or a plain-text wikitext.txt)")], None),
    "safety": ([field("prompt", TEXT), field("label", SAFETY_LABEL), field("type", TEXT, optional=True)], None),
    "vqav2": (VQA, None),
    "textvqa": (VQA, None),
    "gqa": ([field("image", IMAGE), field("question", TEXT), field("answer", TEXT)], None),
    "scienceqa": ([field("image", IMAGE), field("question", TEXT), field("choices", TEXTS),
                   field("answer", INTEGER, "index into choices"), field("hint", TEXT, optional=True)],
                  lambda d: _checked("answer", _index(d, "answer", len(d["choices"])))),
}
VISION_TASKS = ("vqav2", "textvqa", "gqa", "scienceqa")  # mlxsmall eval VLM --tasks vqa


def describe(vision: bool = False, width: int = 96) -> str:
    """The fields of each task, one task per paragraph, for --help and the docs."""
    import textwrap

    lines = []
    for name, (fields, _) in FIELDS.items():
        if (name in VISION_TASKS) != vision:
            continue
        text = "; ".join(f"{f.name}{'?' if f.optional else ''}: {f.kind}" for f in fields)
        lines += textwrap.wrap(text, width, initial_indent=f"  {name:14s} ", subsequent_indent=" " * 17,
                               break_long_words=False, break_on_hyphens=False)
    return "\n".join(lines)


def check_doc(task_name: str, doc, where: str) -> None:
    """Raise one line naming ``where`` (file:line) and the field when ``doc`` does not fit the task."""
    if not isinstance(doc, dict):
        raise MlxsmallError(f"{where}: expected a JSON object with the fields of {task_name}, got {type(doc).__name__}")
    if task_name not in FIELDS:
        return
    fields, across = FIELDS[task_name]
    for f in fields:
        if f.name not in doc or doc[f.name] is None:
            if f.optional:
                continue
            raise MlxsmallError(f"{where}: field {f.name!r} is missing ({task_name} needs {', '.join(x.name for x in fields if not x.optional)})")
        if not f.ok(doc[f.name]):
            raise MlxsmallError(f"{where}: field {f.name!r} must be {f.kind}, got {json.dumps(doc[f.name])[:80]}")
    problem = across(doc) if across else None
    if problem:
        raise MlxsmallError(f"{where}: field {problem[0]!r}: {problem[1]}")


_CACHE: Dict[Tuple[str, str, int, int], List[dict]] = {}  # (task, path, mtime, size): few-shot pools re-read files


def read_jsonl(path: Path, task_name: str) -> List[dict]:
    """Every line of a JSONL file, each checked against the task's fields."""
    try:
        stat = path.stat()
    except OSError as error:
        raise MlxsmallError(f"{path}: cannot read ({error.strerror})") from None
    key = (task_name, str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _CACHE:
        _CACHE[key] = jsonl.read_jsonl(path, lambda doc, where: check_doc(task_name, doc, where), what="documents")
    return list(_CACHE[key])


def task_file(task, data: str) -> Path:
    """The file that holds ``task``'s documents under ``--data PATH``."""
    path = Path(data).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise MlxsmallError(f"--data: {data}: no such file or directory (or use 'sample' or 'hub')")
    names = [f"{task.name}.jsonl", task.sample_file]
    if task.kind == "perplexity":
        names.insert(1, f"{task.name}.txt")
    for name in names:
        if name and (path / Path(name).name).is_file():
            return path / Path(name).name
    present = sorted(p.name for p in path.iterdir() if p.suffix in (".jsonl", ".txt"))
    raise MlxsmallError(f"--data {data}: no {task.name}.jsonl for task {task.name} "
                        f"(there: {', '.join(present) if present else 'no .jsonl files'})")


def read_docs(task, data: str) -> List[dict]:
    """``task``'s documents from ``--data PATH`` (a file or a directory of per-task files)."""
    path = task_file(task, data)
    if task.kind == "perplexity" and path.suffix != ".jsonl":
        return [{"text": path.read_text(encoding="utf-8", errors="replace")}]
    return read_jsonl(path, task.name)


def check_data(data: str, tasks: Sequence) -> None:
    """Before any model loads: ``--data PATH`` has valid documents for every task."""
    if data in KEYWORDS:
        return
    path = Path(data).expanduser()
    if path.is_file():
        own = [t for t in tasks if not os.path.isabs(t.sample_file)]  # --text-file tasks read their own file
        if len(own) > 1:
            raise MlxsmallError(f"--data {data}: one file holds the documents of one task, and --tasks names "
                                f"{len(own)} ({', '.join(t.name for t in own)}); give a directory of "
                                "<task>.jsonl files")
    for task in tasks:
        if not os.path.isabs(task.sample_file):
            read_docs(task, data)
