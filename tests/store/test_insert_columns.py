"""`Transaction.insert_columns` stores exactly the values they are given, on both
databases and on each of SQLite's two paths (one INSERT over json_each when only texts and packed
blobs vary, a statement per row otherwise), and refuse a column of the wrong length before
writing anything."""

from __future__ import annotations

from typing import Any

import pytest

from service.store.connect import connect
from service.store.database import Database, Each, Packed

COLUMNS = [("k", "text"), ("n", "int"), ("x", "real"), ("t", "text"), ("b", "blob"), ("s", "small")]


@pytest.fixture
def database(store_url: str) -> Any:
    opened = connect(store_url)
    with opened.transaction() as tx:
        types = tx.dialect.types
        tx.execute(
            f"CREATE TABLE t (k TEXT PRIMARY KEY, n {types['int']}, x {types['real']}, t TEXT, "
            f"b {types['blob']}, s {types['small']})"
        )
    yield opened
    opened.close()


def stored(database: Database) -> list[tuple[Any, ...]]:
    with database.transaction(write=False) as tx:
        rows = tx.all("SELECT k, n, x, t, b, s FROM t ORDER BY k")
    return [(k, n, x, t, None if b is None else bytes(b), s) for k, n, x, t, b, s in rows]


@pytest.mark.parametrize(
    "x",
    [Each([0.1, 1e-300, 2.5e17]), 0.1],  # floats that vary (a statement per row), or one for all
)
def test_columns_go_in_as_given(database: Database, x: Any) -> None:
    blobs = [b"\x00\x01", b"\xff\x00", b"ab"]
    columns = [
        ("k", "text", Each(["a", "b\u00e9", "c'\""])),
        ("n", "int", 7),
        ("x", "real", x),
        ("t", "text", Each(['{"k": "v"}', None, "["])),
        ("b", "blob", Packed(b"".join(blobs), 2)),
        ("s", "small", None),
    ]
    with database.transaction() as tx:
        tx.insert_columns("t", columns, 3)
    xs = x.values if isinstance(x, Each) else [x] * 3
    expected = [("a", 7, xs[0], '{"k": "v"}', blobs[0], None)]
    expected += [("b\u00e9", 7, xs[1], None, blobs[1], None), ("c'\"", 7, xs[2], "[", blobs[2], None)]
    assert stored(database) == expected


def test_rows_with_a_null_blob_or_packed_blobs_go_in_as_given(database: Database) -> None:
    rows = [
        ("r1", 1, 0.5, "u", b"xyz", 2),
        ("r2", 1, 0.5, "u", None, 2),  # a blob column with a null: a statement per row
        ("r3", 1, 0.5, "v", b"x", 2),
    ]
    same_sized = [("q1", 3, 1.5, None, b"12", 1), ("q2", 3, 1.5, None, b"34", 1)]  # packed, one INSERT
    with database.transaction() as tx:
        varying = [("k", "text", Each([row[0] for row in rows])), ("n", "int", 1), ("x", "real", 0.5)]
        varying += [("t", "text", Each([row[3] for row in rows])), ("b", "blob", Each([row[4] for row in rows]))]
        tx.insert_columns("t", [*varying, ("s", "small", 2)], 3)
        packed = [("k", "text", Each(["q1", "q2"])), ("n", "int", 3), ("x", "real", 1.5), ("t", "text", None)]
        tx.insert_columns("t", [*packed, ("b", "blob", Packed(b"1234", 2)), ("s", "small", 1)], 2)
        tx.insert_columns("t", [("k", "text", Each([]))], 0)  # no rows: nothing to do
    assert stored(database) == sorted(same_sized + rows)


@pytest.mark.parametrize(
    "bad",
    [("t", "text", Each(["only one"])), ("b", "blob", Packed(b"12345", 2))],
)
def test_a_column_of_another_length_is_refused_and_nothing_is_written(database: Database, bad: Any) -> None:
    columns = [("k", "text", Each(["a", "b"])), ("n", "int", 1), bad]
    with pytest.raises(ValueError, match="does not hold 2 values"), database.transaction() as tx:
        tx.insert_columns("t", columns, 2)
    assert stored(database) == []
