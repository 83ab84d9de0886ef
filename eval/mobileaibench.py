"""MobileAIBench's protocol for the generation tasks (``mlxsmall eval --protocol mobileaibench``).

Murthy et al. 2024, "MobileAIBench: Benchmarking LLMs and LMMs for On-Device Use Cases",
code at github.com/SalesforceAIResearch/MobileAIBench (src/data_processing/data_loader.py
for prompts, src/evaluation/predict.py for post-processing, src/evaluation/evaluate.py
for metrics, src/modeling/model_configs/*/config.json for the generation caps). This
module restates their definitions so that a score here can sit next to a number in
their tables:

- prompts: their system prompt per task and their user text, word for word (the
  "hte" typo in the SQL prompt included), through the model's chat template;
  zero-shot, greedy; no stop string but the end-of-sequence token;
- caps: 200 new tokens for summaries, 512 for QA and Text-to-SQL;
- post-processing: QA and summaries keep the text after the first ``:`` when it comes
  within the first 100 characters; SQL replies with a code fence keep what is inside
  the first fence after removing every "sql" and every newline (as they do);
- metrics: Text-to-SQL: Levenshtein ratio (the normalised InDel similarity of the
  python-Levenshtein package, computed with rapidfuzz) and the F1 of the sets of
  (clause, text) pairs their regular expressions read from the two queries; QA: SQuAD
  exact match, SQuAD token F1 (0 when nothing is shared, as theirs), and BLEU as their
  code calls NLTK: ``sentence_bleu([normalised prediction], normalised reference,
  smoothing_function=method1)`` -- strings, so n-grams of characters, with the
  prediction in the reference slot; summaries: ROUGE-1 and ROUGE-L F-measure with
  Porter stemming.

Differences, stated: their dolly rows are closed QA only and always have a context;
a dolly row without context gets no ``context:`` line here. Their llama.cpp runner cut
a prompt that overflowed to its first 4000 characters; here the article is shortened
to fit the model's context and the report counts the items shortened.
"""

import re
import warnings
from collections import Counter
from dataclasses import replace
from typing import Callable, Dict, List, Optional, Tuple

from mlxsmall.eval import metrics

NAME = "mobileaibench"

SYSTEM_SUMMARY = "You're a helpful assistant who is good at summarizing articles."
SYSTEM_SQL = "You're a helpful assistant proficient in crafting SQL queries."
SYSTEM_QA = ("You're a helpful assistant proficient in answering questions based on the provided context. "
             "Directly provide the final answer without any reasoning or justification.")
MAX_TOKENS = {"summarization": 200, "question_answering": 512, "text2sql": 512}


# ---------------------------------------------------------------------------------------------
# Prompts (the user turn; the system prompt goes in the chat template's system turn)


def sql_prompt(doc: dict) -> str:
    return (f"The following command was used to create the SQL table: {doc['context']}\n"
            f"question: write a SQL query based on hte provided table for the following inquiry: "
            f"{doc['question']}\nanswer: ")


def qa_prompt(context: str, question: str) -> str:
    context_line = f"context: {context}\n" if context else ""
    return f"{context_line}question: {question}\nanswer: "


def hotpot_context(doc: dict) -> str:
    # Their CSV holds the paragraphs' sentences joined by single spaces, titles left out.
    return " ".join(" ".join(sentences) for sentences in doc["context"]["sentences"])


def summary_prompt(article: str) -> str:
    escaped = article.replace("'", "\\'").replace('"', '\\"')
    return f"Create a short summary of the following article: {escaped}\n"


# ---------------------------------------------------------------------------------------------
# Post-processing


def after_first_colon(prediction: str) -> str:
    """QA and summaries: the text after the first ':' when it is within the first 100 characters."""
    colon = prediction.find(":")
    if 0 <= colon < 100:
        return prediction[colon + 1:].strip()
    return prediction


def clean_sql(prediction: str) -> str:
    """A fenced reply becomes the inside of its first fence, with every "sql" and newline
    removed first; a reply without a fence is kept as it is (not even stripped)."""
    if "```" not in prediction:
        return prediction
    flattened = prediction.replace("sql", "").replace("\n", " ")
    fenced = re.search(r"```(.*?)```", flattened)
    return fenced.group(1) if fenced else flattened


# ---------------------------------------------------------------------------------------------
# Metrics

CLAUSES: List[Tuple[str, "re.Pattern"]] = [
    ("select", re.compile(r"SELECT\s+(.*?)\s+FROM", re.IGNORECASE)),
    ("from", re.compile(r"FROM\s+(.*?)\s+(WHERE|GROUP BY|ORDER BY|LIMIT|$)", re.IGNORECASE)),
    ("where", re.compile(r"WHERE\s+(.*?)(GROUP BY|ORDER BY|LIMIT|$)", re.IGNORECASE)),
    ("group_by", re.compile(r"GROUP BY\s+(.*?)(ORDER BY|LIMIT|$)", re.IGNORECASE)),
    ("order_by", re.compile(r"ORDER BY\s+(.*?)(LIMIT|$)", re.IGNORECASE)),
    ("limit", re.compile(r"LIMIT\s+(\d+)", re.IGNORECASE)),
]


def sql_clauses(query: str) -> List[Tuple[str, str]]:
    """(clause, text) pairs as MobileAIBench's regular expressions read them: comma-separated
    items of SELECT/FROM/GROUP BY/ORDER BY, WHERE conditions with their AND/OR between, the
    LIMIT number; text lower-cased."""
    pairs = []
    for clause, pattern in CLAUSES:
        found = pattern.search(query)
        if not found:
            continue
        text = found.group(1).strip()
        if clause == "limit":
            items = [str(int(text))]
        elif clause == "where":
            pieces = re.split(r"\s+(AND|OR)\s+", text, flags=re.IGNORECASE)
            items = [pieces[0].strip()]
            for joiner, condition in zip(pieces[1::2], pieces[2::2]):
                items += [joiner.upper(), condition.strip()]
        else:
            items = [item.strip() for item in text.split(",")]
        pairs += [(clause, item.lower()) for item in items]
    return pairs


def set_f1(first, second) -> float:
    first, second = set(first), set(second)
    shared = len(first & second)
    if not shared:
        return 0.0
    precision, recall = shared / len(first), shared / len(second)
    return 2 * precision * recall / (precision + recall)


def levenshtein_ratio(prediction: str, reference: str) -> float:
    """python-Levenshtein's ``ratio``: 1 - InDel distance / total length."""
    from rapidfuzz.distance import Indel

    return Indel.normalized_similarity(prediction, reference)


def sql_scores(prediction: str, doc: dict) -> Dict[str, float]:
    query = clean_sql(prediction)
    gold = doc["answer"]
    return {"sqlparser_f1": set_f1(sql_clauses(gold), sql_clauses(query)),
            "levenshtein": levenshtein_ratio(query, gold)}


def token_f1(prediction: str, reference: str) -> float:
    predicted = metrics.normalize_answer(prediction).split()
    expected = metrics.normalize_answer(reference).split()
    shared = sum((Counter(predicted) & Counter(expected)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(predicted), shared / len(expected)
    return 2 * precision * recall / (precision + recall)


def bleu(prediction: str, reference: str) -> float:
    """Their call, argument order kept: the normalised prediction is the reference string."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(sentence_bleu([metrics.normalize_answer(prediction)], metrics.normalize_answer(reference),
                                   smoothing_function=SmoothingFunction().method1))


def qa_scores(prediction: str, reference: str) -> Dict[str, float]:
    answer = after_first_colon(prediction)
    return {"exact_match": metrics.exact_match(answer, reference), "f1": token_f1(answer, reference),
            "bleu": bleu(answer, reference)}


def summary_scores(prediction: str, reference: str) -> Dict[str, float]:
    scores = metrics.rouge(after_first_colon(prediction), reference)
    return {"rouge1": scores["rouge1"], "rougeL": scores["rougeL"]}


# ---------------------------------------------------------------------------------------------
# Our generation tasks under their protocol

# task name -> (their task, system prompt, user prompt, scorer, the field that may be shortened)
TASKS: Dict[str, Tuple[str, str, Callable[[dict], str], Callable[[str, dict], Dict[str, float]], str]] = {
    "sql": ("text2sql", SYSTEM_SQL, sql_prompt, sql_scores, ""),
    "hotpotqa": ("question_answering", SYSTEM_QA, lambda d: qa_prompt(hotpot_context(d), d["question"]),
                 lambda p, d: qa_scores(p, d["answer"]), ""),
    "dolly": ("question_answering", SYSTEM_QA, lambda d: qa_prompt(d.get("context") or "", d["instruction"]),
              lambda p, d: qa_scores(p, d["response"]), ""),
    "cnn_dailymail": ("summarization", SYSTEM_SUMMARY, lambda d: summary_prompt(d["article"]),
                      lambda p, d: summary_scores(p, d["highlights"]), "article"),
    "xsum": ("summarization", SYSTEM_SUMMARY, lambda d: summary_prompt(d["document"]),
             lambda p, d: summary_scores(p, d["summary"]), "document"),
}


def task_for(task, *, name: Optional[str] = None):
    """The task under MobileAIBench's protocol, or None when they have no such task."""
    if task.kind != "generation" or task.name not in TASKS:
        return None
    their_task, system, prompt, scorer, long_field = TASKS[task.name]
    return replace(task, name=name or task.name, to_prompt=prompt, score=scorer, system=system, instruction="",
                   max_tokens=MAX_TOKENS[their_task], stop=(), prepare=None, long_field=long_field, protocol=NAME)
