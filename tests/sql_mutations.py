"""Near misses of gold SQL queries, written independently of eval/sql_suite.py, and the
table of how often a metric scores them 0 (test_sql_suite.py checks it; run this file to
print it for the shipped items, the test items and, optionally, a sql-create-context CSV):

    python tests/sql_mutations.py [path/to/sql_create_context.csv]
"""

import csv
import json
import re
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

KINDS = ("literal changed", "column swapped", "condition dropped", "aggregate changed", "constant query")
ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "eval" / "data" / "sql_create_context.jsonl"
STYLE = Path(__file__).resolve().parent / "samples" / "sql_create_context_style.jsonl"

LITERAL = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|(?<![\w.])\d+(?:\.\d+)?(?![\w.])")
CLAUSE_END = re.compile(r"\s+(?:GROUP\s+BY|ORDER\s+BY|LIMIT|INTERSECT|UNION|EXCEPT)\b|\)|$", re.IGNORECASE)


def load_jsonl(path: Path) -> List[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def schema_columns(context: str) -> Dict[str, List[str]]:
    tables = {}
    for name, body in re.findall(r"CREATE TABLE\s+(\w+)\s*\((.*?)\)", context, re.IGNORECASE | re.DOTALL):
        tables[name.lower()] = [part.split()[0] for part in body.split(",") if part.strip()]
    return tables


def _where_span(query: str):
    match = re.search(r"\b(WHERE|HAVING)\b", query, re.IGNORECASE)
    if not match:
        return None
    end = CLAUSE_END.search(query, match.end())
    return match.start(), match.end(), end.start()


def change_literal(query: str, columns: Dict[str, List[str]]) -> Optional[str]:
    names = {c.lower() for cols in columns.values() for c in cols}
    span = _where_span(query)
    start = span[1] if span else 0
    for match in LITERAL.finditer(query, start):
        text = match.group()
        if re.search(r"\bLIMIT\s*$", query[: match.start()], re.IGNORECASE):
            continue
        if text[0] in "'\"":
            inner = text[1:-1]
            if text[0] == '"' and inner.lower() in names:
                continue  # an identifier, not a string
            new = text[0] + (inner[::-1] if inner[::-1] != inner else inner + "z") + text[0]
        elif "." in text:
            new = str(float(text) * 1.5 + 1)
        else:
            new = str(int(text) + 3)
        return query[: match.start()] + new + query[match.end():]
    return None


def swap_column(query: str, columns: Dict[str, List[str]]) -> Optional[str]:
    span = _where_span(query)
    region = (span[1], span[2]) if span else (0, len(query))
    for table, cols in columns.items():
        if len(cols) < 2:
            continue
        for i, col in enumerate(cols):
            pattern = re.compile(rf"(?<![\w'\"]){re.escape(col)}(?![\w'\"])", re.IGNORECASE)
            match = pattern.search(query, *region)
            if match:
                other = cols[(i + 1) % len(cols)]
                return query[: match.start()] + other + query[match.end():]
    return None


def drop_condition(query: str, columns=None) -> Optional[str]:
    span = _where_span(query)
    if not span:
        return None
    keyword_start, body_start, end = span
    body = query[body_start:end]
    parts = re.split(r"\s+(AND|OR)\s+", body, flags=re.IGNORECASE)
    if re.search(r"\bBETWEEN\b", body, re.IGNORECASE) or len(parts) == 1:
        return (query[:keyword_start].rstrip() + " " + query[end:].lstrip()).strip()
    kept = " ".join(parts[:-2])  # drop the last condition and its AND/OR
    return query[:body_start] + " " + kept + query[end:]


AGGREGATE_SWAP = {"COUNT": "MAX", "SUM": "AVG", "AVG": "SUM", "MIN": "MAX", "MAX": "MIN"}


def change_aggregate(query: str, columns: Dict[str, List[str]]) -> Optional[str]:
    match = re.search(r"\b(COUNT|SUM|AVG|MIN|MAX)\s*\(", query, re.IGNORECASE)
    if not match:
        return None
    name = match.group(1).upper()
    replaced = query[: match.start()] + AGGREGATE_SWAP[name] + "(" + query[match.end():]
    star = re.match(r"\s*\*\s*\)", query[match.end():])
    if name == "COUNT" and star:  # COUNT(*) -> SUM(first column): still runs
        first_column = next(iter(columns.values()))[0]
        replaced = query[: match.start()] + f"SUM({first_column})" + query[match.end() + star.end():]
    return replaced


def constant_query(query: str, columns=None) -> str:
    return "SELECT 1 WHERE 0"


MUTATE = dict(zip(KINDS, (change_literal, swap_column, drop_condition, change_aggregate, constant_query)))


def mutation_table(items: List[dict], score: Callable[[str, str, str], float],
                   skip: Callable[[Exception], bool]) -> dict:
    """``{kind: (items where the kind applies, share scored 0)}`` plus the gold-vs-gold rate
    and the count of items skipped because their gold cannot be scored."""
    zero = {kind: 0 for kind in KINDS}
    applicable = {kind: 0 for kind in KINDS}
    gold_right = gold_scored = skipped = 0
    for item in items:
        gold, context = item["answer"], item["context"]
        try:
            gold_right += score(gold, gold, context)
        except Exception as error:  # noqa: BLE001 - the scorer says which errors mean "skip"
            if skip(error):
                skipped += 1
                continue
            raise
        gold_scored += 1
        columns = schema_columns(context)
        for kind, mutate in MUTATE.items():
            mutant = mutate(gold, columns)
            if mutant is None or mutant.strip() == gold.strip():
                continue
            applicable[kind] += 1
            zero[kind] += score(mutant, gold, context) == 0.0
    table = {kind: (applicable[kind], zero[kind] / applicable[kind] if applicable[kind] else None) for kind in KINDS}
    return {"kinds": table, "gold": gold_right / max(gold_scored, 1), "scored": gold_scored, "skipped": skipped}


def _print(name: str, result: dict) -> None:
    print(f"{name}: {result['scored']} items scored, {result['skipped']} skipped, gold vs gold "
          f"{100 * result['gold']:.1f}%")
    for kind, (n, share) in result["kinds"].items():
        print(f"  {kind:18s} n={n:4d}  scored 0: {'n/a' if share is None else f'{100 * share:.1f}%'}")


def main(argv: List[str]) -> None:
    sys.path.insert(0, str(ROOT))
    from mlxsmall.eval import sql_suite

    sets = {"shipped": load_jsonl(SHIPPED), "test rows": load_jsonl(STYLE)}
    if argv:
        with open(argv[0], encoding="utf-8") as handle:
            sets[Path(argv[0]).name] = list(csv.DictReader(handle))
    metrics = {"test suite": (lambda p, g, c: sql_suite.execution_accuracy(p, g, c),
                              lambda e: isinstance(e, sql_suite.GoldError))}
    try:  # the single-database metric this replaced, when run on a tree that still has it
        from mlxsmall.eval import metrics as old

        import sqlite3

        metrics = {"one database (before)": (old.sql_execution_match,
                                             lambda e: isinstance(e, (ValueError, sqlite3.Error))), **metrics}
    except (ImportError, AttributeError):
        pass
    else:
        if not hasattr(old, "sql_execution_match"):
            del metrics["one database (before)"]
    for metric, (score, skip) in metrics.items():
        for name, items in sets.items():
            _print(f"[{metric}] {name}", mutation_table(items, score, skip))


if __name__ == "__main__":
    main(sys.argv[1:])
