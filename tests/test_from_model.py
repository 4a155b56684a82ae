"""``PostgresSink.from_model`` and ``SQLiteSink.from_model`` (issue 15, beyond the anchors):
table, key and version derived from a SQLAlchemy ``Table`` or declarative model, and ORM
instances written as records (attribute names mapped to column names, the ORM's state never
written), through both batchers, against the real PostgreSQL and a real SQLite file."""

from __future__ import annotations

import sqlite3
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    MappedAsDataclass,
    mapped_column,
    relationship,
)

import writebehind as wb
from writebehind.dlq import SQLiteDeadLetter, replay
from writebehind.dlq._codec import decode, encode
from writebehind.sinks._records import field_names, group_rows

from .conftest import assert_conserved
from .pg import DSN

pytestmark = pytest.mark.server  # PostgreSQL (the SQLite tests are here too: one file)
SA_PG = DSN.replace("postgresql://", "postgresql+psycopg://", 1)


def models(suffix: str, schema: str | None = None) -> dict[str, Any]:
    """Fresh declarative models (their own registry), tables named with ``suffix``."""

    class Base(DeclarativeBase):
        pass

    class Membership(Base):  # a composite primary key, a plain version column
        __tablename__ = f"membership_{suffix}"
        __table_args__ = {"schema": schema} if schema else {}
        org: Mapped[str] = mapped_column(sa.String, primary_key=True)
        member: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
        role: Mapped[str | None] = mapped_column(sa.String)
        updated_at: Mapped[int] = mapped_column(sa.Integer)

    class User(Base):  # attribute names that differ from the column names; version_id_col
        __tablename__ = f"users_{suffix}"
        __table_args__ = {"schema": schema} if schema else {}
        uid: Mapped[int] = mapped_column("user_id", sa.Integer, primary_key=True)
        name: Mapped[str | None] = mapped_column("full_name", sa.String)
        email: Mapped[str | None] = mapped_column(sa.String, unique=True)
        rev: Mapped[int] = mapped_column("revision", sa.Integer)
        posts: Mapped[list[Post]] = relationship(back_populates="author")
        __mapper_args__ = {"version_id_col": rev, "version_id_generator": False}  # noqa: RUF012

    class Post(Base):
        __tablename__ = f"posts_{suffix}"
        __table_args__ = {"schema": schema} if schema else {}
        id: Mapped[int] = mapped_column(primary_key=True)
        author_id: Mapped[int] = mapped_column(sa.ForeignKey(User.__table__.c.user_id))
        author: Mapped[User] = relationship(back_populates="posts")

    return {"Base": Base, "Membership": Membership, "User": User, "Post": Post}


@pytest.fixture
def m() -> dict[str, Any]:
    return models(uuid.uuid4().hex[:8])


@pytest.fixture
def db(tmp_path: Path, m: dict[str, Any]) -> str:
    """A real SQLite file with the models' tables, made by SQLAlchemy itself."""
    path = str(tmp_path / "app.db")
    engine = sa.create_engine(f"sqlite:///{path}")
    m["Base"].metadata.create_all(engine)
    engine.dispose()
    return path


@pytest.fixture
def pg_models() -> Iterator[dict[str, Any]]:
    """The models' tables in PostgreSQL, in a schema of their own (dropped afterwards)."""
    schema = f"wb_fm_{uuid.uuid4().hex[:8]}"
    found = models(uuid.uuid4().hex[:8], schema=schema)
    engine = sa.create_engine(SA_PG)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    found["Base"].metadata.create_all(engine)
    found["schema"] = schema
    try:
        yield found
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


def rows(path: str, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


async def pg_rows(sql: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(DSN)
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


# -- what is derived ----------------------------------------------------------------------


def test_derived_from_a_composite_key_model(m: dict[str, Any], db: str) -> None:
    sink = wb.SQLiteSink.from_model(m["Membership"], db)
    assert sink.table == m["Membership"].__tablename__
    assert sink.key == ("org", "member")
    assert sink.version is None  # no version_id_col, none named: no version
    assert sink.record_key == ("org", "member")
    assert sink.record_version is None
    named = wb.SQLiteSink.from_model(m["Membership"], db, version="updated_at")
    assert named.version == "updated_at"
    assert named.record_version == "updated_at"


def test_derived_from_attributes_named_apart_and_version_id_col(m: dict[str, Any], db: str) -> None:
    sink = wb.SQLiteSink.from_model(m["User"], db, report_stale=True)
    assert (sink.key, sink.version) == (("user_id",), "revision")  # columns
    assert (sink.record_key, sink.record_version) == ("uid", "rev")
    assert sink.reports_stale  # other options pass through
    # options override; a key that is not the primary key is allowed (UNIQUE at start)
    other = wb.SQLiteSink.from_model(m["User"], db, key="email", version=None)
    assert (other.key, other.version) == (("email",), None)
    # a mapped attribute's name is taken for its column
    by_attr = wb.SQLiteSink.from_model(m["User"], db, key="uid", version="rev")
    assert (by_attr.key, by_attr.version) == (("user_id",), "revision")


def test_core_table_with_a_schema_for_postgres() -> None:
    meta = sa.MetaData()
    table = sa.Table(
        "events", meta,
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("seen_at", sa.DateTime(timezone=True)),
        schema="telemetry",
    )  # fmt: skip
    sink = wb.PostgresSink.from_model(table, DSN)
    assert (sink.schema, sink.table, sink.key, sink.version) == (
        "telemetry", "events", ("id",), None,
    )  # fmt: skip
    assert sink.record_key == "id"
    assert wb.PostgresSink.from_model(table, DSN, schema="public").schema == "public"
    assert wb.PostgresSink.from_model(table, DSN, version="seen_at").version == "seen_at"
    # SQLite has no schemas: refused unless the table is named
    with pytest.raises(wb.ConfigError, match=r"schema 'telemetry'.*table="):
        wb.SQLiteSink.from_model(table, ":memory:")
    assert wb.SQLiteSink.from_model(table, ":memory:", table="events").table == "events"


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"key": "nope"}, "key: 'nope'"),
        ({"key": ("uid", "missing")}, "key: 'missing'"),
        ({"version": "updated"}, "version: 'updated'"),
        ({"increment": ("views",)}, "increment: 'views'"),
        ({"key": "posts"}, "key: 'posts'"),  # a relationship is not a column
    ],
)
def test_a_name_that_is_no_column_is_a_config_error(
    m: dict[str, Any], options: dict[str, Any], named: str
) -> None:
    with pytest.raises(wb.ConfigError, match=named) as caught:
        wb.SQLiteSink.from_model(m["User"], ":memory:", **options)
    assert "user_id, full_name, email, revision" in str(caught.value)  # the columns listed
    with pytest.raises(wb.ConfigError, match=named):
        wb.PostgresSink.from_model(m["User"], DSN, **options)


def test_not_a_model_and_joined_inheritance_are_refused() -> None:
    with pytest.raises(wb.ConfigError, match="expected a SQLAlchemy Table or a mapped"):
        wb.SQLiteSink.from_model({"id": 1}, ":memory:")

    class Base(DeclarativeBase):
        pass

    class Animal(Base):
        __tablename__ = f"animal_{uuid.uuid4().hex[:6]}"
        id: Mapped[int] = mapped_column(primary_key=True)
        kind: Mapped[str]
        __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "animal"}  # noqa: RUF012

    class Dog(Animal):
        __tablename__ = f"dog_{uuid.uuid4().hex[:6]}"
        id: Mapped[int] = mapped_column(sa.ForeignKey(Animal.id), primary_key=True)
        bark: Mapped[str]
        __mapper_args__ = {"polymorphic_identity": "dog"}  # noqa: RUF012

    with pytest.raises(wb.ConfigError, match="joined-table inheritance"):
        wb.SQLiteSink.from_model(Dog, ":memory:")
    assert wb.SQLiteSink.from_model(Animal, ":memory:").key == ("id",)


def test_missing_sqlalchemy_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)  # `import sqlalchemy` fails
    monkeypatch.setitem(sys.modules, "sqlalchemy.orm", None)
    for make in (wb.SQLiteSink.from_model, wb.PostgresSink.from_model):
        with pytest.raises(wb.ConfigError, match=r"needs SQLAlchemy.*pip install sqlalchemy"):
            make(object(), ":memory:")


# -- ORM instances as records -------------------------------------------------------------


def test_an_orm_instance_is_read_by_attribute_into_its_columns(m: dict[str, Any]) -> None:
    user, post = m["User"](uid=1, name="Ada", rev=1), m["Post"](id=9)
    user.posts.append(post)  # a loaded relationship: never a field
    assert "_sa_instance_state" in vars(user)
    assert field_names(user) == ("user_id", "full_name", "revision")  # email never set
    groups = group_rows([user, m["User"](uid=2, name="Bo", rev=3), {"user_id": 3}])
    assert groups == {
        ("user_id", "full_name", "revision"): [(1, "Ada", 1), (2, "Bo", 3)],
        ("user_id",): [(3,)],
    }
    # a dead letter stores the row as the sink writes it, replayable: no ORM state
    text, _, _ = encode(user)
    assert "_sa_instance_state" not in text
    assert decode(text) == {"user_id": 1, "full_name": "Ada", "revision": 1}


def test_a_dataclass_mapped_model_is_read_as_an_orm_instance(tmp_path: Path) -> None:
    """``MappedAsDataclass`` models are dataclasses too: read by their columns all the same
    (not by their dataclass fields, which name attributes and relationships)."""

    class Base(MappedAsDataclass, DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = "items"
        sku: Mapped[str] = mapped_column("item_sku", primary_key=True)
        qty: Mapped[int] = mapped_column("quantity", default=0)

    path = str(tmp_path / "items.db")
    engine = sa.create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    engine.dispose()
    sink = wb.SQLiteSink.from_model(Item, path)
    assert (sink.record_key, sink.record_version) == ("sku", None)
    with wb.Batcher(sink, key=sink.record_key, linger=0.05) as batcher:
        batcher.add(Item(sku="a", qty=1))
        batcher.add(Item(sku="a", qty=2))
        batcher.add(Item(sku="b", qty=5))
    assert rows(path, "SELECT item_sku, quantity FROM items ORDER BY 1") == [("a", 2), ("b", 5)]


def test_merges_copy_orm_instances_and_leave_them_and_their_session_alone(
    m: dict[str, Any],
) -> None:
    """``writebehind.merge`` makes a changed copy of an ORM instance: a new transient
    instance of its class with the column attributes set on the new record (attributes named
    apart from their columns included), the merged values, no relationship; both inputs and
    the session one of them is in are left as they were. MappedAsDataclass too."""
    User, Post = m["User"], m["Post"]
    old = User(uid=1, name="Ada", rev=3)
    new = User(uid=1, name="Ada L.", rev=4)
    new.posts.append(Post(id=9))
    session = sa.orm.Session()
    session.add(old)
    merged = wb.merge.keep_first("rev")(old, new)
    assert type(merged) is User
    assert merged is not new
    assert (merged.uid, merged.name, merged.rev) == (1, "Ada L.", 3)
    assert field_names(merged) == ("user_id", "full_name", "revision")
    assert sa.inspect(merged).transient
    assert merged not in session
    assert merged.posts == []  # the relationship not copied
    assert new.posts[0].author is new
    assert (old.rev, new.rev, sa.inspect(old).pending, list(session.new)) == (3, 4, True, [old])

    class Base(MappedAsDataclass, DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = "items"
        sku: Mapped[str] = mapped_column("item_sku", primary_key=True)
        qty: Mapped[int | None] = mapped_column("quantity", default=None)

    summed = wb.merge.sum_fields("qty")(Item(sku="a", qty=2), Item(sku="a", qty=5))
    assert (type(summed), summed.sku, summed.qty) == (Item, "a", 7)


def test_the_batcher_check_maps_attributes_to_columns(m: dict[str, Any], db: str) -> None:
    sink = wb.SQLiteSink.from_model(m["User"], db)
    with wb.Batcher(sink, key="uid", version="rev"):  # attribute names: accepted
        pass
    with wb.Batcher(sink, key="user_id", version="revision"):  # column names (dicts): too
        pass
    with pytest.raises(wb.ConfigError, match="key"), wb.Batcher(sink, key="name", version="rev"):
        pass


async def test_sqlite_async_batcher_composite_key_newest_wins(m: dict[str, Any], db: str) -> None:
    Membership = m["Membership"]
    sink = wb.SQLiteSink.from_model(Membership, db, version="updated_at")
    async with wb.AsyncBatcher(
        sink, key=sink.record_key, version=sink.record_version, linger=0.05
    ) as batcher:
        for t in (3, 1, 2):  # one key, out of order: the newest wins in the buffer
            await batcher.add(Membership(org="acme", member=1, role=f"r{t}", updated_at=t))
        await batcher.add(Membership(org="acme", member=2, role="admin", updated_at=1))
        await batcher.flush()
        late = await batcher.add(Membership(org="acme", member=1, role="old", updated_at=0))
        await batcher.flush()
        assert await late is wb.Outcome.COMMITTED  # written, but the table kept the newer
        stats = batcher.stats()
    assert_conserved(stats)
    assert (stats.accepted, stats.committed, stats.coalesced, stats.lost) == (5, 3, 2, 0)
    table = Membership.__tablename__
    assert rows(db, f"SELECT org, member, role, updated_at FROM {table} ORDER BY member") == [
        ("acme", 1, "r3", 3),
        ("acme", 2, "admin", 1),
    ]


def test_sqlite_sync_batcher_attributes_named_apart(m: dict[str, Any], db: str) -> None:
    User = m["User"]
    sink = wb.SQLiteSink.from_model(User, db, report_stale=True)
    with wb.Batcher(sink, key=sink.record_key, version=sink.record_version, linger=0.05) as b:
        b.add(User(uid=1, name="Ada", email="ada@x", rev=2))
        b.add(User(uid=2, name="Bo", rev=1))
        b.flush()
        stale = b.add(User(uid=1, name="Ada (old)", rev=1))
        partial = b.add(User(uid=2, rev=2))  # name never set: the column keeps its value
        b.flush()
        assert stale.result(timeout=10) is wb.Outcome.STALE
        assert partial.result(timeout=10) is wb.Outcome.COMMITTED
    table = User.__tablename__
    assert rows(db, f"SELECT user_id, full_name, email, revision FROM {table} ORDER BY 1") == [
        (1, "Ada", "ada@x", 2),
        (2, "Bo", None, 2),
    ]


async def test_postgres_async_batcher_composite_key(pg_models: dict[str, Any]) -> None:
    Membership, schema = pg_models["Membership"], pg_models["schema"]
    sink = wb.PostgresSink.from_model(Membership, DSN, version="updated_at")
    assert sink.schema == schema
    async with wb.AsyncBatcher(
        sink, key=sink.record_key, version=sink.record_version, linger=0.05
    ) as batcher:
        for i in range(300):
            batcher.add_nowait(Membership(org=f"o{i % 3}", member=i % 5, role=str(i), updated_at=i))
        await batcher.flush()
        await batcher.add(Membership(org="o0", member=0, role="older", updated_at=-1))
        await batcher.flush()
        stats = batcher.stats()
    assert_conserved(stats)
    assert (stats.lost, stats.dead_lettered) == (0, 0)
    got = await pg_rows(
        f'SELECT org, member, role, updated_at FROM "{schema}".{Membership.__tablename__} '
        "ORDER BY org, member"
    )
    newest = {(f"o{i % 3}", i % 5): i for i in range(300)}  # the last i per key is the newest
    assert got == [(o, mem, str(i), i) for (o, mem), i in sorted(newest.items())]


async def test_postgres_sync_batcher_attributes_and_version_id_col(
    pg_models: dict[str, Any],
) -> None:
    User, schema = pg_models["User"], pg_models["schema"]
    sink = wb.PostgresSink.from_model(User, DSN, report_stale=True)
    assert (sink.key, sink.version) == (("user_id",), "revision")
    with wb.Batcher(sink, key=sink.record_key, version=sink.record_version, linger=0.05) as b:
        for rev in (1, 3, 2):
            b.add(User(uid=7, name=f"Ada {rev}", email="ada@x", rev=rev))
        b.flush()
        late = b.add(User(uid=7, name="Ada 0", rev=0))
        b.flush()
        assert late.result(timeout=10) is wb.Outcome.STALE
        assert (b.stats().committed, b.stats().coalesced) == (2, 2)
    got = await pg_rows(f'SELECT * FROM "{schema}".{User.__tablename__}')
    assert got == [(7, "Ada 3", "ada@x", 3)]


async def test_postgres_core_table_with_schema(pg_models: dict[str, Any]) -> None:
    """A Core ``Table`` (here a model's, with its schema); records are dicts by column."""
    table, schema = pg_models["User"].__table__, pg_models["schema"]
    sink = wb.PostgresSink.from_model(table, DSN, version="revision")
    assert (sink.schema, sink.key, sink.version) == (schema, ("user_id",), "revision")
    async with wb.AsyncBatcher(sink, key="user_id", version="revision", linger=0.05) as b:
        for rev in (2, 1):
            await b.add({"user_id": 1, "full_name": f"v{rev}", "revision": rev})
        await b.flush()
    assert await pg_rows(f'SELECT user_id, full_name, revision FROM "{schema}".{table.name}') == [
        (1, "v2", 2)
    ]


async def test_a_bad_orm_record_is_dead_lettered_by_column(
    m: dict[str, Any], db: str, tmp_path: Path
) -> None:
    """A record the table refuses is dead-lettered as its row (columns, no ORM state), and
    replays into the same sink once the conflict is gone."""
    User = m["User"]
    table = User.__tablename__
    sink = wb.SQLiteSink.from_model(User, db)
    with sqlite3.connect(db) as conn:
        conn.execute(f"INSERT INTO {table} VALUES (1, 'Ada', 'ada@x', 1)")
    store = SQLiteDeadLetter(tmp_path / "dlq.db")
    async with wb.AsyncBatcher(sink, key="uid", version="rev", dead_letter=store) as b:
        dup = await b.add(User(uid=2, name="Eve", email="ada@x", rev=1))  # UNIQUE(email)
        await b.flush()
        assert await dup is wb.Outcome.DEAD_LETTERED
    (entry,) = await store.list()
    assert "_sa_instance_state" not in entry.record_json
    assert entry.record() == {"user_id": 2, "full_name": "Eve", "email": "ada@x", "revision": 1}
    with sqlite3.connect(db) as conn:
        conn.execute(f"UPDATE {table} SET email = 'ada@y'")
    async with wb.AsyncBatcher(sink, key="user_id", version="revision") as b:  # dicts: columns
        report = await replay(store, b)
    assert report.committed == 1
    assert rows(db, f"SELECT user_id, email FROM {table} ORDER BY 1") == [
        (1, "ada@y"),
        (2, "ada@x"),
    ]
    await store.close()
