"""Every task end to end, offline, on a tiny random model; sample sets; hub loading; the CLI."""

import json
import sys
import types

import mlxsmall  # noqa: F401  (preloads OpenBLAS before mlx)
import pytest

from mlxsmall.errors import MlxsmallError
from mlxsmall.eval import tasks as task_registry
from mlxsmall.eval.runner import EVALUATORS, EvalOptions, evaluate
from mlxsmall.eval.tasks import TASKS, fewshot_docs, load_docs, resolve_tasks
from mlxsmall.eval.variants import Variant, load_variant, parse_variant


def test_every_sample_set_loads_and_converts():
    for name, task in TASKS.items():
        docs = task.sample_docs()
        assert len(docs) >= 1, name
        if task.kind == "multiple_choice":
            assert len(docs) >= 10, name
            for doc in docs:
                choice_doc = task.to_choices(doc)
                assert 0 <= choice_doc.gold < len(choice_doc.choices), (name, doc)
        elif task.kind == "generation":
            assert len(docs) >= 8, name
            for doc in docs:
                assert task.to_prompt(doc) and task.to_target(doc).strip()
                assert set(task.score(task.to_target(doc), doc).values()) <= {1.0} or name in (
                    "cnn_dailymail", "xsum"), name  # the reference answer scores perfectly
    safety = TASKS["safety"].sample_docs()
    assert {d["label"] for d in safety} == {"safe", "unsafe"}


def test_gold_sql_runs_on_every_sample_schema():
    for doc in TASKS["sql"].sample_docs():
        assert TASKS["sql"].score(doc["answer"], doc)["execution_accuracy"] == 1.0


def test_groups_and_unknown_tasks():
    names = [t.name for t in resolve_tasks(["commonsense"])]
    assert names == ["arc_easy", "arc_challenge", "boolq", "piqa", "siqa", "hellaswag", "openbookqa", "winogrande"]
    assert [t.name for t in resolve_tasks(["qa,gsm8k", "dolly"])] == ["hotpotqa", "dolly", "gsm8k"]
    with pytest.raises(MlxsmallError, match="unknown task 'nope'"):
        resolve_tasks(["nope"])


def test_registry_is_open_for_new_kinds(monkeypatch):
    task = task_registry.Task("vqa_demo", description="demo", sample_file="boolq.jsonl", kind="vqa_demo")
    monkeypatch.setitem(TASKS, "vqa_demo", task)
    with pytest.raises(MlxsmallError, match="no evaluator"):
        evaluate(None, None, [task], EvalOptions(limit=1))
    monkeypatch.setitem(EVALUATORS, "vqa_demo", lambda m, t, task, docs, o, report: ({"acc": 1.0}, [], len(docs)))
    assert evaluate(None, None, [task], EvalOptions(limit=2))["vqa_demo"]["metrics"] == {"acc": 1.0}


def test_fewshot_never_uses_the_document_itself():
    task = TASKS["arc_easy"]
    docs = load_docs(task, limit=3)
    for index in range(3):
        shots = fewshot_docs(task, index, docs, 5, data="sample")
        assert len(shots) == 5 and docs[index] not in shots


def test_safety_limit_keeps_both_kinds():
    docs = load_docs(TASKS["safety"], limit=4)
    assert [d["label"] for d in docs] == ["unsafe", "safe", "unsafe", "safe"]


def test_hub_loading_uses_datasets_and_filters(monkeypatch):
    rows = [{"instruction": "q1", "context": "", "response": "a1", "category": "open_qa"},
            {"instruction": "q2", "context": "", "response": "a2", "category": "creative_writing"},
            {"instruction": "q3", "context": "c", "response": "a3", "category": "closed_qa"}]
    calls = []

    def load_dataset(path, name, split):
        calls.append((path, name, split))
        return rows

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    docs = load_docs(TASKS["dolly"], data="hub", limit=5)
    assert [d["instruction"] for d in docs] == ["q1", "q3"]
    assert calls == [("databricks/databricks-dolly-15k", None, "train")]


def test_hub_without_datasets_or_network_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(MlxsmallError, match="pip install datasets"):
        load_docs(TASKS["boolq"], data="hub")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub\nlong details")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(MlxsmallError, match=r"google/boolq \[validation\].*Couldn't reach the Hub\); offline"):
        load_docs(TASKS["boolq"], data="hub")


def test_variant_specs():
    assert parse_variant("q4", "m") == Variant("m", "q4")
    assert parse_variant("other@fp16", "m") == Variant("other", "fp16")
    assert parse_variant("./dir", "m") == Variant("./dir", None)
    assert parse_variant("stored", "m") == Variant("m", None) == parse_variant("m@stored", None)
    assert parse_variant("mixed_3_6", "m").label == "m@mixed_3_6"
    with pytest.raises(MlxsmallError, match="unknown precision 'q9'"):
        parse_variant("m@q9", None)


@pytest.mark.slow  # minutes on 2 cores (measured with --durations)
def test_every_task_runs_end_to_end(make_tiny_model):
    path = make_tiny_model("llama")
    model, tokenizer, _ = load_variant(Variant(str(path), None))
    options = EvalOptions(limit=2, max_tokens=4, batch_size=4, window=64, shots=1)
    results = evaluate(model, tokenizer, resolve_tasks(["all"]), options)
    assert set(results) == {name for name, task in TASKS.items() if task.kind != "vqa"}  # VQA: a VLM's tasks
    assert {task.kind for task in TASKS.values()} <= set(EVALUATORS)
    for name, result in results.items():
        assert result["metrics"], name
        for metric, value in result["metrics"].items():
            assert value == value and value >= 0, (name, metric)  # not NaN
    assert set(results["cnn_dailymail"]["metrics"]) == {"rouge1", "rouge2", "rougeL"}
    assert set(results["sql"]["metrics"]) == {"execution_accuracy", "exact_match"}
    assert set(results["arc_easy"]["metrics"]) == {"acc", "acc_norm"}
    assert {"refusal_rate", "over_refusal_rate"} <= set(results["safety"]["metrics"])
    assert results["wikitext"]["metrics"]["perplexity"] > 1
    assert results["wikitext"]["n"] == 128  # --limit 2 windows of 64 tokens


def test_cli_compare_writes_json_markdown_and_plot(make_tiny_model, tmp_path, capsys):
    from mlxsmall.cli import main

    path = make_tiny_model("mobilellm")
    text = tmp_path / "notes.txt"
    text.write_text("Small models run on phones. " * 20)
    out = tmp_path / "results" / "run.json"
    plot = tmp_path / "results" / "quality.png"
    code = main(["eval", str(path), "--tasks", "arc_easy,sql,wikitext", "--limit", "2", "--max-tokens", "4",
                 "--window", "32", "--text-file", str(text), "--compare", "fp32", "q8", "q4",
                 "-o", str(out), "--plot", str(plot)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| arc_easy (n=2) | acc % |" in printed and "@q4" in printed
    record = json.loads(out.read_text())
    assert [run["bits"] for run in record["runs"]] == [32.0, 8.0, 4.0]
    assert record["runs"][2]["quantization"]["bits"] == 4
    assert "ppl:notes.txt" in record["runs"][0]["tasks"]
    assert out.with_suffix(".md").read_text().startswith("| task | metric |")
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_cli_errors_are_one_line(capsys):
    from mlxsmall.cli import main

    assert main(["eval", "--tasks", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mlxsmall: error:")
