"""Test-suite execution accuracy for text-to-SQL (Zhong, Yu and Klein, EMNLP 2020).

sql-create-context ships a schema and a gold query but no data. A single database
filled with arbitrary rows makes most gold queries return nothing, and wrong queries
return nothing too. Here every item gets a small *test suite*: a few sqlite databases
generated from its ``CREATE TABLE`` statements whose rows hold the gold query's
literals, neighbouring values, NULLs and duplicates. Candidate databases are drawn
(seeded by the item's text, so the suite is the same on every run) and kept when they
tell the gold apart from a near miss of it ("distillation"): a changed literal, a
swapped column, a dropped condition, a changed aggregate or comparison, a constant
query. A prediction is correct only when its result equals the gold's on every
database of the suite (a multiset of rows; ordered when the gold has ``ORDER BY``;
columns may come in another order, as in the paper's evaluation script).
"""

import itertools
import random
import re
import sqlite3
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

CANDIDATES = 40  # databases drawn per item at most
MIN_DATABASES = 3  # a suite keeps at least this many (the distinguishing ones first)
MAX_MUTANTS = 120
MAX_STEPS = 200_000  # sqlite VM steps per query before it is interrupted (runaway recursive CTEs)
AGGREGATES = ("count", "sum", "avg", "min", "max")
COMPARISONS = {">": ">=", ">=": ">", "<": "<=", "<=": "<", "=": "!=", "==": "!=", "!=": "=", "<>": "="}
CONSTANT_QUERIES = ("SELECT 1 WHERE 0", "SELECT NULL", "SELECT 0")


class GoldError(ValueError):
    """The item cannot be scored: its schema or its gold query does not run in sqlite."""


# ---------------------------------------------------------------------------------------------
# A small SQL tokenizer (enough to find literals, columns, aggregates and WHERE conditions)

TOKEN = re.compile(
    r"""(?P<ws>\s+)
      | (?P<str>'(?:[^']|'')*')
      | (?P<dq>"(?:[^"]|"")*")
      | (?P<bq>`[^`]*`|\[[^\]]*\])
      | (?P<num>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_$]*)
      | (?P<op><=|>=|<>|!=|==|\|\||[-+*/%=<>(),.;])
      | (?P<other>.)""",
    re.VERBOSE | re.DOTALL,
)


@dataclass
class Token:
    kind: str  # ws, str, dq, bq, num, ident, op, other
    text: str

    @property
    def word(self) -> str:
        return self.text.lower() if self.kind == "ident" else ""


def tokenize(query: str) -> List[Token]:
    return [Token(m.lastgroup, m.group()) for m in TOKEN.finditer(query)]


def untokenize(tokens: Sequence[Token]) -> str:
    return "".join(t.text for t in tokens)


def _unquote(text: str) -> str:
    quote = text[0]
    return text[1:-1].replace(quote * 2, quote)


def _quote(value: str, quote: str) -> str:
    return quote + value.replace(quote, quote * 2) + quote


# ---------------------------------------------------------------------------------------------
# Schema


@dataclass
class Column:
    table: str
    name: str
    numeric: bool  # sqlite INTEGER/REAL/NUMERIC affinity


@dataclass
class Schema:
    statements: List[str]
    tables: Dict[str, List[Column]]  # lower-cased table name -> columns

    def columns_named(self, name: str, tables: Optional[Sequence[str]] = None) -> List[Column]:
        name = name.lower()
        return [c for t, cols in self.tables.items() if tables is None or t in tables
                for c in cols if c.name.lower() == name]

    @property
    def names(self) -> set:
        return {c.name.lower() for cols in self.tables.values() for c in cols} | set(self.tables)


def _numeric_affinity(declared: str) -> bool:
    declared = declared.upper()
    if "INT" in declared:
        return True
    if any(t in declared for t in ("CHAR", "CLOB", "TEXT", "BLOB")) or not declared:
        return False
    return True  # REAL, FLOAT, DOUBLE, NUMERIC, DECIMAL, BOOLEAN, DATE ...


def parse_schema(create_context: str) -> Schema:
    """Tables and columns of ``CREATE TABLE ...; CREATE TABLE ...``, as sqlite itself reads them."""
    statements = [s.strip() for s in create_context.split(";") if s.strip()]
    connection = sqlite3.connect(":memory:")
    try:
        tables: Dict[str, List[Column]] = {}
        for statement in statements:
            try:
                connection.execute(statement)
            except sqlite3.Error as error:
                raise GoldError(f"the schema does not run in sqlite ({error})") from None
        names = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in names:
            quoted = _quote(table, '"')
            info = connection.execute(f"PRAGMA table_info({quoted})").fetchall()
            tables[table.lower()] = [Column(table, row[1], _numeric_affinity(row[2] or "")) for row in info]
        return Schema(statements, tables)
    finally:
        connection.close()


# ---------------------------------------------------------------------------------------------
# Reading the gold query: which tables, which columns, which literals compared how


@dataclass
class Literal:
    index: int  # token index
    value: object  # str or number
    quote: str  # "'" or '"' for strings, "" for numbers
    op: str = ""  # "=", ">", "like", "in", "between", "not like", ...
    columns: List[Column] = field(default_factory=list)


@dataclass
class Reading:
    tokens: List[Token]
    tables: List[str]  # lower-cased tables the query names
    aliases: Dict[str, str]  # lower alias -> lower table
    literals: List[Literal]
    column_refs: List[Tuple[int, List[Column]]]  # token index -> the columns it may name
    keys: List[List[Column]]  # groups of columns compared with each other


KEYWORDS = {
    "select", "from", "where", "group", "order", "by", "having", "limit", "offset", "join", "inner", "left", "right",
    "outer", "cross", "natural", "on", "using", "and", "or", "not", "as", "union", "intersect", "except", "all",
    "distinct", "asc", "desc", "in", "like", "glob", "between", "is", "null", "case", "when", "then", "else", "end",
}


def _significant(tokens: Sequence[Token]) -> List[int]:
    return [i for i, t in enumerate(tokens) if t.kind != "ws"]


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        return float(text)


def read_query(query: str, schema: Schema) -> Reading:
    tokens = tokenize(query)
    names = schema.names
    # A double-quoted word is an identifier when it names a column or table, else a string
    # (sqlite's rule, which sql-create-context's golds rely on: WHERE team = "essendon").
    for token in tokens:
        if token.kind == "dq" and _unquote(token.text).lower() in names:
            token.kind, token.text = "ident", token.text
    sig = _significant(tokens)
    words = [tokens[i].word for i in sig]
    tables, aliases = [], {}
    for k, i in enumerate(sig):
        if words[k] in ("from", "join") or (tokens[i].text == "," and _in_from_list(words, k)):
            if k + 1 < len(sig) and _ident(tokens[sig[k + 1]]).lower() in schema.tables:
                table = _ident(tokens[sig[k + 1]]).lower()
                tables.append(table)
                j = k + 2
                if j < len(sig) and words[j] == "as":
                    j += 1
                if j < len(sig) and tokens[sig[j]].kind == "ident" and words[j] not in KEYWORDS:
                    aliases[words[j]] = table
    query_tables = tables or list(schema.tables)

    column_refs = []
    for k, i in enumerate(sig):
        token = tokens[i]
        if token.kind not in ("ident", "bq") or words[k] in KEYWORDS:
            continue
        if k + 1 < len(sig) and tokens[sig[k + 1]].text in ("(", "."):
            continue  # a function name or a table/alias qualifier
        name = _ident(token)
        owner = None
        if k >= 2 and tokens[sig[k - 1]].text == ".":
            qualifier = _ident(tokens[sig[k - 2]]).lower()
            owner = [aliases.get(qualifier, qualifier)]
        columns = schema.columns_named(name, owner or query_tables) or schema.columns_named(name)
        if columns:
            column_refs.append((i, columns))
    columns_at = dict(column_refs)
    # Columns compared with each other (JOIN ... ON a.x = b.y, WHERE x = y) draw from one small
    # shared pool, so that rows meet.
    keys = []
    for k, i in enumerate(sig[1:-1], 1):
        right = _column_after(tokens, sig, k, columns_at)
        if tokens[i].text in COMPARISONS and sig[k - 1] in columns_at and right:
            keys.append(columns_at[sig[k - 1]] + right)

    literals = []
    for k, i in enumerate(sig):
        token = tokens[i]
        if token.kind in ("str", "dq"):
            literal = Literal(i, _unquote(token.text), token.text[0])
        elif token.kind == "num":
            negative = k >= 1 and tokens[sig[k - 1]].text == "-" and (k < 2 or tokens[sig[k - 2]].kind == "op")
            value = _number(token.text)
            literal = Literal(i, -value if negative else value, "")
        else:
            continue
        if k >= 1 and words[k - 1] in ("limit", "offset"):
            continue
        literal.op, literal.columns = _comparison(tokens, sig, words, k, columns_at)
        literals.append(literal)
    return Reading(tokens, query_tables, aliases, literals, column_refs, keys)


def _column_after(tokens, sig, k, columns_at) -> List[Column]:
    """The column named right after position k (``col`` or ``alias.col``), if any."""
    if k + 1 < len(sig) and sig[k + 1] in columns_at:
        return columns_at[sig[k + 1]]
    if k + 3 < len(sig) and tokens[sig[k + 2]].text == "." and sig[k + 3] in columns_at:
        return columns_at[sig[k + 3]]
    return []


def _ident(token: Token) -> str:
    if token.kind in ("dq", "bq") or (token.kind == "ident" and token.text[:1] in "\"`["):
        return token.text[1:-1]
    return token.text


def _in_from_list(words: List[str], k: int) -> bool:
    for word in reversed(words[:k]):
        if word in ("from",):
            return True
        if word in ("select", "where", "group", "order", "having", "on", "limit"):
            return False
    return False


def _comparison(tokens, sig, words, k, columns_at) -> Tuple[str, List[Column]]:
    """The operator a literal is compared with and the column(s) on the other side."""
    j = k - 1
    if j >= 0 and tokens[sig[j]].text == "-":
        j -= 1
    # col IN (a, b, ...): walk back over the list
    back = j
    while back >= 0 and (tokens[sig[back]].text == "," or tokens[sig[back]].kind in ("str", "dq", "num")):
        back -= 1
    if back >= 1 and tokens[sig[back]].text == "(" and words[back - 1] == "in":
        op_end = back - 1
        op = "in"
        if op_end >= 1 and words[op_end - 1] == "not":
            op, op_end = "not in", op_end - 1
        return op, columns_at.get(sig[op_end - 1], []) if op_end >= 1 else []
    # col BETWEEN a AND b
    for back in (j, j - 2):
        if back >= 1 and words[back] == "between":
            start = back - 1
            op = "between"
            if words[start] == "not":
                op, start = "not between", start - 1
            return op, columns_at.get(sig[start], []) if start >= 0 else []
    if j >= 1:
        text = tokens[sig[j]].text.lower()
        if text in COMPARISONS or text in ("like", "glob"):
            start = j - 1
            op = text
            if words[start] == "not":
                op, start = "not " + text, start - 1
            if start >= 0 and sig[start] in columns_at:
                return op, columns_at[sig[start]]
    # a literal on the left: 56 < age
    right = _column_after(tokens, sig, k + 1, columns_at)
    if k + 2 < len(sig) and tokens[sig[k + 1]].text in COMPARISONS and right:
        flipped = {">": "<", "<": ">", ">=": "<=", "<=": ">="}.get(tokens[sig[k + 1]].text, tokens[sig[k + 1]].text)
        return flipped, right
    return "", []


# ---------------------------------------------------------------------------------------------
# Values: the gold's literals, their neighbours, fillers, NULLs


def _neighbours(value) -> List[object]:
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return [value - 1, value + 1, value + 2, value - 2]
    if isinstance(value, float):
        return [value - 0.5, value + 0.5, value + 1, value - 1]
    text = str(value)
    core = text.replace("%", "").replace("_", "")
    out = [text + "x", "x" + text, text.upper() if text.upper() != text else text.lower()]
    if core != text:  # a LIKE pattern: values that match it and values that nearly do
        out = [core, "a" + core, core + "b", "a" + core + "b", core[:-1] or "z", core.upper()]
    if len(text) > 1:
        out.append(text[:-1])
    return out


def _satisfying(value, op: str, rng: random.Random):
    """A value that makes ``column <op> literal`` true."""
    numeric = isinstance(value, (int, float))
    # A number compared with a text column compares as text ('9' > '10'): half of the time
    # take a value that is larger (smaller) both as a number and as text.
    if op in (">",):
        if numeric and rng.random() < 0.5:
            return value + rng.choice((1, 2, 5))
        return str(value) + "5" if numeric else str(value) + "z"
    if op in ("<",):
        if numeric and rng.random() < 0.5:
            return value - rng.choice((1, 2, 5))
        return (str(value)[:-1] or "-1") if numeric else (str(value)[:-1] or "")
    if op in ("!=", "<>", "not like", "not in", "not between"):
        return rng.choice(_neighbours(value))
    if op in ("like", "glob") and not numeric:
        core = str(value).replace("%", "").replace("_", "a").replace("*", "").replace("?", "a")
        pattern = str(value)
        prefix = "x " if pattern.startswith(("%", "*")) else ""
        suffix = " y" if pattern.endswith(("%", "*")) else ""
        return prefix + core + suffix
    return value


def _violating(value, op: str, rng: random.Random):
    numeric = isinstance(value, (int, float))
    if op in (">", "<="):
        return value if rng.random() < 0.5 or not numeric else value - 1 if op == ">" else value + 1
    if op in ("<", ">="):
        return value if rng.random() < 0.5 or not numeric else value + 1 if op == "<" else value - 1
    if op in ("!=", "<>", "not like", "not in", "not between"):
        return value
    return rng.choice(_neighbours(value))


class ValuePools:
    """Per column: the values a generated row draws from."""

    def __init__(self, schema: Schema, reading: Reading):
        self.schema = schema
        self.literals: Dict[Tuple[str, str], List[Literal]] = {}
        loose = []
        for literal in reading.literals:
            if literal.columns:
                for column in literal.columns:
                    self.literals.setdefault((column.table.lower(), column.name.lower()), []).append(literal)
            else:
                loose.append(literal.value)
        self.loose = loose
        numbers = [lit.value for lit in reading.literals if isinstance(lit.value, (int, float))]
        low = int(min(numbers, default=0)) - 3
        high = int(max(numbers, default=10)) + 3
        self.number_range = (min(low, 0), max(high, 9))
        self.key_group = {}
        for number, group in enumerate(reading.keys):
            for column in group:
                self.key_group[(column.table.lower(), column.name.lower())] = number

    def literals_of(self, column: Column) -> List[Literal]:
        return self.literals.get((column.table.lower(), column.name.lower()), [])

    def _numeric_like(self, column: Column) -> bool:
        values = [lit.value for lit in self.literals_of(column)]
        if column.numeric:
            return True
        return bool(values) and all(isinstance(v, (int, float)) or _looks_numeric(v) for v in values)

    def filler(self, column: Column, rng: random.Random):
        group = self.key_group.get((column.table.lower(), column.name.lower()))
        if group is not None:
            return rng.randint(1, 3)  # stored as '1' in a text column, which still equals 1
        if self._numeric_like(column):
            return rng.randint(*self.number_range)
        # Columns of the same name share their filler words, so JOIN keys meet.
        return f"{column.name.lower()} {rng.randint(0, 3)}"

    def random_value(self, column: Column, rng: random.Random):
        roll = rng.random()
        if roll < 0.08:
            return None
        mine = self.literals_of(column)
        if mine and roll < 0.55:
            literal = rng.choice(mine)
            value = literal.value if rng.random() < 0.5 else rng.choice(_neighbours(literal.value))
            return _as_column_value(value, column)
        loose = [v for v in self.loose if isinstance(v, (int, float)) == self._numeric_like(column)]
        if loose and roll < 0.62:
            return _as_column_value(rng.choice(loose), column)
        return self.filler(column, rng)


def _looks_numeric(value) -> bool:
    try:
        float(str(value))
        return True
    except ValueError:
        return False


def _as_column_value(value, column: Column):
    if isinstance(value, str) and column.numeric and _looks_numeric(value):
        return _number(value) if re.fullmatch(r"-?\d+(\.\d*)?", value) else value
    return value


def generate_rows(schema: Schema, pools: ValuePools, rng: random.Random, size: int) -> Dict[str, List[tuple]]:
    """Rows for every table: random ones, ones meeting all of the gold's conditions on
    that table, ones missing exactly one of them, and exact duplicates."""
    data = {}
    for table, columns in schema.tables.items():
        # Several literals on one column (name = 'a' OR name = 'b'): a row meets one of them.
        conditions = [(i, pools.literals_of(column)) for i, column in enumerate(columns) if pools.literals_of(column)]
        rows: List[tuple] = []
        for _ in range(rng.randint(max(1, size - 2), size + 2)):
            if rows and rng.random() < 0.15:
                rows.append(rng.choice(rows))  # a duplicate row
                continue
            row = [pools.random_value(column, rng) for column in columns]
            mode = rng.random()
            if conditions and mode < 0.65:
                for i, literals in conditions:
                    if rng.random() < 0.9:
                        literal = rng.choice(literals)
                        row[i] = _as_column_value(_satisfying(literal.value, literal.op, rng), columns[i])
                if mode < 0.3:
                    i, literals = rng.choice(conditions)
                    literal = rng.choice(literals)
                    row[i] = None if rng.random() < 0.15 else _as_column_value(
                        _violating(literal.value, literal.op, rng), columns[i])
            rows.append(tuple(row))
        data[table] = rows
    return data


# ---------------------------------------------------------------------------------------------
# Near misses of the gold query (the mutants a suite must tell apart)


def mutants(reading: Reading, schema: Schema) -> List[str]:
    """Near misses of the gold, most telling first (the list is capped at MAX_MUTANTS)."""
    tokens = reading.tokens
    text = untokenize(tokens)
    out: List[str] = list(CONSTANT_QUERIES) + dropped_conditions(tokens)

    def replaced(index: int, new_text: str) -> str:
        copy = list(tokens)
        copy[index] = Token(copy[index].kind, new_text)
        return untokenize(copy)

    for literal in reading.literals:
        for value in _neighbours(literal.value)[:3]:
            if literal.quote:
                out.append(replaced(literal.index, _quote(str(value), literal.quote)))
            elif isinstance(value, (int, float)) and value >= 0:
                out.append(replaced(literal.index, repr(value)))
    for i, token in enumerate(tokens):
        if token.word in AGGREGATES:
            out += [replaced(i, other.upper()) for other in AGGREGATES if other != token.word]
        elif token.text in COMPARISONS:
            out.append(replaced(i, COMPARISONS[token.text]))
        elif token.word in ("asc", "desc"):
            out.append(replaced(i, "DESC" if token.word == "asc" else "ASC"))
        elif token.word == "distinct":
            out.append(replaced(i, ""))
    # COUNT(*) and COUNT(column) differ exactly on NULLs.
    for match in re.finditer(r"\bcount\s*\(\s*\*\s*\)", text, re.IGNORECASE):
        for table in reading.tables:
            for column in schema.tables[table][:4]:
                out.append(text[: match.start()] + f'COUNT("{column.name}")' + text[match.end():])
    for match in re.finditer(r"\bcount\s*\(\s*([\w.\"]+)\s*\)", text, re.IGNORECASE):
        out.append(text[: match.start()] + "COUNT(*)" + text[match.end():])
    for index, columns in reading.column_refs:
        for column in columns[:1]:
            for other in schema.tables[column.table.lower()]:
                if other.name.lower() != column.name.lower():
                    out.append(replaced(index, _quote(other.name, '"')))
    unique = list(dict.fromkeys(m for m in out if m != text))
    return unique[:MAX_MUTANTS]


def dropped_conditions(tokens: List[Token]) -> List[str]:
    """The query with each top-level WHERE/HAVING/ON condition left out in turn (and with
    the whole clause left out)."""
    out = []
    sig = _significant(tokens)
    for start, word in [(k, tokens[i].word) for k, i in enumerate(sig) if tokens[i].word in ("where", "having", "on")]:
        depth, k, parts, between = 0, start + 1, [[]], False
        while k < len(sig):
            t = tokens[sig[k]]
            if t.text == "(":
                depth += 1
            elif t.text == ")":
                if depth == 0:
                    break
                depth -= 1
            if depth == 0 and t.word in ("group", "order", "limit", "having", "union", "intersect", "except",
                                         "join", "where", "inner", "left", "cross", "natural") and k > start + 1:
                break
            if depth == 0 and t.word == "between":
                between = True
            if depth == 0 and t.word in ("and", "or") and not (between and t.word == "and"):
                parts.append([])
            else:
                if depth == 0 and t.word == "and":
                    between = False
                parts[-1].append(sig[k])
            k += 1
        end = sig[k - 1] if k - 1 < len(sig) else len(tokens) - 1
        clause_start = sig[start]
        if word != "on":
            out.append(untokenize(tokens[:clause_start] + [Token("ws", " ")] + tokens[end + 1:]))
        if len(parts) > 1:
            for drop in range(len(parts)):
                kept = [p for n, p in enumerate(parts) if n != drop and p]
                text = " AND ".join(untokenize(tokens[p[0]: p[-1] + 1]) for p in kept)
                out.append(untokenize(tokens[: clause_start + 1]) + " " + text + " " + untokenize(tokens[end + 1:]))
    return out


# ---------------------------------------------------------------------------------------------
# Running and comparing


def _normalise(value):
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, bytes):
        return value.hex()
    return value


def run_query(database: "Database", query: str) -> Optional[List[tuple]]:
    """The rows of ``query``, or None when it does not run (or runs away)."""
    query = query.strip().rstrip(";").strip()
    if not query:
        return None
    try:
        return [tuple(_normalise(v) for v in row) for row in database.execute(query).fetchall()]
    except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError, MemoryError):
        return None


def has_order_by(query: str) -> bool:
    """ORDER BY outside any parentheses: only then does the order of rows count."""
    depth, words = 0, []
    for token in tokenize(query):
        if token.text == "(":
            depth += 1
        elif token.text == ")":
            depth -= 1
        elif depth == 0 and token.kind == "ident":
            words.append(token.word)
    return any(a == "order" and b == "by" for a, b in zip(words, words[1:]))


def same_result(gold: List[tuple], predicted: Optional[List[tuple]], ordered: bool) -> bool:
    """Rows equal as multisets (as lists when ``ordered``), allowing the columns in another order."""
    if predicted is None:
        return False
    if len(gold) != len(predicted):
        return False
    if not gold:
        return True
    width = len(gold[0])
    if any(len(row) != width for row in predicted):
        return False

    def equal(rows: List[tuple]) -> bool:
        return rows == gold if ordered else Counter(rows) == Counter(gold)

    if equal(predicted):
        return True
    if width > 6:
        return False
    gold_columns = [Counter(row[i] for row in gold) for i in range(width)]
    predicted_columns = [Counter(row[i] for row in predicted) for i in range(width)]
    choices = [[j for j in range(width) if predicted_columns[j] == gold_columns[i]] for i in range(width)]
    if any(not c for c in choices):
        return False
    for permutation in itertools.product(*choices):
        if len(set(permutation)) == width and equal([tuple(row[j] for j in permutation) for row in predicted]):
            return True
    return False


def informative(rows: List[tuple]) -> bool:
    """A result that says something: some value other than NULL or 0."""
    return any(v is not None and v != 0 for row in rows for v in row)


class Database:
    """One generated sqlite database: read-only, and every query is interrupted after
    MAX_STEPS virtual-machine steps (a runaway recursive CTE in a prediction)."""

    def __init__(self, schema: Schema, data: Dict[str, List[tuple]]):
        self.connection = sqlite3.connect(":memory:", check_same_thread=False)
        for statement in schema.statements:
            self.connection.execute(statement)
        for table, rows in data.items():
            if rows:
                name = _quote(schema.tables[table][0].table, '"')
                marks = ", ".join("?" for _ in rows[0])
                self.connection.executemany(f"INSERT INTO {name} VALUES ({marks})", rows)
        self.connection.commit()
        self.connection.execute("PRAGMA query_only = ON")  # a prediction may not change the data
        self.steps = 0
        self.connection.set_progress_handler(self._guard, 1000)

    def _guard(self) -> bool:
        self.steps += 1000
        return self.steps > MAX_STEPS

    def execute(self, query: str):
        self.steps = 0
        return self.connection.execute(query)


# ---------------------------------------------------------------------------------------------
# The suite


@dataclass
class TestSuite:
    gold: str
    ordered: bool
    databases: List[Database]
    gold_results: List[List[tuple]]
    survivors: List[str]  # mutants no database told apart (often equivalent to the gold)

    __test__ = False  # not a pytest class

    def score(self, prediction: str) -> float:
        """1.0 when the prediction's result equals the gold's on every database."""
        for database, gold in zip(self.databases, self.gold_results):
            if not same_result(gold, run_query(database, prediction), self.ordered):
                return 0.0
        return 1.0


def build_suite(create_context: str, gold: str, *, seed: int = 0, candidates: int = CANDIDATES,
                min_databases: int = MIN_DATABASES) -> TestSuite:
    """Distil a test suite for one item. Raises ``GoldError`` when the schema or the gold does not run."""
    schema = parse_schema(create_context)
    if not schema.tables:
        raise GoldError("the context creates no table")
    gold = gold.strip().rstrip(";").strip()
    reading = read_query(gold, schema)
    pools = ValuePools(schema, reading)
    alive = mutants(reading, schema)
    ordered = has_order_by(gold)
    rng = random.Random(zlib.crc32(f"{seed}\x00{create_context}\x00{gold}".encode("utf-8")))
    kept: List[Tuple[Database, List[tuple]]] = []
    spare: List[Tuple[Database, List[tuple]]] = []
    found_informative = False
    for attempt in range(candidates):
        size = (2, 4, 6)[attempt % 3]
        database = Database(schema, generate_rows(schema, pools, rng, size))
        try:
            result = database.execute(gold).fetchall()
        except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError) as error:
            if attempt == 0:
                raise GoldError(f"the gold query does not run in sqlite ({error})") from None
            continue  # e.g. a runaway on this data; draw another database
        result = [tuple(_normalise(v) for v in row) for row in result]
        killed = [m for m in alive if not same_result(result, run_query(database, m), ordered)]
        new_information = informative(result) and not found_informative
        if killed or new_information:
            kept.append((database, result))
            alive = [m for m in alive if m not in killed]
            found_informative = found_informative or informative(result)
        elif len(spare) < min_databases:
            spare.append((database, result))
        if found_informative and not alive and len(kept) >= min_databases:
            break
    if not found_informative:
        # WikiSQL-derived golds such as SELECT 1949 FROM t WHERE 1945 = "a" compare constants:
        # no data makes them return anything, and any empty answer would "match" them.
        raise GoldError("the gold query returns no rows (or only NULL/0) on every generated database")
    kept += spare[: max(0, min_databases - len(kept))]
    return TestSuite(gold, ordered, [d for d, _ in kept], [r for _, r in kept], alive)


_CACHE: Dict[Tuple[str, str, int], TestSuite] = {}
_FAILED: Dict[Tuple[str, str, int], str] = {}


def suite_for(create_context: str, gold: str, seed: int = 0) -> TestSuite:
    """The (cached) test suite of an item; ``GoldError`` when it cannot be scored."""
    key = (create_context, gold, seed)
    if key in _FAILED:
        raise GoldError(_FAILED[key])
    if key not in _CACHE:
        if len(_CACHE) > 512:
            _CACHE.clear()
        try:
            _CACHE[key] = build_suite(create_context, gold, seed=seed)
        except GoldError as error:
            _FAILED[key] = str(error)
            raise
    return _CACHE[key]


def execution_accuracy(prediction: str, gold: str, create_context: str) -> float:
    """Test-suite execution accuracy of one prediction (1.0 or 0.0)."""
    return suite_for(create_context, gold).score(prediction)
