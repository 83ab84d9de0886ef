"""Generation tasks: answer extraction, unscorable items, MobileAIBench's protocol, reports."""

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import mlxsmall  # noqa: F401  (preloads OpenBLAS before mlx)
import pytest

from mlxsmall.eval import mobileaibench as mab
from mlxsmall.eval.answers import extract_answer, extract_sql, extract_summary
from mlxsmall.eval.report import eval_markdown, plot_quality_vs_bits
from mlxsmall.eval.runner import EvalOptions, evaluate, fitted_prompt
from mlxsmall.eval.tasks import TASKS, GenerationTask, resolve_tasks, sql_score
from mlxsmall.eval.variants import Variant, load_variant

SQL_DOC = {"question": "How many heads are older than 56?", "context": "CREATE TABLE head (age INTEGER)",
           "answer": "SELECT COUNT(*) FROM head WHERE age > 56"}


# --- our protocol: the answer inside the reply ---------------------------------------------------


def test_sql_is_found_in_fences_prefixes_and_prose():
    gold = SQL_DOC["answer"]
    for reply in (f" {gold}", f"```sql\n{gold};\n```\nThis counts the heads.", f"SQL: {gold}\n\nExplanation: ...",
                  "Here is the query:\n\nSELECT COUNT(*)\nFROM head\nWHERE age > 56;", f"```\n{gold}\n```",
                  f"```sql\n{gold}"):  # a fence cut by the token budget
        assert sql_score(reply, SQL_DOC)["execution_accuracy"] == 1.0, reply
    assert extract_sql("SELECT name FROM t WHERE note = 'a; b'; DROP TABLE t") == "SELECT name FROM t WHERE note = 'a; b'"
    assert sql_score("SELECT 1 WHERE 0", SQL_DOC)["execution_accuracy"] == 0.0


def test_qa_answer_after_the_prefix_and_not_only_the_first_line():
    assert extract_answer("Answer: Paris\nIt is the capital.") == "Paris"
    assert extract_answer("\nThe answer is: Knox County Regional Airport") == "Knox County Regional Airport"
    assert extract_answer("Sure! Here is the answer:\n\nParis") == "Paris"
    assert extract_answer("  Paris  ") == "Paris"
    score = TASKS["hotpotqa"].score("Answer: Paris\nBecause the tower is in France.", {"answer": "Paris"})
    assert score == {"exact_match": 1.0, "f1": 1.0}
    assert extract_summary("Summary: The council approved the plan.") == "The council approved the plan."


def test_caps_follow_the_benchmark_and_generation_does_not_stop_at_a_newline():
    for name in ("hotpotqa", "dolly", "sql"):
        assert TASKS[name].max_tokens == 512 and "\n" not in TASKS[name].stop
    for name in ("cnn_dailymail", "xsum"):
        assert TASKS[name].max_tokens == 200 and "\n" not in TASKS[name].stop
    article = " ".join(f"word{i}" for i in range(900))
    assert "word899" in TASKS["cnn_dailymail"].to_prompt({"article": article})  # no silent 400-word cut


# --- MobileAIBench's definitions, checked by hand --------------------------------------------------


def test_mobileaibench_prompts_and_caps():
    sql = mab.task_for(TASKS["sql"])
    assert sql.system == "You're a helpful assistant proficient in crafting SQL queries."
    assert sql.to_prompt(SQL_DOC) == (
        "The following command was used to create the SQL table: CREATE TABLE head (age INTEGER)\n"
        "question: write a SQL query based on hte provided table for the following inquiry: "
        "How many heads are older than 56?\nanswer: ")
    assert (sql.max_tokens, sql.stop, sql.protocol) == (512, (), "mobileaibench")
    hotpot = mab.task_for(TASKS["hotpotqa"])
    doc = {"question": "Q?", "answer": "A", "context": {"title": ["x", "y"], "sentences": [["One.", " Two."], ["Three."]]}}
    assert hotpot.to_prompt(doc) == "context: One.  Two. Three.\nquestion: Q?\nanswer: "
    assert hotpot.max_tokens == 512 and hotpot.system.endswith("without any reasoning or justification.")
    cnn = mab.task_for(TASKS["cnn_dailymail"])
    assert cnn.to_prompt({"article": "He said \"no\" and it's over."}) == (
        "Create a short summary of the following article: He said \\\"no\\\" and it\\'s over.\n")
    assert cnn.max_tokens == 200 and cnn.system == "You're a helpful assistant who is good at summarizing articles."
    assert mab.task_for(TASKS["gsm8k"]) is None and mab.task_for(TASKS["arc_easy"]) is None


def test_mobileaibench_post_processing():
    assert mab.after_first_colon("Answer: Paris") == "Paris"
    assert mab.after_first_colon("x" * 120 + ": late colon") == "x" * 120 + ": late colon"
    assert mab.after_first_colon(" Paris") == " Paris"  # not stripped, as theirs
    assert mab.clean_sql("```sql\nSELECT a\nFROM t\n```") == " SELECT a FROM t "
    assert mab.clean_sql("```sql\nSELECT sql_id FROM t") == "``` SELECT _id FROM t"  # every "sql" goes, as theirs
    assert mab.clean_sql(" SELECT a FROM t\n") == " SELECT a FROM t\n"


def test_mobileaibench_sql_metrics():
    # python-Levenshtein's ratio: 1 - InDel distance / (len a + len b); kitten/sitting: 5 edits over 13.
    assert mab.levenshtein_ratio("kitten", "sitting") == pytest.approx(1 - 5 / 13)
    clauses = mab.sql_clauses("SELECT name, age FROM head WHERE age > 56 AND name = 'x' ORDER BY age LIMIT 3")
    assert clauses == [("select", "name"), ("select", "age"), ("from", "head"), ("where", "age > 56"),
                       ("where", "and"), ("where", "name = 'x'"), ("order_by", "age"), ("limit", "3")]
    # Their FROM pattern needs white space after the table: a query ending in it has no FROM pair.
    assert mab.sql_clauses("SELECT a FROM t") == [("select", "a")]
    gold = "SELECT COUNT(*) FROM head WHERE age > 56"
    scores = mab.sql_scores("SELECT COUNT(*) FROM head WHERE age > 50", {"answer": gold})
    # pairs: gold {select, from, where}; prediction shares select and from -> P = R = 2/3
    assert scores["sqlparser_f1"] == pytest.approx(2 / 3)
    assert scores["levenshtein"] == pytest.approx(1 - 2 / (2 * len(gold)))
    assert mab.sql_scores(gold, {"answer": gold}) == {"sqlparser_f1": 1.0, "levenshtein": 1.0}


def test_mobileaibench_qa_metrics():
    # Character n-grams (their strings go to NLTK as sequences), prediction in the reference slot,
    # smoothing method1 (0.1 for a zero count). hypothesis "abcd" vs reference "abc":
    # 1-grams 3/4, 2-grams 2/3, 3-grams 1/2, 4-grams 0/1 -> 0.1; hypothesis longer: no brevity penalty.
    assert mab.bleu("abc", "abcd") == pytest.approx((0.75 * (2 / 3) * 0.5 * 0.1) ** 0.25)
    # The other way round the brevity penalty exp(1 - 4/3) applies: the order is theirs, not the usual one.
    assert mab.bleu("abcd", "abc") == pytest.approx(math.exp(1 - 4 / 3) * (1 * 1 * 1 * 0.1) ** 0.25)
    scores = mab.qa_scores("Answer: the Eiffel Tower", "Eiffel Tower")
    assert scores["exact_match"] == 1.0 and scores["f1"] == 1.0 and scores["bleu"] == pytest.approx(1.0)
    assert mab.token_f1("", "") == 0.0  # theirs: nothing shared -> 0


def test_mobileaibench_rouge_is_rouge1_and_rougeL():
    scores = mab.summary_scores("Summary: the cat sat", "the cat ran away")
    assert set(scores) == {"rouge1", "rougeL"} and scores["rouge1"] == pytest.approx(4 / 7)


# --- runs: protocols side by side, bad items, long articles ---------------------------------------


def _write_jsonl(path: Path, docs) -> str:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return str(path)


def test_both_protocols_side_by_side(make_tiny_model):
    model, tokenizer, _ = load_variant(Variant(str(make_tiny_model("llama")), None))
    results = evaluate(model, tokenizer, resolve_tasks(["sql,hotpotqa,arc_easy"]),
                       EvalOptions(limit=2, max_tokens=3, protocol="both", shots=1))
    assert list(results) == ["sql", "sql@mobileaibench", "hotpotqa", "hotpotqa@mobileaibench", "arc_easy"]
    assert set(results["sql@mobileaibench"]["metrics"]) == {"sqlparser_f1", "levenshtein"}
    assert set(results["hotpotqa@mobileaibench"]["metrics"]) == {"exact_match", "f1", "bleu"}
    assert results["sql@mobileaibench"]["protocol"] == "mobileaibench" and results["sql"]["protocol"] == "default"
    assert results["sql@mobileaibench"]["shots"] == 0 and results["sql"]["shots"] == 1
    only = evaluate(model, tokenizer, resolve_tasks(["xsum"]), EvalOptions(limit=1, max_tokens=2, protocol="mobileaibench"))
    assert set(only["xsum"]["metrics"]) == {"rouge1", "rougeL"} and only["xsum"]["protocol"] == "mobileaibench"
    table = eval_markdown([{"label": "m", "tasks": results}])
    assert "Protocol: default (sql, hotpotqa, arc_easy); mobileaibench (sql@mobileaibench, hotpotqa@mobileaibench)" in table


def test_one_bad_item_never_ends_the_run(make_tiny_model, tmp_path, monkeypatch):
    model, tokenizer, _ = load_variant(Variant(str(make_tiny_model("llama")), None))
    docs = [SQL_DOC,
            {"question": "q", "context": "CREATE TABLE t (a VARCHAR)", "answer": "SELECT b FROM t"},  # gold fails
            {"question": "q", "context": "CREATE TABLE t (a VARCHAR); CREATE TABLE t (b VARCHAR)", "answer": "SELECT a FROM t"},
            dict(SQL_DOC, answer="SELECT COUNT(*) FROM head WHERE age < 30")]
    sql = TASKS["sql"]
    task = GenerationTask("sql_bad", description="", sample_file=_write_jsonl(tmp_path / "bad.jsonl", docs),
                          to_prompt=sql.to_prompt, to_target=sql.to_target, score=sql.score, prepare=sql.prepare)
    result = evaluate(model, tokenizer, [task], EvalOptions(max_tokens=2))["sql_bad"]
    assert result["n"] == 2 and result["skipped"] == 2
    assert any("gold query does not run" in r for r in result["skip_reasons"])
    assert any("schema does not run" in r for r in result["skip_reasons"])

    def broken(prediction, doc):
        if doc["answer"].endswith("< 30"):
            raise RuntimeError("scorer bug")
        return {"x": 1.0}

    task.prepare, task.score = None, broken
    result = evaluate(model, tokenizer, [task], EvalOptions(max_tokens=2))["sql_bad"]
    assert result["n"] == 3 and result["errors"] == 1 and result["error_reasons"] == {"RuntimeError: scorer bug": 1}
    table = eval_markdown([{"label": "m", "tasks": {"sql_bad": result}}])
    assert "sql_bad: 1 could not be scored: RuntimeError: scorer bug (1)." in table


def test_long_articles_are_cut_to_the_context_and_counted(make_tiny_model, tmp_path):
    model, tokenizer, _ = load_variant(Variant(str(make_tiny_model("llama", max_position_embeddings=160)), None))
    long_doc = {"article": "The council met today. " * 200, "highlights": "The council met."}
    short_doc = {"article": "The council met today.", "highlights": "The council met."}
    cnn = TASKS["cnn_dailymail"]
    task = GenerationTask("cnn_long", description="", sample_file=_write_jsonl(tmp_path / "cnn.jsonl", [long_doc, short_doc]),
                          to_prompt=cnn.to_prompt, to_target=cnn.to_target, score=cnn.score, long_field="article")
    theirs = dataclasses.replace(mab.task_for(TASKS["cnn_dailymail"]), name="cnn_long", sample_file=task.sample_file)
    for run_task in (task, theirs):
        result = evaluate(model, tokenizer, [run_task], EvalOptions(max_tokens=8, chat="off"))["cnn_long"]
        assert result["truncated"] == 1 and result["n"] == 2, run_task.protocol
    prompt, shortened = fitted_prompt(tokenizer, task, long_doc, [], False, 152)
    assert shortened and len(tokenizer.encode(prompt)) <= 152 and prompt.startswith("Article: The council met")


# --- reports ------------------------------------------------------------------------------------


def _run(label, bits, tasks):
    return {"label": label, "model": "/home/someone/models/smol", "bits": bits, "tasks": tasks}


def _result(kind, metrics, protocol="default"):
    return {"kind": kind, "metrics": metrics, "n": 2, "source": "sample", "protocol": protocol}


def test_plot_with_one_variant_has_no_empty_panel(tmp_path, monkeypatch):
    import matplotlib.figure

    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: saved.append(fig))
    plot_quality_vs_bits([_run("smol", 16, {"sql": _result("generation", {"execution_accuracy": 0.5})})],
                         tmp_path / "a.png")
    plot_quality_vs_bits([_run("smol", 16, {"wikitext": _result("perplexity", {"perplexity": 20.0})})],
                         tmp_path / "b.png")
    for fig in saved:
        assert all(axis.lines for axis in fig.axes), [axis.get_title() for axis in fig.axes]
        title = fig._suptitle.get_text()
        assert "/home/someone" not in title and "smol" in title
        assert "Data: sample" in title and "Protocol: default" in title
    assert [len(fig.axes) for fig in saved] == [1, 1]


@pytest.mark.slow  # a subprocess that imports mlx and loads a model: ~50 s on a busy 2-core CPU
def test_cli_protocol_both_writes_a_report_that_says_protocol_and_data(make_tiny_model, tmp_path):
    path = make_tiny_model("llama")
    out = tmp_path / "out" / "run.json"
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run([sys.executable, "-m", "mlxsmall", "eval", str(path), "--tasks", "sql,dolly", "--limit", "2",
                           "--max-tokens", "3", "--protocol", "both", "-o", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| sql@mobileaibench (n=2) | levenshtein % |" in done.stdout
    assert "| dolly@mobileaibench (n=2) | bleu % |" in done.stdout
    assert "Data: sample. Protocol: default (sql, dolly); mobileaibench (sql@mobileaibench, dolly@mobileaibench)" in done.stdout
    record = json.loads(out.read_text())
    assert record["options"]["protocol"] == "both"
    assert str(tmp_path) not in out.with_suffix(".md").read_text()
