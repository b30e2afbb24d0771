"""The fast path for Core statements: compiled once, run on the connection's DB-API cursor.

Ingest runs about fifteen statements per mail, all in the single SQLite writer, where
SQLAlchemy's per-call machinery cost more than the driver (see :class:`Prebuilt`). This
module repeats a small part of SQLAlchemy's execution of a compiled statement (binding,
defaults, result processing), so it depends on the SQLAlchemy minor version pinned in
``pyproject.toml``; ``tests/test_fastexec.py`` runs every prebuilt statement through both
paths on SQLite and PostgreSQL and compares what they read and write.
"""

from __future__ import annotations

import sys
from collections import namedtuple
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

# Every Prebuilt made, in the order made: tests/test_fastexec.py runs each statement that
# mailgate makes through SQLAlchemy and through the fast path, and fails for one it has no
# case for. Statements are made once (at import, or once per dialect by insert_once), so
# this stays small.
REGISTRY: list[Prebuilt] = []


class Prebuilt:
    """A Core statement that runs on the connection's DB-API cursor, compiled once.

    Ingest runs about fifteen statements per mail, all in the single SQLite writer.
    SQLAlchemy spends about 30 µs on each (cache key, execution context, result objects),
    the driver about 2 µs: the per-statement overhead was a third of the writer's time
    per mail. This keeps SQLAlchemy's SQL, types and defaults (compiled by SQLAlchemy once
    per dialect and set of parameter names) and skips only the per-call machinery.
    Statements it cannot run this way (another paramstyle, defaults computed in SQL, an
    empty IN list) go through ``Connection.execute`` unchanged.
    """

    __slots__ = ("statement", "module", "_name", "_plans")

    def __init__(self, statement: Any, name: str | None = None) -> None:
        """``name`` says which statement this is in test reports (see :attr:`name`)."""
        self.statement = statement
        self.module: str = sys._getframe(1).f_globals.get("__name__", "")  # who built it
        self._name = name
        self._plans: dict[tuple[str, frozenset[str]], _Plan | None] = {}
        REGISTRY.append(self)

    @property
    def name(self) -> str:
        """The name given, else ``module.VARIABLE`` of the module-level name bound to it."""
        if self._name is not None:
            return self._name
        found = sys.modules.get(self.module)
        for variable, value in vars(found).items() if found is not None else ():
            if value is self:
                return f"{self.module}.{variable}"
        return f"{self.module}: {self.statement}"

    def __repr__(self) -> str:
        return f"<Prebuilt {self.name}>"

    def run(self, conn: Connection, params: dict[str, Any] | None = None) -> Rows:
        params = params or {}
        key = (conn.dialect.name, frozenset(params))
        plan = self._plans.get(key, _UNPLANNED)
        if plan is _UNPLANNED:
            plan = self._plans[key] = _Plan.build(self.statement, conn.dialect, params)
        if (
            plan is None
            or not conn.in_transaction()
            or any(not params.get(name) for name in plan.expanding)  # IN () is spelt per dialect
        ):
            return Rows.of(conn.execute(self.statement, params))
        return plan.run(conn, params)


class Rows:
    """What a :class:`Prebuilt` statement returned: the calls ingest makes on a Result."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: Sequence[Any], rowcount: int = -1) -> None:
        self._rows = rows
        self.rowcount = rowcount

    @classmethod
    def of(cls, result: Any) -> Rows:
        rows = list(result) if result.returns_rows else []
        return cls(rows, result.rowcount)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def all(self) -> list[Any]:
        return list(self._rows)

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        if not self._rows:
            raise sa_exc.NoResultFound("no row where exactly one was expected")
        if len(self._rows) > 1:
            raise sa_exc.MultipleResultsFound(f"{len(self._rows)} rows where one was expected")
        return self._rows[0][0]

    def scalars(self) -> list[Any]:
        return [row[0] for row in self._rows]


_UNPLANNED: Any = object()


class _Plan:
    """One statement compiled for one dialect and set of parameter names."""

    __slots__ = (
        "sql",
        "names",
        "binds",
        "defaults",
        "expanding",
        "positional",
        "columns",
        "processors",
        "row",
    )

    def __init__(self) -> None:
        self.sql = ""
        self.names: list[str] = []  # positional order (qmark) or the names (pyformat)
        self.binds: dict[str, tuple[Any, Any]] = {}  # name -> (processor, literal value)
        self.defaults: dict[str, Any] = {}  # Python-side column defaults not given
        self.expanding: frozenset[str] = frozenset()
        self.positional = True
        self.columns: list[Any] | None = None  # result columns, when it returns rows
        self.processors: list[Any] | None = None  # their result processors, from the first run
        self.row: Any = None  # named tuples, so rows read like SQLAlchemy's

    @classmethod
    def build(cls, statement: Any, dialect: Any, params: dict[str, Any]) -> _Plan | None:
        if dialect.paramstyle not in ("qmark", "pyformat"):
            return None
        dml = getattr(statement, "is_dml", False)
        compiled = statement.compile(dialect=dialect, column_keys=list(params) if dml else None)
        if compiled.escaped_bind_names or getattr(compiled, "postfetch", None):
            return None
        plan = cls()
        plan.sql = compiled.string
        plan.positional = dialect.paramstyle == "qmark"
        plan.names = list(compiled.positiontup or ()) if plan.positional else list(compiled.binds)
        prefetch = (
            *getattr(compiled, "insert_prefetch", ()),
            *getattr(compiled, "update_prefetch", ()),
        )
        for column in prefetch:
            default = column.default
            if default is None or not (default.is_scalar or default.is_callable):
                return None
            plan.defaults[column.key] = default
        for name, bind in compiled.binds.items():
            if bind.callable is not None:  # a value computed per execution: SQLAlchemy's job
                return None
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            literal = bind.effective_value if name not in params else None
            plan.binds[name] = (processor, literal)
        plan.expanding = frozenset(n for n, b in compiled.binds.items() if b.expanding)
        columns = statement.selected_columns if statement.is_select else statement.exported_columns
        if len(columns):
            plan.columns = list(columns)
            # Named as SQLAlchemy names its rows' fields: an unnamed count() is "count_1".
            names = [entry.keyname for entry in compiled._result_columns]
            if len(names) != len(columns):
                names = [c.key for c in columns]
            plan.row = namedtuple("Row", names, rename=True)  # type: ignore[misc]
        return plan

    def _value(self, name: str, params: dict[str, Any]) -> Any:
        processor, literal = self.binds[name]
        if name in params:
            value = params[name]
        elif name in self.defaults:
            default = self.defaults[name]
            value = default.arg if default.is_scalar else default.arg(None)
        else:
            value = literal
        if processor is None or value is None:
            return value
        if name in self.expanding:
            return [processor(v) for v in value]
        return processor(value)

    def run(self, conn: Connection, params: dict[str, Any]) -> Rows:
        values = {name: self._value(name, params) for name in self.binds}
        sql = self.sql
        for name in self.expanding:
            items = values[name]
            if self.positional:
                marks = ", ".join("?" * len(items))
            else:
                marks = ", ".join(f"%({name}_{i})s" for i in range(len(items)))
                values.update({f"{name}_{i}": v for i, v in enumerate(items)})
            sql = sql.replace(f"__[POSTCOMPILE_{name}]", marks)
        if self.positional:
            args: Any = []
            for name in self.names:
                if name in self.expanding:
                    args.extend(values[name])
                else:
                    args.append(values[name])
        else:
            args = {n: v for n, v in values.items() if n not in self.expanding}
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        cursor = dbapi.cursor()
        try:
            cursor.execute(sql, args)
            description = cursor.description
            rows = cursor.fetchall() if description is not None else []
            count = cursor.rowcount
        except conn.dialect.loaded_dbapi.Error as exc:
            invalidated = conn.dialect.is_disconnect(exc, dbapi, cursor)
            if invalidated:
                conn.invalidate(exc)
            raise sa_exc.DBAPIError.instance(
                sql,
                args,
                exc,
                conn.dialect.loaded_dbapi.Error,
                connection_invalidated=invalidated,
                dialect=conn.dialect,
            ) from exc
        finally:
            cursor.close()
        if self.columns is None:
            rows = []  # PostgreSQL's implicit RETURNING of a new row's id: not asked for
        elif rows:
            rows = self._process(conn.dialect, description, rows)
        return Rows(rows, count)

    def _process(self, dialect: Any, description: Any, rows: Sequence[Any]) -> list[Any]:
        processors = self.processors
        if processors is None:
            processors = self.processors = [
                column.type.dialect_impl(dialect).result_processor(dialect, described[1])
                for column, described in zip(self.columns or (), description, strict=True)
            ]
        make = self.row
        if any(processors):
            return [
                make(*(p(v) if p is not None else v for p, v in zip(processors, row, strict=True)))
                for row in rows
            ]
        return [make(*row) for row in rows]


def insert_for(db: Session | Connection) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT (SQLite and PostgreSQL alike)."""
    dialect = db.dialect if isinstance(db, Connection) else db.get_bind().dialect
    return pg_insert if dialect.name == "postgresql" else sqlite_insert


_INSERTS_ONCE: dict[tuple[str, str, str, str | None], Prebuilt] = {}


def insert_once(conn: Connection, table: Any, key: str, returning: str | None = None) -> Prebuilt:
    """``INSERT … ON CONFLICT (key) DO NOTHING``, built once per dialect (it is spelt per
    dialect): building a statement costs more than running it, and a statement built per
    call made SQLAlchemy compute its cache key each time (0.7 ms for an attachment's blob).
    """
    cache_key = (conn.dialect.name, table.name, key, returning)
    stmt = _INSERTS_ONCE.get(cache_key)
    if stmt is None:
        built = insert_for(conn)(table).on_conflict_do_nothing(index_elements=[key])
        if returning is not None:
            built = built.returning(table.c[returning])
        returns = f", returning {returning}" if returning is not None else ""
        name = f"insert_once({table.name}, {key}{returns}) [{conn.dialect.name}]"
        stmt = _INSERTS_ONCE[cache_key] = Prebuilt(built, name)
    return stmt
