"""CassandraStore: the storage contracts against a real node, and what can be checked
without one.

No Cassandra or ScyllaDB can be installed on this machine, so the contract classes run
only when ``VOXER_CASSANDRA_HOSTS=host[:port],...`` names a node (or cluster) to use;
each run makes a keyspace ``voxer_test_<random>`` (replication factor
``VOXER_CASSANDRA_RF``, default 1), empties its tables before each test and drops it at
the end. Everything else here runs everywhere: the schema is parsed and every prepared
statement is checked against it (tables, columns, keys, bind markers against the values
the code passes), the pure helpers (positions, search tokens) are exercised, and the
driver objects the store builds are built (``Cluster`` without connecting).
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import trio
from store_contract import StoreContract, StoreFactory
from store_service_contract import ServiceStoreContract

from voxer_stream.store import MessageRecord, StoredChunk, StoreError
from voxer_stream.store import cassandra as cassandra_module
from voxer_stream.store import cassandra_schema as schema
from voxer_stream.store.cassandra import CassandraStore, open_cassandra_store, parse_hosts

HOSTS = os.environ.get("VOXER_CASSANDRA_HOSTS", "").strip()
NO_NODE = (
    "no Cassandra node: set VOXER_CASSANDRA_HOSTS=host[:port] to run the storage contract"
    " against one (none can be installed on this machine)"
)

# -- a small CQL checker -------------------------------------------------------------------

#: Reserved CQL keywords (Cassandra 3.x to 5, ScyllaDB): never usable as bare names.
RESERVED = frozenset(
    {
        "ADD",
        "ALLOW",
        "ALTER",
        "AND",
        "ANY",
        "APPLY",
        "ASC",
        "AUTHORIZE",
        "BATCH",
        "BEGIN",
        "BY",
        "COLUMNFAMILY",
        "CREATE",
        "DEFAULT",
        "DELETE",
        "DESC",
        "DESCRIBE",
        "DROP",
        "EACH_QUORUM",
        "ENTRIES",
        "EXECUTE",
        "FOR",
        "FROM",
        "FULL",
        "GRANT",
        "IF",
        "IN",
        "INDEX",
        "INET",
        "INFINITY",
        "INSERT",
        "INTO",
        "IS",
        "KEYSPACE",
        "KEYSPACES",
        "LIMIT",
        "LOCAL_ONE",
        "LOCAL_QUORUM",
        "MATERIALIZED",
        "MBEAN",
        "MBEANS",
        "MODIFY",
        "NAN",
        "NORECURSIVE",
        "NOT",
        "NULL",
        "OF",
        "ON",
        "ONE",
        "OR",
        "ORDER",
        "PASSWORD",
        "PRIMARY",
        "QUORUM",
        "RENAME",
        "REPLACE",
        "REVOKE",
        "SCHEMA",
        "SELECT",
        "SET",
        "TABLE",
        "THREE",
        "TIME",
        "TO",
        "TOKEN",
        "TRUNCATE",
        "TWO",
        "UNLOGGED",
        "UNSET",
        "UPDATE",
        "USE",
        "USING",
        "VIEW",
        "WHERE",
        "WITH",
    }
)
NATIVE_TYPES = frozenset(
    {
        "ascii",
        "bigint",
        "blob",
        "boolean",
        "counter",
        "date",
        "decimal",
        "double",
        "duration",
        "float",
        "inet",
        "int",
        "smallint",
        "text",
        "time",
        "timestamp",
        "timeuuid",
        "tinyint",
        "uuid",
        "varchar",
        "varint",
    }
)

_TOKEN = re.compile(
    r"\s*(?:(\?)|('(?:[^']|'')*')|(-?\d+)|([A-Za-z_][A-Za-z0-9_]*)|(<=|>=|[(),=<>*;.\[\]]))"
)


def lex(cql: str) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(cql):
        if cql[i:].strip() == "":
            break
        match = _TOKEN.match(cql, i)
        assert match is not None, f"cannot lex {cql[i : i + 20]!r} in {cql!r}"
        out.append(next(g for g in match.groups() if g is not None))
        i = match.end()
    return out


class Tokens:
    def __init__(self, cql: str) -> None:
        self.cql = cql
        self.items = lex(cql)
        self.i = 0

    def peek(self, n: int = 0) -> str | None:
        return self.items[self.i + n] if self.i + n < len(self.items) else None

    def take(self) -> str:
        token = self.peek()
        assert token is not None, f"unexpected end of {self.cql!r}"
        self.i += 1
        return token

    def keyword(self, *words: str) -> bool:
        """Consume ``words`` (case-insensitive) if they come next."""
        for n, word in enumerate(words):
            token = self.peek(n)
            if token is None or token.upper() != word:
                return False
        self.i += len(words)
        return True

    def expect(self, *words: str) -> None:
        assert self.keyword(*words), (
            f"expected {' '.join(words)} at {self.rest()!r} in {self.cql!r}"
        )

    def name(self) -> str:
        token = self.take()
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", token), (
            f"not a name: {token!r} in {self.cql!r}"
        )
        assert token.upper() not in RESERVED, f"reserved word as a name: {token!r} in {self.cql!r}"
        return token.lower()

    def rest(self) -> str:
        return " ".join(self.items[self.i :])

    def done(self) -> bool:
        return self.i >= len(self.items)


#: The table options the schema may set (numeric ones), and what a sane value is.
TABLE_OPTIONS = {
    # Shorter than the default 10 days only where readers verify the rows (a tombstone
    # a replica missed may resurrect a row), and never 0 (that also drops hints).
    "gc_grace_seconds": lambda v: 600 <= v <= 864_000,
}


@dataclass
class Table:
    name: str
    columns: dict[str, str] = field(default_factory=dict)
    statics: set[str] = field(default_factory=set)
    partition: list[str] = field(default_factory=list)
    clustering: list[str] = field(default_factory=list)

    @property
    def key(self) -> list[str]:
        return self.partition + self.clustering


def parse_create_table(cql: str) -> Table:
    t = Tokens(cql)
    t.expect("CREATE", "TABLE", "IF", "NOT", "EXISTS")
    table = Table(t.name())
    t.expect("(")
    inline_key: list[str] = []
    while True:
        if t.keyword("PRIMARY", "KEY"):
            t.expect("(")
            if t.keyword("("):
                table.partition.append(t.name())
                while t.keyword(","):
                    table.partition.append(t.name())
                t.expect(")")
            else:
                table.partition.append(t.name())
            while t.keyword(","):
                table.clustering.append(t.name())
            t.expect(")")
        else:
            column = t.name()
            assert column not in table.columns, f"{table.name}.{column} twice"
            kind = t.take().lower()
            assert kind in NATIVE_TYPES, f"{table.name}.{column}: unknown type {kind!r}"
            table.columns[column] = kind
            if t.keyword("STATIC"):
                table.statics.add(column)
            if t.keyword("PRIMARY", "KEY"):
                inline_key.append(column)
        if t.keyword(")"):
            break
        t.expect(",")
    if inline_key:
        assert not table.partition, f"{table.name}: two primary keys"
        assert len(inline_key) == 1, f"{table.name}: two inline primary keys"
        table.partition = inline_key
    assert table.partition, f"{table.name}: no primary key"
    for column in table.key:
        assert column in table.columns, f"{table.name}: key column {column} is not defined"
    assert len(set(table.key)) == len(table.key), f"{table.name}: a key column twice"
    assert not (table.statics & set(table.key)), f"{table.name}: a static key column"
    assert not table.statics or table.clustering, f"{table.name}: static columns need clustering"
    if t.keyword("WITH"):
        while True:
            if t.keyword("CLUSTERING", "ORDER", "BY", "("):
                order = []
                while True:
                    order.append(t.name())
                    assert t.take().upper() in ("ASC", "DESC")
                    if t.keyword(")"):
                        break
                    t.expect(",")
                assert order == table.clustering, f"{table.name}: clustering order {order}"
            else:
                option = t.name()
                assert option in TABLE_OPTIONS, f"{table.name}: table option {option!r}"
                t.expect("=")
                value = t.take()
                assert re.fullmatch(r"\d+", value), f"{table.name}: {option} = {value!r}"
                assert TABLE_OPTIONS[option](int(value)), f"{table.name}: {option} = {value}"
            if not t.keyword("AND"):
                break
    assert t.done(), f"trailing {t.rest()!r} in {cql!r}"
    return table


def parse_schema() -> dict[str, Table]:
    tables: dict[str, Table] = {}
    for cql in (schema.BOOTSTRAP, *(s for step in schema.MIGRATIONS for s in step)):
        assert cql.lstrip().upper().startswith("CREATE TABLE IF NOT EXISTS"), cql
        table = parse_create_table(cql)
        assert table.name not in tables, f"table {table.name} twice"
        tables[table.name] = table
    return tables


@dataclass
class Statement:
    name: str
    verb: str
    table: str
    markers: int
    lwt: bool
    #: column -> the relations on it ("=", "<", "<=", ">", ">=", "slice" for a tuple)
    where: dict[str, list[str]] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)


def _value(t: Tokens) -> int:
    """A value: a marker (1) or a literal (0)."""
    token = t.take()
    if token == "?":
        return 1
    assert re.fullmatch(r"-?\d+|'.*'|(?i:true|false|null)", token), f"bad value {token!r}"
    return 0


def _relations(t: Tokens, s: Statement) -> int:
    markers = 0
    while True:
        if t.keyword("("):
            cols = [t.name()]
            while t.keyword(","):
                cols.append(t.name())
            t.expect(")")
            op = t.take()
            assert op in ("<", "<=", ">", ">="), f"tuple relation {op!r}"
            t.expect("(")
            markers += _value(t)
            for _ in cols[1:]:
                t.expect(",")
                markers += _value(t)
            t.expect(")")
            for c in cols:
                s.where.setdefault(c, []).append("slice")
        else:
            column = t.name()
            op = t.take()
            assert op in ("=", "<", "<=", ">", ">="), f"relation {op!r}"
            markers += _value(t)
            s.where.setdefault(column, []).append(op)
        if not t.keyword("AND"):
            return markers


def _conditions(t: Tokens) -> tuple[list[str], int]:
    """After IF: EXISTS, NOT EXISTS, or ``col = value AND ...``."""
    if t.keyword("EXISTS") or t.keyword("NOT", "EXISTS"):
        return [], 0
    columns, markers = [], 0
    while True:
        columns.append(t.name())
        assert t.take() in ("=", "<", "<=", ">", ">="), "condition operator"
        markers += _value(t)
        if not t.keyword("AND"):
            return columns, markers


def parse_statement(name: str, cql: str, tables: dict[str, Table]) -> Statement:
    t = Tokens(cql)
    verb = t.take().upper()
    markers = 0
    conditions: list[str] = []
    lwt = False
    if verb == "SELECT":
        cols = [t.name()]
        while t.keyword(","):
            cols.append(t.name())
        t.expect("FROM")
        s = Statement(name, verb, t.name(), 0, False, columns=cols)
        if t.keyword("WHERE"):
            markers += _relations(t, s)
        if t.keyword("ORDER", "BY"):
            s.where.setdefault(t.name(), []).append("order")
            assert t.take().upper() in ("ASC", "DESC")
        if t.keyword("LIMIT"):
            markers += _value(t)
    elif verb == "INSERT":
        t.expect("INTO")
        table_name = t.name()
        t.expect("(")
        cols = [t.name()]
        while t.keyword(","):
            cols.append(t.name())
        t.expect(")", "VALUES", "(")
        values = [_value(t)]
        while t.keyword(","):
            values.append(_value(t))
        t.expect(")")
        assert len(values) == len(cols), f"{name}: {len(cols)} columns, {len(values)} values"
        markers += sum(values)
        s = Statement(name, verb, table_name, 0, False, columns=cols)
        if t.keyword("IF", "NOT", "EXISTS"):
            lwt = True
    elif verb == "UPDATE":
        table_name = t.name()
        if t.keyword("USING"):
            assert t.take().upper() in ("TTL", "TIMESTAMP")
            markers += _value(t)
        t.expect("SET")
        cols = []
        while True:
            cols.append(t.name())
            t.expect("=")
            markers += _value(t)
            if not t.keyword(","):
                break
        s = Statement(name, verb, table_name, 0, False, columns=cols)
        t.expect("WHERE")
        markers += _relations(t, s)
    elif verb == "DELETE":
        cols = []
        if not t.keyword("FROM"):
            cols.append(t.name())
            while t.keyword(","):
                cols.append(t.name())
            t.expect("FROM")
        s = Statement(name, verb, t.name(), 0, False, columns=cols)
        t.expect("WHERE")
        markers += _relations(t, s)
    else:
        raise AssertionError(f"{name}: unknown statement {cql!r}")
    if verb != "SELECT" and t.keyword("IF"):
        lwt = True
        conditions, more = _conditions(t)
        markers += more
    assert t.done(), f"{name}: trailing {t.rest()!r}"
    s.markers, s.lwt = markers, lwt

    # -- against the schema
    assert s.table in tables, f"{name}: no table {s.table}"
    table = tables[s.table]
    for column in [*s.columns, *s.where, *conditions]:
        assert column in table.columns, f"{name}: no column {s.table}.{column}"
    key = set(table.key)
    for column in conditions:
        assert column not in key, f"{name}: a condition on key column {column}"
    partition_ok = all(s.where.get(c) == ["="] for c in table.partition)
    restricted_clustering = [c for c in table.clustering if c in s.where]
    for c in s.where:
        assert c in key, f"{name}: WHERE on non-key column {c} (no ALLOW FILTERING here)"
    if any("order" in ops for ops in s.where.values()):
        ordered = [c for c, ops in s.where.items() if "order" in ops]
        assert ordered and all(c in table.clustering for c in ordered), f"{name}: ORDER BY"
        assert partition_ok, f"{name}: ORDER BY needs the partition key"
    # Restricted clustering columns form a prefix; only the last (or a tuple slice) is a range.
    prefix = table.clustering[: len(restricted_clustering)]
    assert restricted_clustering == prefix, f"{name}: clustering restriction not a prefix"
    for c in prefix[:-1]:
        ops = [o for o in s.where[c] if o != "order"]
        assert ops in (["="], ["slice"]), f"{name}: a range on {c} before the last"
    if verb == "SELECT":
        if s.where:
            assert partition_ok, f"{name}: SELECT without the whole partition key"
        else:
            assert s.name == "timeline_all" or table.name == "schema_version", f"{name}: a scan"
    elif verb == "INSERT":
        missing = [c for c in table.key if c not in s.columns]
        static_only = set(s.columns) - set(table.partition) <= table.statics
        if missing:
            assert static_only and not (set(table.partition) - set(s.columns)), (
                f"{name}: INSERT without key columns {missing}"
            )
    elif verb == "UPDATE":
        assert partition_ok, f"{name}: UPDATE without the whole partition key"
        for c in s.columns:
            assert c not in key, f"{name}: SET of key column {c}"
        if not set(s.columns) <= table.statics:
            for c in table.clustering:
                assert s.where.get(c) == ["="], f"{name}: UPDATE of rows needs {c} ="
    elif verb == "DELETE":
        assert partition_ok, f"{name}: DELETE without the whole partition key"
        if s.lwt:
            for c in table.clustering:
                assert s.where.get(c) == ["="], f"{name}: a conditional DELETE of a range"
    return s


@pytest.fixture(scope="module")
def tables() -> dict[str, Table]:
    return parse_schema()


@pytest.fixture(scope="module")
def statements(tables: dict[str, Table]) -> dict[str, Statement]:
    return {name: parse_statement(name, cql, tables) for name, cql in schema.STATEMENTS.items()}


def test_the_schema_parses(tables: dict[str, Table]) -> None:
    assert set(schema.TABLES) == set(tables) - {"schema_version"}
    assert schema.SCHEMA_VERSION == len(schema.MIGRATIONS) >= 1
    # The design's partitioning, as the issue asks for it.
    assert tables["chunks"].partition == ["message_id"]
    assert tables["chunks"].clustering == ["seq"]
    assert tables["messages"].partition == ["id"]
    assert tables["events"].partition == ["account_id", "bucket"]
    assert tables["events"].clustering == ["pos"]
    assert tables["events"].statics == {"next_n", "closed", "opened", "min_created", "max_created"}
    assert tables["search_terms"].partition == ["thread_id", "term"]
    assert tables["search_terms"].clustering == ["created", "rank"]
    assert tables["event_dedupe"].partition == ["account_id", "dedupe"]
    assert tables["direct_pairs"].partition == ["pair"]
    assert tables["media_parts"].clustering == ["part"]
    # live_messages: a few partitions (shards), each holding its live ids in order.
    assert tables["live_messages"].partition == ["shard"]
    assert tables["live_messages"].clustering == ["id"]
    assert tables["live_messages"].columns == {"shard": "int", "id": "text"}
    # Added by its own migration step, after the first: a keyspace at 1 gets it.
    steps = [n for n, step in enumerate(schema.MIGRATIONS) for s in step if "live_messages" in s]
    assert steps == [1]


def test_live_shards_are_stable_and_spread() -> None:
    # Every process must put an id in the same shard: no ``hash()`` (salted per run).
    code = "from voxer_stream.store.cassandra_schema import live_shard; print(live_shard('m-7'))"
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert int(other) == schema.live_shard("m-7")
    counts = [0] * schema.LIVE_SHARDS
    for n in range(1600):
        counts[schema.live_shard(f"msg-{n:08x}")] += 1
    assert schema.LIVE_SHARDS == 16
    assert min(counts) > 50 and max(counts) < 150  # about 100 each


def test_the_checker_catches_mistakes(tables: dict[str, Table]) -> None:
    # The checker itself: each of these is wrong in a way Cassandra would refuse.
    bad = {
        "no table": "SELECT id FROM nothing WHERE id = ?",
        "no column": "SELECT nope FROM accounts WHERE id = ?",
        "half a partition key": "SELECT pos FROM events WHERE account_id = ?",
        "filtering": "SELECT id FROM accounts WHERE username = ?",
        "skipped clustering": "SELECT rank FROM search_terms WHERE thread_id = ? AND term = ?"
        " AND rank = ?",
        "insert without key": "INSERT INTO chunks (message_id, ts) VALUES (?, ?)",
        "set a key": "UPDATE chunks SET seq = ? WHERE message_id = ? AND seq = ?",
        "update a row by partition": "UPDATE chunks SET ts = ? WHERE message_id = ?",
        "values": "INSERT INTO accounts (id, username) VALUES (?)",
        "reserved": "SELECT id FROM accounts WHERE token = ?",
    }
    for what, cql in bad.items():
        with pytest.raises(AssertionError):
            parse_statement(what, cql, tables)
    with pytest.raises(AssertionError):
        parse_create_table("CREATE TABLE IF NOT EXISTS t (a text, b nosuchtype, PRIMARY KEY (a))")
    with pytest.raises(AssertionError):
        parse_create_table("CREATE TABLE IF NOT EXISTS t (a text, s int STATIC, PRIMARY KEY (a))")
    with pytest.raises(AssertionError):
        parse_create_table(
            "CREATE TABLE IF NOT EXISTS t (a text, b int, PRIMARY KEY (a, b))"
            " WITH CLUSTERING ORDER BY (a DESC)"
        )
    for options in ("gc_grace_seconds = 0", "no_such_option = 1", "gc_grace_seconds = 'x'"):
        with pytest.raises(AssertionError):
            parse_create_table(f"CREATE TABLE IF NOT EXISTS t (a text PRIMARY KEY) WITH {options}")
    both = parse_create_table(
        "CREATE TABLE IF NOT EXISTS t (a text, b int, PRIMARY KEY (a, b))"
        " WITH CLUSTERING ORDER BY (b DESC) AND gc_grace_seconds = 3600"
    )
    assert both.clustering == ["b"]


def test_every_statement_fits_the_schema(statements: dict[str, Statement]) -> None:
    lwts = {n for n, s in statements.items() if s.lwt}
    # The promises the module docstring makes rest on these being conditional.
    for name in (
        "account_insert",
        "username_claim",
        "thread_insert",
        "pair_claim",
        "participant_insert",
        "message_insert",
        "reaction_insert",
        "receipt_insert",
        "contact_insert",
        "media_claim",
        "push_claim",
        "dedupe_claim",
        "bucket_open",
        "bucket_advance",
        "bucket_close",
        "timeline_trim",
        "schema_lock",
    ):
        assert name in lwts, name
    # And the hot path is not: appending a chunk is plain quorum writes.
    for name in ("chunk_insert", "message_counts", "event_insert", "search_insert"):
        assert name not in lwts, name


def _lwt_cells(statements: dict[str, Statement]) -> tuple[set[str], set[str]]:
    lwt: set[str] = set()
    plain: set[str] = set()
    for s in statements.values():
        if s.verb in ("INSERT", "UPDATE") and s.table != "schema_version":
            for c in s.columns:
                (lwt if s.lwt else plain).add(f"{s.table}.{c}")
    return lwt, plain


def test_no_cell_is_written_by_both_lwts_and_plain_writes(
    statements: dict[str, Statement], tables: dict[str, Table]
) -> None:
    lwt, plain = _lwt_cells(statements)
    keys = {f"{t.name}.{c}" for t in tables.values() for c in t.key}
    assert (lwt & plain) - keys == set()
    # Deletes too: a plain delete of rows whose cells LWTs write (or the other way
    # round) is ordered by two different clocks. Where it happens, it is on purpose:
    allowed = {
        "events": "trim deletes events older than the retention (days, not milliseconds)",
        "event_dedupe": "a claim is released by an LWT only while its plain pos is unwritten"
        " (a failed append), or when trim finds its event gone",
    }
    lwt_tables = {c.split(".")[0] for c in lwt}
    plain_tables = {c.split(".")[0] for c in plain}
    for s in statements.values():
        if s.verb != "DELETE" or s.table == "schema_version":
            continue
        other = plain_tables if s.lwt else lwt_tables
        if s.table in other:
            assert s.table in allowed, f"{s.name}: {'LWT' if s.lwt else 'plain'} delete"


def _calls_with_statement_names() -> list[tuple[str, int | None, int]]:
    """(statement, number of values the code binds or None, line) for every place
    ``cassandra.py`` names a statement: ``self._lwt("name", (a, b))``, ``("name",
    (a, b))`` in a batch, and so on."""
    source = inspect.getsource(cassandra_module)
    found: list[tuple[str, int | None, int]] = []

    def arity(node: ast.AST) -> int | None:
        if isinstance(node, ast.Tuple):
            if any(isinstance(e, ast.Starred) for e in node.elts):
                return None
            return len(node.elts)
        return None

    for node in ast.walk(ast.parse(source)):
        items: list[ast.AST] = []
        if isinstance(node, ast.Call):
            items = list(node.args)
        elif isinstance(node, ast.Tuple):
            items = list(node.elts)
        for i, item in enumerate(items):
            if isinstance(item, ast.Constant) and item.value in schema.STATEMENTS:
                params = items[i + 1] if i + 1 < len(items) else None
                found.append((item.value, None if params is None else arity(params), item.lineno))
    return found


def test_bind_markers_match_the_values_passed(statements: dict[str, Statement]) -> None:
    uses = _calls_with_statement_names()
    checked = 0
    for name, values, line in uses:
        if values is None:
            continue
        assert values == statements[name].markers, (
            f"cassandra.py:{line}: {name} takes {statements[name].markers} values, gets {values}"
        )
        checked += 1
    assert checked > 80
    # Every statement is used somewhere (the migration's in _migrate, by name too).
    tree = ast.parse(inspect.getsource(cassandra_module))
    named = {
        n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }
    assert set(schema.STATEMENTS) - named - set(schema.MIGRATION_STATEMENTS) == set()


def test_keyspace_ddl() -> None:
    ddl = schema.keyspace_ddl("voxer", {"class": "NetworkTopologyStrategy", "dc1": 3, "dc2": 3})
    assert ddl == (
        "CREATE KEYSPACE IF NOT EXISTS voxer WITH replication = {'class':"
        " 'NetworkTopologyStrategy', 'dc1': '3', 'dc2': '3'} AND durable_writes = true"
    )
    for keyspace, replication in (
        ("1voxer", {"class": "SimpleStrategy"}),
        ("vox-er", {"class": "SimpleStrategy"}),
        ("x" * 49, {"class": "SimpleStrategy"}),
        ("voxer", {"replication_factor": 3}),
        ("voxer", {"class": "SimpleStrategy', 'x': '1"}),
    ):
        with pytest.raises(ValueError, match=r"keyspace name|replication"):
            schema.keyspace_ddl(keyspace, replication)  # type: ignore[arg-type]


# -- the pure helpers ---------------------------------------------------------------------


def test_positions_grow_with_bucket_and_n() -> None:
    a, b = "acc-1", "acc-2"
    seen = [schema.position(a, bucket, n) for bucket in range(3) for n in (1, 2, 49_999, 50_000)]
    assert seen == sorted(seen)
    assert len(set(seen)) == len(seen)
    assert all(p > 0 for p in seen)
    assert all(schema.bucket_of(schema.position(a, k, 7)) == k for k in (0, 1, 5, 10**6))
    assert schema.position(a, 0, 1) != schema.position(b, 0, 1)  # the salt
    assert schema.bucket_of(0) == 0
    assert schema.bucket_of(-5) == 0
    assert schema.position(a, 2**22, 2**20 - 1) < 2**63  # a bigint, for thousands of years


def test_search_tokens_and_queries() -> None:
    assert schema.tokens("Grüße aus München \N{BICYCLE}!") == ["gruße", "aus", "munchen"]
    assert schema.tokens("BICYCLE bicycles") == ["bicycle", "bicycles"]
    keys = schema.index_keys("red bicycle")
    assert {"r", "re", "red", "b", "bicy", "bicycle"} <= keys
    assert "bicycles" not in keys
    long_word = "a" * 30
    assert max(len(k) for k in schema.index_keys(long_word)) == schema.PREFIX_MAX
    # What the service sends (rest_service.fts_query): quoted words, the last a prefix.
    query = '"red" "bicy"*'
    terms = schema.parse_query(query)
    assert terms == [("red", False), ("bicy", True)]
    assert schema.lookup_key(terms) == "bicy"
    assert schema.matches(terms, "the bicycles are red")
    assert not schema.matches(terms, "a red car")
    assert not schema.matches(schema.parse_query('"bicycle"'), "bicycles")
    assert schema.matches(schema.parse_query('"MÜNCHEN"'), "Grüße aus München")
    assert schema.parse_query('"say ""hi"""*') == [("say", False), ("hi", True)]
    assert schema.parse_query("") == []
    snip = schema.snippet(schema.parse_query('"bicycle"'), "my red bicycle is fast")
    assert snip == "my red [bicycle] is fast"
    long_text = " ".join(f"w{i}" for i in range(40)) + " bicycle " + "tail " * 20
    cut = schema.snippet(schema.parse_query('"bicycle"'), long_text)
    assert cut.startswith("...")
    assert cut.endswith("...")
    assert "[bicycle]" in cut
    rank = schema.rank_of("message", "msg-1")
    assert 0 <= rank < 2**63
    assert rank == schema.rank_of("message", "msg-1") != schema.rank_of("thread", "msg-1")


def test_the_service_queries_parse() -> None:
    from voxer_stream.transports.rest_service import fts_query

    for text, expected in (
        ("red bicy", [("red", False), ("bicy", True)]),
        ('say "hi', [("say", False), ("hi", True)]),
        ("München", [("munchen", True)]),
    ):
        assert schema.parse_query(fts_query(text)) == expected


def test_parse_hosts() -> None:
    assert parse_hosts("db1, db2:9043,[::1]:9044,[fe80::1]") == [
        ("db1", 9042),
        ("db2", 9043),
        ("::1", 9044),
        ("fe80::1", 9042),
    ]
    assert parse_hosts(["a:1", "b,c:2"]) == [("a", 1), ("b", 9042), ("c", 2)]
    for bad in ("", ",", "a:b", "a:0", "a:70000", "::1", "a:1:2"):
        with pytest.raises(ValueError, match=r"host|port"):
            parse_hosts(bad)


def test_the_driver_objects_the_store_builds() -> None:
    # Built as the store builds them, without connecting: the driver accepts the
    # arguments, and the defaults are the ones the docstring states.
    from cassandra import ConsistencyLevel
    from cassandra.cluster import ResponseFuture
    from cassandra.query import dict_factory

    store = open_cassandra_store("127.0.0.1:9043,localhost", local_dc="dc1", username="u")
    assert store.replication == {"class": "SimpleStrategy", "replication_factor": 3}
    cluster = store.make_cluster()
    try:
        assert cluster.contact_points == [("127.0.0.1", 9043), ("localhost", 9042)]
        profile = cluster.profile_manager.default
        assert profile.consistency_level == ConsistencyLevel.QUORUM
        assert profile.serial_consistency_level == ConsistencyLevel.SERIAL
        assert profile.row_factory is dict_factory
    finally:
        cluster.shutdown()
    local = open_cassandra_store("localhost", consistency="LOCAL_QUORUM").make_cluster()
    try:
        assert local.profile_manager.default.consistency_level == ConsistencyLevel.LOCAL_QUORUM
        assert local.profile_manager.default.serial_consistency_level == (
            ConsistencyLevel.LOCAL_SERIAL
        )
    finally:
        local.shutdown()
    for attribute in ("add_callbacks", "start_fetching_next_page", "has_more_pages"):
        assert hasattr(ResponseFuture, attribute)
    with pytest.raises(ValueError, match="consistency"):
        open_cassandra_store("db", consistency="ONE")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keyspace name"):
        open_cassandra_store("db", keyspace="no-dashes")


async def test_a_closed_store_refuses_work() -> None:
    store = open_cassandra_store("127.0.0.1")
    with pytest.raises(StoreError):
        await store.get_account("acc-1")
    with pytest.raises(StoreError):
        await store.append_chunks("msg-1", [StoredChunk(seq=0, ts=0, duration=1, packets=())])
    await store.aclose()  # closing what never opened is fine


# -- live_messages without a node: the store's code over a fake request layer ---------------


class FakeRequests:
    """The statements creating, closing and listing audio messages run, on dicts, in
    place of the store's request layer (``_lwt``, ``_exec``, ``_rows``): the code above
    it (orders of writes, the merge of the shards, the check of each row) runs as is."""

    def __init__(self) -> None:
        self.messages: dict[str, dict[str, Any]] = {}
        self.live: set[tuple[int, str]] = set()
        self.log: list[tuple[str, str]] = []  # (statement, message id)

    async def lwt(self, name: str, params: Any = ()) -> tuple[bool, dict[str, Any]]:
        await trio.lowlevel.checkpoint()
        assert name == "message_insert", name
        columns = ("id", "thread_id", "sender", "codec", "created", "kind", "body")
        columns += ("directed_to", "forwarded_from", "media_id", "recalled")
        self.log.append((name, params[0]))
        if params[0] in self.messages:
            return False, {"[applied]": False}
        row = dict(zip(columns, params, strict=True))
        self.messages[params[0]] = row | {"state": None, "chunks": None, "duration": None}
        return True, {"[applied]": True}

    async def execute(self, name: str, params: Any = ()) -> None:
        await trio.lowlevel.checkpoint()
        if name == "message_progress":
            state, chunks, duration, message_id = params
            self.messages[message_id].update(state=state, chunks=chunks, duration=duration)
        elif name in ("live_insert", "live_delete"):
            shard, message_id = params
            assert shard == schema.live_shard(message_id)
            (self.live.add if name == "live_insert" else self.live.discard)((shard, message_id))
        else:
            assert name in ("message_index_insert", "search_insert"), name
            return
        self.log.append((name, params[-1]))

    async def rows(self, name: str, params: Any = (), **options: Any) -> list[dict[str, Any]]:
        await trio.lowlevel.checkpoint()
        if name == "message_get":
            row = self.messages.get(params[0])
            return [] if row is None else [dict(row)]
        if name == "participant_list":
            return []
        assert name == "live_page", name
        shard, after, limit = params
        ids = sorted(i for s, i in self.live if s == shard and i > after)
        self.log.append((name, str(shard)))
        return [{"id": i} for i in ids[:limit]]


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> tuple[CassandraStore, FakeRequests]:
    store = open_cassandra_store("127.0.0.1")
    fake = FakeRequests()
    monkeypatch.setattr(store, "_lwt", fake.lwt)
    monkeypatch.setattr(store, "_exec", fake.execute)
    monkeypatch.setattr(store, "_rows", fake.rows)
    monkeypatch.setattr(store, "_open", True)
    return store, fake


def live_audio(message_id: str) -> MessageRecord:
    return MessageRecord(
        id=message_id, thread_id="thr-1", sender="acc-1", codec="opus", created=1, state="live"
    )


async def test_offline_live_rows_follow_create_and_close(
    offline: tuple[CassandraStore, FakeRequests],
) -> None:
    store, fake = offline
    await store.create_message(live_audio("msg-a"))
    text = replace(live_audio("msg-t"), state="closed", kind="text", body='{"text": "hi"}')
    await store.create_message(text)
    writes = [entry for entry in fake.log if entry[0] != "message_index_insert"]
    # The row before the state (a crash between leaves a row readers skip, never a live
    # message unlisted); none for a message created closed.
    assert writes[:3] == [
        ("message_insert", "msg-a"),
        ("live_insert", "msg-a"),
        ("message_progress", "msg-a"),
    ]
    assert ("live_insert", "msg-t") not in writes
    assert await store.live_messages() == ["msg-a"]
    fake.log.clear()
    await store.create_message(live_audio("msg-a"))  # a replayed create: nothing listed twice
    assert ("live_insert", "msg-a") not in fake.log
    await store.close_message("msg-a", 0, 0)
    # The state before the row goes: a crash between leaves a row readers skip.
    assert fake.log[-2:] == [("message_progress", "msg-a"), ("live_delete", "msg-a")]
    assert fake.live == set()
    assert await store.live_messages() == []
    await store.create_message(live_audio("msg-a"))  # created again after its close
    assert fake.live == set()
    assert await store.live_messages() == []


async def test_offline_a_create_cut_short_is_finished_listed(
    offline: tuple[CassandraStore, FakeRequests],
) -> None:
    store, fake = offline
    await fake.lwt("message_insert", store._message_values(live_audio("msg-x")))
    assert fake.messages["msg-x"]["state"] is None  # crashed right after its LWT
    await store.create_message(live_audio("msg-x"))  # the retry finishes it
    assert fake.messages["msg-x"]["state"] == "live"
    assert await store.live_messages() == ["msg-x"]


async def test_offline_live_messages_merge_the_shards_and_skip_stale_rows(
    offline: tuple[CassandraStore, FakeRequests],
) -> None:
    store, fake = offline
    ids = [f"msg-{n:03d}" for n in range(60)]
    for message_id in reversed(ids):
        await store.create_message(live_audio(message_id))
    assert len({schema.live_shard(i) for i in ids}) == schema.LIVE_SHARDS  # all are used
    # Closes cut short after the state (rows left behind), in a run long enough to
    # fill whole pages: the listing reads on until it has ``limit`` live ones.
    stale = set(ids[10:30]) | {ids[0], ids[59]}
    for message_id in stale:
        fake.messages[message_id]["state"] = "closed"
    live = [i for i in ids if i not in stale]
    fake.log.clear()
    assert await store.live_messages(limit=5) == live[:5]
    assert len([e for e in fake.log if e[0] == "live_page"]) == schema.LIVE_SHARDS * 2
    assert await store.live_messages(after=live[4], limit=5) == live[5:10]
    assert await store.live_messages(after="msg-009", limit=3) == live[9:12]
    assert await store.live_messages() == live
    # The stale rows read were deleted: the next listing does not read them again.
    assert {i for _, i in fake.live} == set(live)
    assert await store.live_messages(after=live[-1]) == []
    assert await store.live_messages(limit=0) == []


# -- the contracts, against a real node ------------------------------------------------------


def _store(keyspace: str) -> CassandraStore:
    rf = int(os.environ.get("VOXER_CASSANDRA_RF", "1"))
    return open_cassandra_store(
        HOSTS,
        keyspace=keyspace,
        replication={"class": "SimpleStrategy", "replication_factor": rf},
        local_dc=os.environ.get("VOXER_CASSANDRA_DC") or None,
    )


@pytest.fixture(scope="session")
def cassandra_keyspace() -> Iterator[tuple[str, Any]]:
    """A fresh keyspace for this run (created and migrated by opening a store once)
    and a plain driver session on it; dropped at the end."""
    keyspace = f"voxer_test_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        async with _store(keyspace):
            pass

    trio.run(create)
    cluster = _store(keyspace).make_cluster()
    session = cluster.connect(keyspace)
    try:
        yield keyspace, session
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=120)
        cluster.shutdown()


@pytest.fixture
def cassandra_factory(cassandra_keyspace: tuple[str, Any]) -> StoreFactory:
    keyspace, session = cassandra_keyspace
    for table in schema.TABLES:  # an empty database per test; schema_version stays
        session.execute(f"TRUNCATE {table}", timeout=120)
    return lambda: _store(keyspace)


if HOSTS:

    class TestCassandraContract(StoreContract):
        @pytest.fixture
        def store_factory(self, cassandra_factory: StoreFactory) -> StoreFactory:
            return cassandra_factory

    class TestCassandraServiceContract(ServiceStoreContract):
        @pytest.fixture
        def store_factory(self, cassandra_factory: StoreFactory) -> StoreFactory:
            return cassandra_factory

    async def test_concurrent_opens_do_not_migrate_again(cassandra_factory: StoreFactory) -> None:
        # The keyspace is at SCHEMA_VERSION: two opens at once are just two opens.
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(_open_and_close, cassandra_factory)

    async def _open_and_close(factory: StoreFactory) -> None:
        async with factory() as store:
            assert await store.get_account("nobody") is None

else:

    def test_storage_contracts_against_a_node() -> None:
        # Both contract suites (store_contract, store_service_contract), as one skip.
        pytest.skip(NO_NODE)
