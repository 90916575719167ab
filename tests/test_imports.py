"""Import direction and where SQL lives: only src/editaudit/store/ talks to SQLite.

Read from the source (AST), not by importing, so a module that would only reach the database on some
path is still caught. "Writing SQL" is any of: a string that reads as an SQL statement, a call of the
database's own API (``.execute``, ``.rows_where``, ``.insert_all`` …), indexing ``.db[...]``, or the store's
generic row helpers (``store.rows/insert/update``, which take table names and WHERE clauses).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "editaudit"
TUI = ROOT / "tui" / "editaudit_tui"

SQL = re.compile(r"^\s*(select\s.+\sfrom\s|insert\s+(or\s+\w+\s+)?into\s|update\s+\w+\s+set\s|delete\s+from\s|"
                 r"create\s+(table|index|view)\s|drop\s+table\s|pragma\s)", re.I | re.S)
DB_CALLS = {"execute", "executemany", "executescript", "rows_where", "insert_all", "upsert_all", "delete_where",
            "create_table", "create_index"}
STORE_HELPERS = {"rows", "insert", "update"}


def modules(root: Path, skip: tuple[str, ...] = ()) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if not any(p.relative_to(root).as_posix().startswith(s) for s in skip))


def sqlite_imports(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in ("sqlite_utils", "sqlite3")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("sqlite_utils", "sqlite3"):
            found.append(node.module or "")
    return found


def sql_uses(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.match(node.value):
            found.append(f"line {node.lineno}: SQL text {node.value[:40]!r}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            attr, owner = node.func.attr, node.func.value
            if attr in DB_CALLS:
                found.append(f"line {node.lineno}: .{attr}(…)")
            elif attr in STORE_HELPERS and isinstance(owner, ast.Name) and owner.id == "store" and node.args \
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.append(f"line {node.lineno}: store.{attr}({node.args[0].value!r}, …)")
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "db":
            found.append(f"line {node.lineno}: .db[…]")
    return found


def problems(paths: list[Path], check) -> dict[str, list[str]]:
    out = {}
    for p in paths:
        hits = check(ast.parse(p.read_text(encoding="utf-8"), str(p)))
        if hits:
            out[str(p.relative_to(ROOT))] = hits
    return out


OUTSIDE_STORE = modules(SRC, skip=("store/",))


def test_the_checks_see_sql_and_sqlite_imports():
    """The detectors themselves: what they must catch, and the store itself (where all of it lives) is caught."""
    tree = ast.parse("import sqlite_utils\nfrom sqlite3 import connect\nstore.db['x'].insert({})\n"
                     "db.execute('select id from sessions')\nstore.rows('scans', 'id = ?', [1])\nx = 'update t set a = 1'")
    assert sqlite_imports(tree) == ["sqlite_utils", "sqlite3"]
    assert len(sql_uses(tree)) == 5
    assert problems(modules(SRC / "store"), sql_uses) and problems(modules(SRC / "store"), sqlite_imports)
    assert not sql_uses(ast.parse("print('Select a session, then press Enter')\nrows.update(x)\nstore.session('a')"))


def test_no_module_outside_store_imports_sqlite():
    assert OUTSIDE_STORE and not problems(OUTSIDE_STORE, sqlite_imports)


@pytest.mark.parametrize("where", ["cli", "tui"])
def test_cli_and_app_never_import_sqlite_or_write_sql(where):
    paths = modules(SRC / "cli") if where == "cli" else modules(TUI)
    assert paths
    assert not problems(paths, sqlite_imports)
    assert not problems(paths, sql_uses)


def test_no_module_outside_store_writes_sql():
    assert not problems(OUTSIDE_STORE, sql_uses)
