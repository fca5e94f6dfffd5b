"""Table schemas as the binlog's DDL statements change them (pure logic, no I/O).

A server with ``binlog_row_metadata=MINIMAL`` (MariaDB before 10.5, MySQL before 8.0.1 by
default) writes table maps without column names, ENUM/SET labels or primary key. The
capture then names an event's columns from the schema of its time, which it follows here:
from the columns read at the start (:meth:`TableSchema.from_information_schema`), through
every ``ALTER TABLE``/``CREATE TABLE``/``RENAME TABLE``/``DROP TABLE``/``DROP DATABASE``
the binlog carries for a tracked table (:func:`apply_ddl`), as Debezium's MySQL connector
keeps its schema history.

Statements are parsed with sqlglot (MySQL dialect). A statement touching a tracked table
that it cannot parse, or whose effect is not known here (``CREATE TABLE ... SELECT``, a
rename from an untracked table), raises :class:`UnreadableDdl`: the caller stops, or marks
the table's schema unknown; it never guesses columns.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.tokens import TokenType

#: sqlglot warns for each statement it keeps as an unparsed command; those are reported
#: (or ignored, for untracked tables) here.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

_LEADING_COMMENTS = re.compile(r"^(?:\s+|/\*.*?\*/|#[^\n]*\n|--\s[^\n]*\n)*", re.DOTALL)
#: ``ALTER ONLINE|IGNORE TABLE`` change nothing about columns; sqlglot reads neither.
_ALTER_MODIFIERS = re.compile(r"^ALTER\s+(?:(?:ONLINE|IGNORE)\s+)+TABLE\b", re.IGNORECASE)
_DDL_VERBS = frozenset({"ALTER", "CREATE", "DROP", "RENAME"})


class UnreadableDdl(ValueError):
    """A DDL statement touching a tracked table whose effect on its columns is not known."""


@dataclass(frozen=True, slots=True)
class ColumnSchema:
    name: str
    #: The column's SQL type in lower case (``int(10) unsigned``, ``enum('a','b')``).
    type: str
    #: ENUM/SET labels in definition order (the table map has only their count).
    labels: tuple[str, ...] = ()

    @classmethod
    def of_type(cls, name: str, data_type: exp.DataType) -> ColumnSchema:
        labels: tuple[str, ...] = ()
        if data_type.this in (exp.DataType.Type.ENUM, exp.DataType.Type.SET):
            labels = tuple(e.name for e in data_type.expressions)
        return cls(name, data_type.sql(dialect="mysql").lower(), labels)


@dataclass(frozen=True, slots=True)
class TableSchema:
    """One table's columns (in order) and primary key; or, with ``unknown`` set, a table
    whose schema capture does not know (the statement that made it so)."""

    columns: tuple[ColumnSchema, ...]
    key: tuple[str, ...]
    unknown: str | None = None

    @classmethod
    def unknown_after(cls, why: str) -> TableSchema:
        return cls((), (), why)

    @classmethod
    def from_information_schema(cls, columns: list[tuple[str, str]], key: list[str]
                                ) -> TableSchema:
        """From ``(COLUMN_NAME, COLUMN_TYPE)`` rows in ordinal order and the PRIMARY
        constraint's columns in key order."""
        return cls(tuple(ColumnSchema.of_type(name, exp.DataType.build(kind, dialect="mysql"))
                         for name, kind in columns), tuple(key))

    def index(self, name: str) -> int | None:
        """Where column ``name`` is (column names are case-insensitive), or None."""
        folded = name.lower()
        for i, column in enumerate(self.columns):
            if column.name.lower() == folded:
                return i
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"columns": [{"name": c.name, "type": c.type, "labels": list(c.labels)}
                            for c in self.columns],
                "key": list(self.key), "unknown": self.unknown}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TableSchema:
        return cls(tuple(ColumnSchema(str(c["name"]), str(c["type"]),
                                      tuple(str(x) for x in c.get("labels") or ()))
                         for c in data.get("columns") or ()),
                   tuple(str(k) for k in data.get("key") or ()), data.get("unknown"))


Schemas = dict[str, TableSchema]  # "db.table" -> schema


def is_ddl(query: str) -> bool:
    """Cheap first look: could ``query`` change a table's columns?"""
    body = _LEADING_COMMENTS.sub("", query, count=1)
    return body[:7].split(None, 1)[0].upper() in _DDL_VERBS if body else False


def apply_ddl(schemas: Schemas, query: str, default_db: str, tracked: frozenset[str]
              ) -> Schemas:
    """The new schemas of the ``tracked`` tables ``query`` changes (``default_db``: the
    database the statement ran in). ``schemas`` is not modified. Raises
    :class:`UnreadableDdl` when the statement touches a tracked table in a way not
    understood here."""
    body = _ALTER_MODIFIERS.sub("ALTER TABLE", _LEADING_COMMENTS.sub("", query, count=1))
    if not is_ddl(body):
        return {}
    if body.split(None, 1)[0].upper() == "RENAME":
        return _rename_tables(schemas, body, default_db, tracked)
    try:
        statement = sqlglot.parse_one(body, read="mysql")
    except SqlglotError as exc:
        _refuse_if_mentioned(body, tracked, f"it does not parse ({exc})")
        return {}
    if isinstance(statement, exp.Alter) and statement.args.get("kind") == "TABLE":
        return _alter(schemas, statement, default_db, tracked)
    if isinstance(statement, exp.Create) and statement.args.get("kind") == "TABLE":
        return _create(schemas, statement, default_db, tracked)
    if isinstance(statement, exp.Drop):
        return _drop(statement, body, default_db, tracked)
    if isinstance(statement, exp.Command):
        _refuse_if_mentioned(body, tracked, "the parser does not understand it")
    return {}  # CREATE INDEX, CREATE VIEW, ALTER USER ...: no table's columns change


def _table_id(table: exp.Table, default_db: str) -> str:
    return f"{table.db or default_db}.{table.name}"


def _refuse_if_mentioned(query: str, tracked: frozenset[str], why: str) -> None:
    names = {t.split(".", 1)[1] for t in tracked}
    try:
        words = {t.text for t in sqlglot.tokenize(query.split(None, 1)[-1], read="mysql")}
    except SqlglotError:
        words = set(re.findall(r"\w+", query))
    touched = sorted(names & words)
    if touched:
        raise UnreadableDdl(f"{why}; it names tracked table(s) {', '.join(touched)}")


def _rename_tables(schemas: Schemas, query: str, default_db: str, tracked: frozenset[str]
                   ) -> Schemas:
    """``RENAME TABLE a TO b[, c TO d ...]`` (sqlglot keeps it as a command)."""
    try:
        tokens = sqlglot.tokenize(query.split(None, 1)[1], read="mysql")
    except (SqlglotError, IndexError) as exc:
        _refuse_if_mentioned(query, tracked, f"it does not parse ({exc})")
        return {}
    kinds = [t.token_type for t in tokens]
    if not tokens or tokens[0].text.upper() != "TABLE":
        _refuse_if_mentioned(query, tracked, "the parser does not understand it")
        return {}
    names: list[str] = []
    i = 1
    while i < len(tokens):  # [db .] name TO [db .] name (, ...)
        name = tokens[i].text
        if i + 2 < len(tokens) and kinds[i + 1] == TokenType.DOT:
            names.append(f"{name}.{tokens[i + 2].text}")
            i += 3
        else:
            names.append(f"{default_db}.{name}")
            i += 1
        if i < len(tokens) and tokens[i].text.upper() in ("TO", ","):
            i += 1
    if len(names) % 2:
        _refuse_if_mentioned(query, tracked, "the parser does not understand it")
        return {}
    current = dict(schemas)
    changed: Schemas = {}
    for old, new in zip(names[::2], names[1::2], strict=True):  # in order, as the server
        moved = current.pop(old, None)                          # does (a TO b, b TO c)
        if old in tracked:
            changed[old] = TableSchema.unknown_after(f"renamed to {new} by `{query}`")
        if new in tracked:
            if moved is None or moved.unknown is not None:
                raise UnreadableDdl(f"{new} is renamed from {old}, whose columns capture "
                                    "does not follow (it is not in mysql.tables)")
            changed[new] = moved
        if moved is not None:
            current[new] = moved
    return changed


def _drop(statement: exp.Drop, query: str, default_db: str, tracked: frozenset[str]
          ) -> Schemas:
    kind = str(statement.args.get("kind") or "").upper()
    if kind == "TABLE":
        gone = {_table_id(t, default_db) for t in statement.args.get("tables") or ()
                if isinstance(t, exp.Table)}
    elif kind in ("DATABASE", "SCHEMA"):
        dbs = {t.name or t.db for t in statement.args.get("tables") or ()
               if isinstance(t, exp.Table)}
        gone = {t for t in tracked if t.split(".", 1)[0] in dbs}
    else:
        return {}
    return {t: TableSchema.unknown_after(f"dropped by `{query}`") for t in gone & tracked}


def _create(schemas: Schemas, statement: exp.Create, default_db: str,
            tracked: frozenset[str]) -> Schemas:
    target = statement.this
    table = target.this if isinstance(target, exp.Schema) else target
    if not isinstance(table, exp.Table):
        return {}
    table_id = _table_id(table, default_db)
    if table_id not in tracked:
        return {}
    known = schemas.get(table_id)
    if statement.args.get("exists") and known is not None and known.unknown is None:
        return {}  # CREATE TABLE IF NOT EXISTS of a table that exists: nothing happens
    properties = statement.args.get("properties")
    like = properties.find(exp.LikeProperty) if properties is not None else None
    if like is not None:
        source = schemas.get(_table_id(like.this, default_db))
        if source is None or source.unknown is not None:
            raise UnreadableDdl(f"{table_id} is created LIKE a table whose columns capture "
                                "does not follow")
        return {table_id: source}
    if statement.expression is not None or not isinstance(target, exp.Schema):
        raise UnreadableDdl(f"{table_id} is created from a query; its columns are not in "
                            "the statement")
    columns: list[ColumnSchema] = []
    key: tuple[str, ...] = ()
    for part in target.expressions:
        if isinstance(part, exp.ColumnDef):
            columns.append(_column(part))
            if _inline_primary_key(part):
                key = (part.name,)
        elif (found := _primary_key(part)) is not None:
            key = found
    return {table_id: TableSchema(tuple(columns), key)}


def _column(definition: exp.ColumnDef) -> ColumnSchema:
    kind = definition.args.get("kind")
    if not isinstance(kind, exp.DataType):
        raise UnreadableDdl(f"column {definition.name} has no type")
    return ColumnSchema.of_type(definition.name, kind)


def _inline_primary_key(definition: exp.ColumnDef) -> bool:
    return any(isinstance(c.args.get("kind"), exp.PrimaryKeyColumnConstraint)
               for c in definition.args.get("constraints") or ())


def _primary_key(node: exp.Expression) -> tuple[str, ...] | None:
    """The columns of a ``PRIMARY KEY (...)`` (possibly inside ``CONSTRAINT name``)."""
    found = node if isinstance(node, exp.PrimaryKey) else node.find(exp.PrimaryKey)
    if found is None:
        return None
    return tuple(e.name for e in found.expressions)


def _alter(schemas: Schemas, statement: exp.Alter, default_db: str, tracked: frozenset[str]
           ) -> Schemas:
    table_id = _table_id(statement.this, default_db)
    if table_id not in tracked:
        return {}
    schema = schemas.get(table_id)
    if schema is None or schema.unknown is not None:
        why = schema.unknown if schema is not None else "never recorded"
        raise UnreadableDdl(f"{table_id} is altered, but its columns are not known ({why})")
    renamed_to: str | None = None
    for action in statement.args.get("actions") or ():
        if isinstance(action, exp.AlterRename):
            renamed_to = _table_id(action.this, default_db)
        else:
            schema = _alter_action(schema, action, table_id)
    if renamed_to is not None and renamed_to != table_id:
        changed: Schemas = {table_id: TableSchema.unknown_after(
            f"renamed to {renamed_to} by ALTER TABLE")}
        if renamed_to in tracked:
            changed[renamed_to] = schema
        return changed
    return {table_id: schema}


def _alter_action(schema: TableSchema, action: exp.Expression, table_id: str) -> TableSchema:
    columns = list(schema.columns)
    if isinstance(action, exp.ColumnDef):  # ADD [COLUMN] [IF NOT EXISTS]
        if schema.index(action.name) is not None:
            if action.args.get("exists"):
                return schema
            raise UnreadableDdl(f"{table_id} already has a column {action.name}")
        columns.insert(_place(schema, action.args.get("position"), len(columns)),
                       _column(action))
        key = (action.name,) if _inline_primary_key(action) else schema.key
        return replace(schema, columns=tuple(columns), key=key)
    if isinstance(action, exp.Drop):
        kind = str(action.args.get("kind") or "").upper()
        if kind != "COLUMN":
            return schema  # DROP INDEX / FOREIGN KEY / CONSTRAINT: the columns stay
        for column in action.args.get("tables") or ():
            at = schema.index(column.name)
            if at is None:
                if action.args.get("exists"):
                    continue
                raise UnreadableDdl(f"{table_id} has no column {column.name} to drop")
            gone = schema.columns[at].name
            schema = replace(schema, columns=schema.columns[:at] + schema.columns[at + 1:],
                             key=tuple(k for k in schema.key if k.lower() != gone.lower()))
        return schema
    if isinstance(action, exp.ModifyColumn):  # MODIFY name ... | CHANGE old new ...
        definition = action.this
        old = action.args.get("rename_from")
        old_name = old.name if old is not None else definition.name
        return _replace_column(schema, old_name, _column(definition),
                               definition.args.get("position"), table_id)
    if isinstance(action, exp.RenameColumn):
        at = schema.index(action.this.name)
        if at is None:
            raise UnreadableDdl(f"{table_id} has no column {action.this.name} to rename")
        column = replace(schema.columns[at], name=action.args["to"].name)
        return _replace_column(schema, schema.columns[at].name, column, None, table_id)
    if isinstance(action, exp.AddConstraint):
        for part in action.expressions:
            primary = _primary_key(part)
            if primary is not None:
                schema = replace(schema, key=primary)
        return schema
    if isinstance(action, exp.DropPrimaryKey):
        return replace(schema, key=())
    if isinstance(action, exp.AlterColumn):  # SET/DROP DEFAULT: the columns stay
        return schema
    raise UnreadableDdl(f"{table_id}: the ALTER action `{action.sql(dialect='mysql')}` is "
                        "not understood")


def _replace_column(schema: TableSchema, old_name: str, column: ColumnSchema,
                    position: Any, table_id: str) -> TableSchema:
    at = schema.index(old_name)
    if at is None:
        raise UnreadableDdl(f"{table_id} has no column {old_name}")
    old = schema.columns[at].name
    rest = schema.columns[:at] + schema.columns[at + 1:]
    without = replace(schema, columns=rest)
    where = _place(without, position, at) if position is not None else at
    columns = list(rest)
    columns.insert(where, column)
    key = tuple(column.name if k.lower() == old.lower() else k for k in schema.key)
    return replace(schema, columns=tuple(columns), key=key)


def _place(schema: TableSchema, position: Any, default: int) -> int:
    """Where ``FIRST`` / ``AFTER col`` puts a column (``default``: none given)."""
    if position is None:
        return default
    if str(position.args.get("position") or "").upper() == "FIRST":
        return 0
    after = position.this
    at = schema.index(after.name) if after is not None else None
    if at is None:
        raise UnreadableDdl(f"no column {after.name if after is not None else '?'} to "
                            "place a column after")
    return at + 1
