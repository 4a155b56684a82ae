"""``PostgresSink``'s asyncpg path, per batch: the rows by record shape (newest per key),
and one statement per shape (``unnest`` upsert, COPY staging merge, or COPY for append-only
tables), reporting the rows its version condition skipped with ``report_stale``
(``_pg_stale``). A base class of ``PostgresSink``, kept apart to keep that module short.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._ident import quote
from ._increment import check_deltas, sum_per_key
from ._newest import newest_across_shapes
from ._pg import argument_error, newest_per_key
from ._pg_psycopg import PsycopgDriver
from ._pg_stale import merged, newest_indexed, pg_upsert, stage_lookup
from ._pg_stream import stream_rows
from ._records import Rows, check_shape
from ._stale import Where, group_indexed, reports
from ._values import convert_rows, enum_values

__all__ = ["PgRows"]


class PgRows:
    """What ``PostgresSink`` sets up, and the methods that turn a batch into statements."""

    table: str
    schema: str
    key: tuple[str, ...]
    version: str | None
    method: str
    reports_stale: bool
    increment: tuple[str, ...]
    _whole: tuple[str, ...] = ()  # the increment columns of an integer (base) type
    statements: int
    columns: dict[str, str]
    _arrays: set[str]
    _by_column: dict[str, Callable[[Any], Any]]
    _encode: Callable[[Any], Any]
    _psy: PsycopgDriver | None
    _sql: dict[tuple[str, ...], str]
    _target: str

    def _group(self, batch: list[Any]) -> tuple[Rows, Where, list[int]]:
        """The rows by record shape; with ``report_stale``, where each came from and the
        batch indexes of older duplicates left out (the asyncpg path keeps the newest)."""
        if self._psy is not None and not self.increment:
            one = stream_rows(batch, enum_values, self._by_column)  # no rows list: _pg_stream
            if one is not None:
                names, streamed = one
                check_shape(names, self.columns, self.key, f"{self.schema}.{self.table}")
                streamed_group: Rows = {names: streamed}  # type: ignore[dict-item]
                return streamed_group, {names: range(len(batch))} if self.reports_stale else {}, []
        groups, where = group_indexed(batch, self.reports_stale)
        groups, where, dropped = newest_across_shapes(
            batch, groups, where, self.key, self.version, self.increment
        )
        for names in groups:
            if names not in self._sql:
                check_shape(names, self.columns, self.key, f"{self.schema}.{self.table}")
        groups = {
            names: convert_rows(names, rows, self.key, enum_values, self._by_column)
            for names, rows in groups.items()
        }
        if self.increment:  # one row per key, its increments summed (never with where)
            for names, rows in groups.items():
                check_deltas(names, rows, self.increment, self._whole)
                groups[names] = sum_per_key(names, rows, self.key, self.version, self.increment)
        if self.key and self._psy is None:  # psycopg's merge keeps the newest per key itself
            for names, rows in groups.items():
                if where:
                    groups[names], where[names], lost = newest_indexed(
                        names, rows, self.key, self.version, where[names]
                    )
                    dropped += lost
                else:
                    groups[names] = newest_per_key(names, rows, self.key, self.version)
        return groups, where, dropped

    def _json_value(self, v: Any) -> Any:
        return v if v is None or isinstance(v, str) else self._encode(v)

    def _single_statement(self, names: tuple[str, ...]) -> bool:
        return bool(self.key) and not self._use_copy(names)

    async def _write_rows(
        self, conn: Any, names: tuple[str, ...], rows: list[Any], shape: int
    ) -> list[int]:
        """Write one shape's rows; the ordinals of those the version condition skipped
        (with ``report_stale``; otherwise none)."""
        report = self.reports_stale and reports(names, self.key, self.version)
        found: Any = ()
        if not self.key:
            await conn.copy_records_to_table(
                self.table, schema_name=self.schema, columns=list(names), records=rows
            )
        elif self._use_copy(names):
            name = f"wb_stage{shape}_{self.table}"[:63]  # one per record shape in the batch
            stage = quote(name)
            numbered = ", wb_n bigint GENERATED ALWAYS AS IDENTITY" if report else ""
            await conn.execute(
                f"CREATE TEMP TABLE {stage} (LIKE {self._target} INCLUDING DEFAULTS{numbered}) "
                "ON COMMIT DROP"
            )
            await conn.copy_records_to_table(name, columns=list(names), records=rows)
            status = await conn.execute(self._statement(names, source=stage))
            if report and merged(status) < len(rows):  # some skipped: which (in this txn)
                assert self.version is not None  # reports() says so
                found = await conn.fetch(stage_lookup(self._target, stage, self.key, self.version))
        else:
            try:
                found = await (conn.fetch if report else conn.execute)(
                    self._statement(names, report=report),
                    *(list(c) for c in zip(*rows, strict=True)),
                )
            except Exception as exc:
                bad = argument_error(exc, names, rows, self.key)
                if bad is None:
                    raise
                raise bad from None  # the driver's text quotes the whole array
        self.statements += 1
        return [r[0] for r in found] if found else []

    def _use_copy(self, names: tuple[str, ...]) -> bool:
        return self.method == "copy" or (self.method == "auto" and bool(self._arrays & set(names)))

    def _statement(
        self, names: tuple[str, ...], source: str | None = None, report: bool = False
    ) -> str:
        cache_key = (*names, source or "", "report" if report else "")
        sql = self._sql.get(cache_key)
        if sql is None:
            types = [self.columns[n] for n in names]
            sql = self._sql[cache_key] = pg_upsert(
                self._target,
                names,
                types,
                self.key,
                self.version,
                source,
                report,
                self.increment,
            )
        return sql
