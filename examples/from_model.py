"""A sink from a SQLAlchemy model: ``SQLiteSink.from_model(Model, path)``.

The model's table name, its primary key (the key) and its ``version_id_col`` (the version)
become the sink's ``table``, ``key`` and ``version``; ORM instances are the records. The
attribute ``uid`` is stored in the column ``user_id`` (SQLAlchemy lets the two names
differ): the sink reads the attribute and writes the column, and ``sink.record_key`` /
``sink.record_version`` are the attribute names the batcher reads. ``PostgresSink.from_model``
works the same way (with the table's schema). Needs ``pip install 'writebehind[sqlalchemy]'``.

Run: python examples/from_model.py
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import writebehind as wb


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    uid: Mapped[int] = mapped_column("user_id", primary_key=True)
    name: Mapped[str] = mapped_column("full_name")
    status: Mapped[str]
    rev: Mapped[int] = mapped_column("revision")
    __mapper_args__ = {"version_id_col": rev, "version_id_generator": False}  # noqa: RUF012


async def main(db: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{db}")
    Base.metadata.create_all(engine)  # the table, as SQLAlchemy makes it
    engine.dispose()

    sink = wb.SQLiteSink.from_model(User, db, report_stale=True)  # options pass through
    print(f"table={sink.table} key={sink.key} version={sink.version}")
    print(f"the batcher reads: key={sink.record_key!r} version={sink.record_version!r}")
    async with wb.AsyncBatcher(
        sink, key=sink.record_key, version=sink.record_version, linger=0.05
    ) as batcher:
        for rev in range(1, 301):  # 300 updates of 3 users; the newest per user wins
            user = rev % 3
            batcher.add_nowait(User(uid=user, name=f"user {user}", status=f"s{rev}", rev=rev))
        await batcher.flush()
        late = await batcher.add(User(uid=0, name="user 0", status="late", rev=1))
        await batcher.flush()
        print("an older revision, added last:", (await late).name)  # the row keeps rev 300
        print(batcher.stats())
    with sqlite3.connect(db) as conn:
        print("rows:", conn.execute("SELECT * FROM users ORDER BY user_id").fetchall())


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp) / "app.db"))
