"""``PostgresSink.from_model`` and ``SQLiteSink.from_model``: a SQL sink set up from a
SQLAlchemy ``Table`` or mapped (declarative ORM) class, and ORM instances read as records.

What is derived (:func:`sink_from_model`): the table's name (and, for PostgreSQL, its schema);
``key``, the primary key's columns (a tuple for a composite key); ``version``, the mapper's
``version_id_col`` when it has one, else none unless you name a column (a Core ``Table``
never has one of its own). Options you pass override what was derived and go to the sink's
constructor as they are; ``key``, ``version`` and ``increment`` may name a column or a
mapped attribute, and a name that is neither is a ``ConfigError`` naming it. A key that is
not the primary key is allowed (the sink still checks for a PRIMARY KEY or UNIQUE index at
start).

ORM instances as records (:func:`orm_shape`, called by ``_records``): the column attributes
*loaded or set* on the instance (its ``__dict__``), read by attribute name and written to
their column (``uid = mapped_column("user_id", ...)`` lands in ``user_id``); SQLAlchemy's
``_sa_instance_state``, relationships and attributes that are not loaded (expired after a
commit, deferred, never set) are left out, so reading a record never runs a query. A column
left out is not written: an inserted row gets the column's server default or NULL
(SQLAlchemy's Python-side ``default=`` is not applied), an updated row keeps its value.

The batcher reads records by field name too, so for ORM instances it needs the attribute
names: both SQL sinks have ``record_key`` and ``record_version`` (:class:`RecordNames`: the
attribute names for a sink made here, the column names otherwise), for
``AsyncBatcher(sink, key=sink.record_key, version=sink.record_version)``, and
``record_fields`` (attribute to column), through which the batcher's start check
(``_protocol.key_mismatch``) compares an attribute name with the sink's column.

SQLAlchemy is an optional dependency (``writebehind[sqlalchemy]``), imported here lazily:
by :func:`sink_from_model`, and by :func:`orm_shape` only for a record that is an ORM
instance (so SQLAlchemy is already loaded). Joined-table inheritance (one record, several
tables) is refused: a sink writes one table.
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from .._errors import ConfigError, PermanentSinkError

__all__ = ["RecordNames", "is_orm", "orm_copy", "orm_fields", "orm_shape", "sink_from_model"]

S = TypeVar("S", bound="RecordNames")
_STATE = "_sa_instance_state"

_FIELDS: weakref.WeakKeyDictionary[type, tuple[tuple[str, str], ...]] = weakref.WeakKeyDictionary()


def _sqlalchemy() -> Any:
    try:
        import sqlalchemy
        import sqlalchemy.orm
    except ImportError as exc:
        raise ConfigError(
            "from_model needs SQLAlchemy, which is not installed: pip install sqlalchemy "
            "(or pip install 'writebehind[sqlalchemy]')"
        ) from exc
    return sqlalchemy


def _column_attributes(mapper: Any, table: Any) -> dict[str, str]:
    """Attribute name to column name, for the mapper's column attributes on ``table``."""
    found: dict[str, str] = {}
    for prop in mapper.column_attrs:
        for col in prop.columns:
            if getattr(col, "table", None) is table:
                found[prop.key] = col.name
                break
    return found


def _resolve(model: Any, sa: Any) -> tuple[Any, Any]:
    """``(table, mapper or None)`` for a ``Table``, a mapped class or a ``Mapper``."""
    if isinstance(model, sa.Table):
        return model, None
    mapper = sa.inspect(model, raiseerr=False)
    if not isinstance(mapper, sa.orm.Mapper):
        raise ConfigError(
            f"from_model: expected a SQLAlchemy Table or a mapped (declarative ORM) class, "
            f"got {model!r}"
        )
    table = mapper.local_table
    if not isinstance(table, sa.Table):
        raise ConfigError(
            f"from_model: {mapper.class_.__name__} is mapped to {table!r}, not to a table; "
            f"a sink writes one table"
        )
    parent = mapper.inherits
    if parent is not None and parent.local_table is not table:
        raise ConfigError(
            f"from_model: {mapper.class_.__name__} uses joined-table inheritance (its "
            f"columns span {parent.local_table.name!r} and {table.name!r}); a sink writes "
            f"one table: make the sink from a Table"
        )
    return table, mapper


def sink_from_model(
    cls: type[S], model: Any, target: Any, options: dict[str, Any], *, schemas: bool
) -> S:
    """``cls(target, table=..., key=..., version=..., **options)`` from ``model``, with
    ``record_fields`` set on the sink (so ``record_key``/``record_version`` name attributes).

    ``schemas``: whether the sink takes ``schema=`` (PostgreSQL); if not, a table with a
    schema is refused unless ``table=`` is given (SQLite has no schemas, only attached
    databases).
    """
    sa = _sqlalchemy()
    table, mapper = _resolve(model, sa)
    columns = [c.name for c in table.columns]
    fields = _column_attributes(mapper, table) if mapper is not None else {c: c for c in columns}
    owner = "Table" if mapper is None else mapper.class_.__name__
    where = f"{owner} {table.fullname!r}"

    def column(name: Any, what: str) -> str:
        if isinstance(name, str):
            if name in columns:
                return name
            if name in fields:
                return fields[name]
        raise ConfigError(
            f"{what}: {name!r} is not a column of {where}, nor a mapped attribute (columns: "
            f"{', '.join(columns)})"
        )

    opts = dict(options)
    kwargs: dict[str, Any] = {"table": opts.pop("table", table.name)}
    if schemas:
        schema = opts.pop("schema", table.schema)
        if schema is not None:
            kwargs["schema"] = schema
    elif table.schema is not None and "table" not in options:
        raise ConfigError(
            f"from_model: {where} has schema {table.schema!r}; SQLiteSink writes a table of "
            f"the main database: pass table= to name it"
        )
    if "key" in opts:
        given = opts.pop("key")
        names = (given,) if isinstance(given, str) else tuple(given or ())
        key = tuple(column(k, "key") for k in names)
    else:
        key = tuple(c.name for c in table.primary_key.columns)
        if not key and mapper is not None:
            key = tuple(c.name for c in mapper.primary_key if c.table is table)
    if "version" in opts:
        given = opts.pop("version")
        version = None if given is None else column(given, "version")
    elif not key:  # no key (key=None given): nothing to order by
        version = None
    else:
        vcol = None if mapper is None else mapper.version_id_col
        version = vcol.name if vcol is not None and vcol.table is table else None
    adds = opts.get("increment")
    if adds and isinstance(adds, list | tuple):  # anything else: the constructor says what
        opts["increment"] = tuple(column(c, "increment") for c in adds)
    sink = cls(target, **kwargs, key=key or None, version=version, **opts)  # type: ignore[call-arg]
    sink.record_fields = MappingProxyType({a: c for a, c in fields.items() if a != c})
    sink.model_table = table
    return sink


class RecordNames:
    """What both SQL sinks get: the key and version as the batcher reads them from records.

    For a sink made by ``from_model``, the model's attribute names (``uid`` for the column
    ``user_id``); for any other, the column names themselves. So ``AsyncBatcher(sink,
    key=sink.record_key, version=sink.record_version)`` always agrees with the sink.
    """

    key: tuple[str, ...]
    version: str | None
    record_fields: Mapping[str, str] = MappingProxyType({})
    """Attribute name to column name, where they differ (set by ``from_model``)."""

    @property
    def record_key(self) -> str | tuple[str, ...] | None:
        """The key's field names as records carry them: one name, a tuple for a composite
        key, or None (no key)."""
        attrs = tuple(self._attribute(k) for k in self.key)
        return attrs[0] if len(attrs) == 1 else (attrs or None)

    @property
    def record_version(self) -> str | None:
        """The version's field name as records carry it, or None."""
        return None if self.version is None else self._attribute(self.version)

    model_table: Any = None
    """The SQLAlchemy table of the model the sink was made from (``from_model``), or None."""

    def check_models(self, batch: list[Any]) -> None:
        """A sink made by ``from_model``: refuse a batch holding an ORM instance of a class
        mapped to another table (``PermanentSinkError`` naming both; the batcher isolates
        the record), which would otherwise be written here by its column names."""
        table = self.model_table
        if table is None:
            return
        for record in batch:
            if is_orm(record) and _table_of(type(record)) is not table:
                raise PermanentSinkError(
                    f"a {type(record).__name__} is mapped to table "
                    f"{_table_of(type(record)).name!r}; this sink was made from a model of "
                    f"table {table.name!r} (from_model): give it instances of that model"
                )

    def _attribute(self, column: str) -> str:
        for attr, col in self.record_fields.items():
            if col == column:
                return attr
        return column


def _table_of(cls: type) -> Any:
    import sqlalchemy  # loaded already: an instance of a mapped class exists

    return sqlalchemy.inspect(cls).local_table


def is_orm(record: Any) -> bool:
    """Whether ``record`` is an instance of a SQLAlchemy mapped class."""
    d = getattr(record, "__dict__", None)
    return isinstance(d, dict) and _STATE in d


def orm_fields(cls: type) -> tuple[tuple[str, str], ...]:
    """``(attribute, column)`` for each column attribute of the mapped class ``cls`` on its
    own table, in the table's column order (cached per class)."""
    hit = _FIELDS.get(cls)
    if hit is None:
        import sqlalchemy  # loaded already: an instance of a mapped class exists

        mapper: Any = sqlalchemy.inspect(cls)
        fields = _column_attributes(mapper, mapper.local_table)
        order = {c.name: i for i, c in enumerate(mapper.local_table.columns)}
        hit = _FIELDS[cls] = tuple(sorted(fields.items(), key=lambda f: order.get(f[1], 0)))
    return hit


def orm_shape(record: Any) -> tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]:
    """An ORM instance's column names (those of its column attributes present in its
    ``__dict__``: loaded or set) and the function that reads their values from records with
    the same attributes present (from ``__dict__``, so no attribute access runs a query)."""
    d = record.__dict__
    present = [(a, c) for a, c in orm_fields(type(record)) if a in d]
    names = tuple(c for _, c in present)
    attrs = [a for a, _ in present]
    if not attrs:
        return names, _nothing
    get = operator.itemgetter(*attrs)
    if len(attrs) == 1:
        return names, lambda r: (get(r.__dict__),)
    return names, lambda r: get(r.__dict__)


def _nothing(record: Any) -> tuple[Any, ...]:
    return ()


def orm_copy(record: Any, values: Mapping[str, Any]) -> Any:
    """A changed copy of an ORM instance, for ``writebehind.merge``: a new *transient*
    instance of its class (made as SQLAlchemy makes loaded ones, without ``__init__``), given
    the column attributes loaded or set on ``record`` (read from its ``__dict__``: no query,
    and ``record`` and its session are left as they were), then ``values`` (``setattr``).
    Relationships are not copied (setting one would change the related objects); the sinks
    write column attributes only. ``TypeError`` if the class is no longer mapped."""
    import sqlalchemy  # loaded already: an instance of a mapped class exists

    cls = type(record)
    mapper: Any = sqlalchemy.inspect(cls, raiseerr=False)
    if mapper is None:
        raise TypeError(f"cannot make a changed copy of a {cls.__name__}: its class is not mapped")
    copy = mapper.class_manager.new_instance()
    loaded = record.__dict__
    for prop in mapper.column_attrs:
        if prop.key in loaded and prop.key not in values:
            setattr(copy, prop.key, loaded[prop.key])
    for name, value in values.items():
        setattr(copy, name, value)
    return copy
