"""`mlxsmall eval --data PATH`: your own JSONL, the documented fields, one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import mlxsmall  # noqa: F401  (preloads OpenBLAS before mlx)
import pytest

from mlxsmall.errors import MlxsmallError
from mlxsmall.eval import data_files
from mlxsmall.eval.tasks import DATA_DIR, TASKS, fewshot_docs, load_docs, resolve_tasks

sys.path.insert(0, str(Path(__file__).parent))  # tests/ helper modules (pytest runs in importlib mode)
from user_cli import clean_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run_cli(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "mlxsmall", "eval", *args], capture_output=True, text=True,
                          env=clean_env(tmp_path), cwd=tmp_path, timeout=600)


def write_jsonl(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def test_every_shipped_sample_file_has_the_documented_format():
    shipped = {p.name for p in DATA_DIR.glob("*.jsonl")}
    covered = set()
    for name, task in TASKS.items():
        if task.sample_file.endswith(".jsonl"):
            assert name in data_files.FIELDS, f"{name}: no documented fields"
            docs = data_files.read_jsonl(DATA_DIR / task.sample_file, name)  # raises on any bad line
            required = [f.name for f in data_files.FIELDS[name][0] if not f.optional]
            assert all(set(required) <= set(doc) for doc in docs)
            covered.add(task.sample_file)
    assert covered == shipped  # no shipped file is read without its fields being checked


def test_help_documents_every_tasks_fields(tmp_path):
    result = run_cli(tmp_path, "--help")
    assert result.returncode == 0
    help_text = " ".join(result.stdout.split())
    help_text = help_text[help_text.index("your own data (--data PATH)"):]
    for name, (fields, _) in data_files.FIELDS.items():
        if name in data_files.VISION_TASKS:
            continue
        line = help_text[help_text.index(f" {name} "):]
        for f in fields:
            assert f"{f.name}{'?' if f.optional else ''}:" in line[:400], (name, f.name)
    readme = " ".join((ROOT / "docs" / "eval" / "README.md").read_text().split())
    assert " ".join(data_files.describe().split()) in readme  # the docs carry the same list


ARC_ROW = {"question": "What do plants need?", "answerKey": "A",
           "choices": {"text": ["sunlight", "sand"], "label": ["A", "B"]}}


@pytest.mark.parametrize("task,row,field,words", [
    ("arc_easy", {k: v for k, v in ARC_ROW.items() if k != "answerKey"}, "answerKey", "is missing"),
    ("arc_easy", {**ARC_ROW, "answerKey": "E"}, "answerKey", "is not one of choices.label"),
    ("arc_easy", {**ARC_ROW, "choices": ["sunlight", "sand"]}, "choices", "must be"),
    ("boolq", {"passage": "p", "question": "q", "answer": "yes"}, "answer", "must be true or false"),
    ("hellaswag", {"activity_label": "a", "ctx_a": "b", "ctx_b": "c", "endings": ["x", "y"], "label": "2"},
     "label", "is not between 0 and 1"),
    ("winogrande", {"sentence": "no blank", "option1": "a", "option2": "b", "answer": "1"}, "sentence", "blank"),
    ("siqa", {"context": "c", "question": "q", "answerA": "a", "answerB": "b", "answerC": "c", "label": 0},
     "label", "is not between 1 and 3"),
    ("gsm8k", {"question": "q", "answer": "no number"}, "answer", "no number"),
])
def test_a_wrong_line_is_one_error_naming_file_line_and_field(tmp_path, task, row, field, words):
    path = write_jsonl(tmp_path / "mine.jsonl", [row])
    with pytest.raises(MlxsmallError) as error:
        data_files.check_data(str(path), resolve_tasks([task]))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:1: field {field!r}") and words in message


def test_not_json_and_not_an_object(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [ARC_ROW, "{oops"])
    with pytest.raises(MlxsmallError, match=r"mine.jsonl:2: not valid JSON"):
        data_files.check_data(str(path), resolve_tasks(["arc_easy"]))
    path = write_jsonl(tmp_path / "mine.jsonl", ['["a list"]'])
    with pytest.raises(MlxsmallError, match=r"mine.jsonl:1: expected a JSON object"):
        data_files.check_data(str(path), resolve_tasks(["arc_easy"]))


def test_file_directory_and_what_goes_wrong_with_them(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    write_jsonl(mine / "arc_easy.jsonl", [ARC_ROW] * 3)
    (mine / "wikitext.txt").write_text("Some text of my own. " * 10)
    docs = load_docs(TASKS["arc_easy"], data=str(mine))
    assert docs == [ARC_ROW] * 3
    assert load_docs(TASKS["wikitext"], data=str(mine)) == [{"text": "Some text of my own. " * 10}]
    assert load_docs(TASKS["arc_easy"], data=str(mine / "arc_easy.jsonl"), limit=2) == [ARC_ROW] * 2
    # Few-shot examples come from the same file.
    other = {**ARC_ROW, "question": "Another?"}
    write_jsonl(mine / "arc_easy.jsonl", [ARC_ROW, other])
    docs = load_docs(TASKS["arc_easy"], data=str(mine))
    assert fewshot_docs(TASKS["arc_easy"], 0, docs, 1, data=str(mine)) == [other]

    with pytest.raises(MlxsmallError, match=r"no boolq.jsonl for task boolq \(there: arc_easy.jsonl, wikitext.txt\)"):
        data_files.check_data(str(mine), resolve_tasks(["arc_easy", "boolq"]))
    with pytest.raises(MlxsmallError, match=r"one file holds the documents of one task"):
        data_files.check_data(str(mine / "arc_easy.jsonl"), resolve_tasks(["arc_easy", "boolq"]))
    with pytest.raises(MlxsmallError, match=r"no such file or directory"):
        data_files.check_data(str(tmp_path / "nowhere"), resolve_tasks(["arc_easy"]))


def test_the_shipped_directory_as_data_is_the_sample_set():
    for task in resolve_tasks(["all"]):
        assert load_docs(task, data=str(DATA_DIR)) == load_docs(task, data="sample"), task.name


@pytest.mark.slow
def test_cli_runs_your_directory(make_tiny_model, tmp_path):
    model = make_tiny_model("llama")
    mine = tmp_path / "mine"
    mine.mkdir()
    write_jsonl(mine / "arc_easy.jsonl", [ARC_ROW, {**ARC_ROW, "answerKey": "B"}])
    write_jsonl(mine / "boolq.jsonl", [{"passage": "Water is wet.", "question": "is water wet", "answer": True}])
    result = run_cli(tmp_path, str(model), "--tasks", "arc_easy,boolq", "--data", "mine", "-o", "out.json")
    assert result.returncode == 0, result.stderr
    assert "| arc_easy (n=2) | acc % |" in result.stdout and "| boolq (n=1) | acc % |" in result.stdout
    record = json.loads((tmp_path / "out.json").read_text())
    assert record["options"]["data"] == "mine"


def test_cli_fails_on_a_bad_line_before_loading_a_model(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    write_jsonl(mine / "arc_easy.jsonl", [ARC_ROW])
    write_jsonl(mine / "boolq.jsonl", [{"passage": "Water is wet.", "question": "is water wet"}])
    result = run_cli(tmp_path, str(tmp_path / "no-model-here"), "--tasks", "arc_easy,boolq", "--data", "mine")
    assert result.returncode == 2
    assert result.stderr == ("mlxsmall: error: mine/boolq.jsonl:1: field 'answer' is missing "
                             "(boolq needs passage, question, answer)\n")
