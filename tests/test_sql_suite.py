"""Test-suite execution accuracy (eval/sql_suite.py): near misses of the gold score 0,
the gold and its rewrites score 1, bad items are reported instead of crashing."""

import sys
import time
from pathlib import Path

import pytest

from mlxsmall.eval import sql_suite
from mlxsmall.eval.sql_suite import GoldError, build_suite, execution_accuracy

sys.path.insert(0, str(Path(__file__).parent))
import sql_mutations  # noqa: E402  (tests/sql_mutations.py: mutations written independently of the suite)

SCHEMA = "CREATE TABLE head (name VARCHAR, age INTEGER)"


def _table(path):
    return sql_mutations.mutation_table(
        sql_mutations.load_jsonl(path), execution_accuracy, lambda error: isinstance(error, GoldError))


@pytest.mark.parametrize("path", [sql_mutations.SHIPPED, sql_mutations.STYLE], ids=["shipped", "real-format"])
def test_near_misses_of_the_gold_score_zero(path):
    result = _table(path)
    assert result["skipped"] == 0 and result["gold"] == 1.0
    for kind, (applicable, share_zero) in result["kinds"].items():
        assert applicable >= 5, kind
        assert share_zero >= 0.95, (kind, share_zero)
    assert result["kinds"]["constant query"][1] == 1.0


def test_equivalent_rewrites_score_one():
    gold = "SELECT COUNT(*) FROM head WHERE age > 56"
    assert execution_accuracy("select count(*) from head where 56 < age;", gold, SCHEMA) == 1.0
    assert execution_accuracy("SELECT COUNT(name) + COUNT(*) - COUNT(name) FROM head WHERE NOT age <= 56", gold,
                              SCHEMA) == 1.0
    films = "CREATE TABLE film (title VARCHAR, rating VARCHAR)"
    assert execution_accuracy("SELECT title FROM film WHERE rating IN ('G', \"PG\")",
                              "SELECT title FROM film WHERE rating = 'PG' OR rating = 'G'", films) == 1.0
    # Columns in another order, rows in another order (no ORDER BY in the gold).
    assert execution_accuracy("SELECT age, name FROM head ORDER BY age DESC", "SELECT name, age FROM head",
                              SCHEMA) == 1.0


def test_wrong_queries_score_zero():
    gold = "SELECT COUNT(*) FROM head WHERE age > 56"
    for wrong in ("SELECT COUNT(*) FROM head WHERE age > 55", "SELECT COUNT(*) FROM head WHERE age >= 56",
                  "SELECT COUNT(*) FROM head", "SELECT COUNT(name) FROM head WHERE age > 56", "SELEKT nonsense",
                  "SELECT COUNT(*) FROM missing", "", "SELECT 1 WHERE 0", "SELECT 0", "SELECT NULL"):
        assert execution_accuracy(wrong, gold, SCHEMA) == 0.0, wrong
    # Duplicates count; order counts only when the gold has ORDER BY.
    assert execution_accuracy("SELECT DISTINCT name FROM head", "SELECT name FROM head", SCHEMA) == 0.0
    ordered = "SELECT name FROM head ORDER BY age DESC"
    assert execution_accuracy("SELECT name FROM head ORDER BY age", ordered, SCHEMA) == 0.0


def test_suite_holds_literals_neighbours_nulls_and_duplicates():
    context = "CREATE TABLE table_name_50 (venue VARCHAR, away_team VARCHAR, crowd INTEGER)"
    gold = 'SELECT venue FROM table_name_50 WHERE away_team = "essendon" AND crowd > 20000'
    suite = build_suite(context, gold)
    rows = [row for db in suite.databases for row in db.execute("SELECT * FROM table_name_50").fetchall()]
    teams = {row[1] for row in rows}
    crowds = {row[2] for row in rows}
    assert "essendon" in teams and teams - {"essendon", None}
    assert any(c is not None and c > 20000 for c in crowds) and any(c is not None and c <= 20000 for c in crowds)
    assert any(None in row for row in rows)
    assert any(rows.count(row) > 1 for row in rows)
    assert any(result for result in suite.gold_results)  # the gold returns something somewhere
    assert len(suite.databases) >= sql_suite.MIN_DATABASES


def test_suites_are_deterministic():
    context, gold = "CREATE TABLE stores (city VARCHAR, revenue INTEGER)", "SELECT SUM(revenue) FROM stores WHERE city = 'Boston'"
    first, second = build_suite(context, gold), build_suite(context, gold)
    dump = lambda suite: [db.execute("SELECT * FROM stores").fetchall() for db in suite.databases]  # noqa: E731
    assert dump(first) == dump(second) and first.gold_results == second.gold_results
    assert dump(build_suite(context, gold, seed=1)) != dump(first)


def test_items_that_cannot_be_scored_say_why():
    with pytest.raises(GoldError, match="gold query does not run"):
        build_suite(SCHEMA, "SELECT * FROM nowhere")
    with pytest.raises(GoldError, match="schema does not run"):
        build_suite("CREATE TABLE a (x VARCHAR); CREATE TABLE a (y VARCHAR)", "SELECT x FROM a")
    # A WikiSQL-style gold that compares two constants can never return a row.
    with pytest.raises(GoldError, match="returns no rows"):
        build_suite("CREATE TABLE table_name_22 (Id VARCHAR)", 'SELECT 1949 FROM table_name_22 WHERE 1945 = "a"')


def test_predictions_cannot_change_the_data_or_run_away():
    gold = "SELECT COUNT(*) FROM head WHERE age > 56"
    assert execution_accuracy("DELETE FROM head", gold, SCHEMA) == 0.0
    assert execution_accuracy(gold, gold, SCHEMA) == 1.0
    runaway = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c"
    assert execution_accuracy(runaway, gold, SCHEMA) == 0.0


def test_suites_are_cheap():
    # CPU time, not wall time; generous bound (the target is a few ms per item).
    items = sql_mutations.load_jsonl(sql_mutations.STYLE)
    start = time.process_time()
    for item in items:
        build_suite(item["context"], item["answer"], seed=7)
    assert (time.process_time() - start) / len(items) < 0.5
