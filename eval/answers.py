"""The answer inside a generated text, for the project's own protocol.

Models wrap answers: a ```sql fence, a leading ``SQL:`` or ``Answer:``, a sentence of
preamble, a second line of explanation. Scoring the raw first line loses those answers;
these functions find them the way benchmarks' own post-processing does (MobileAIBench
takes the text after the first colon and the inside of a code fence; see
``eval/mobileaibench.py`` for its exact rules).
"""

import re

from mlxsmall.eval.sql_suite import tokenize

FENCE = re.compile(r"```[ \t]*(?:sql|sqlite|SQL)?[ \t]*\n?(.*?)(?:```|$)", re.DOTALL)
SQL_PREFIX = re.compile(r"\bSQL(?:\s+query)?\s*:", re.IGNORECASE)
SQL_START = re.compile(r"\b(SELECT|WITH)\b", re.IGNORECASE)
ANSWER_PREFIX = re.compile(r"\b(?:final\s+|short\s+)?answer(?:\s+is)?\s*:", re.IGNORECASE)
SUMMARY_PREFIX = re.compile(r"^\s*(?:here(?:'s| is) (?:a |the |my )?)?(?:short |brief |one-sentence )?summary[^:\n]{0,40}:",
                            re.IGNORECASE)


def extract_sql(text: str) -> str:
    """The query in a reply: inside the first code fence, else after ``SQL:``, starting at
    the first SELECT/WITH, up to the first ``;`` outside a string or a blank line."""
    fenced = FENCE.search(text)
    if fenced and fenced.group(1).strip():
        text = fenced.group(1)
    else:
        prefix = SQL_PREFIX.search(text)
        if prefix:
            text = text[prefix.end():]
    start = SQL_START.search(text)
    if start:
        text = text[start.start():]
    text = text.split("\n\n")[0]
    statement = []
    for token in tokenize(text):
        if token.text == ";":
            break
        statement.append(token.text)
    return " ".join("".join(statement).split())


def extract_answer(text: str) -> str:
    """A short answer: after the first ``Answer:``-style prefix if there is one, the first
    non-empty line."""
    prefix = ANSWER_PREFIX.search(text)
    if prefix:
        text = text[prefix.end():]
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def extract_summary(text: str) -> str:
    """A summary without a leading ``Summary:`` label."""
    prefix = SUMMARY_PREFIX.search(text)
    if prefix:
        text = text[prefix.end():]
    return text.strip()
