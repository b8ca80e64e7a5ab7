"""The kseg instance's event log: Dagster's SQLite event log without per-event reconnects.

Dagster's ``SqliteEventLogStorage`` keeps one database per run plus an index
database, and opens a fresh SQLAlchemy engine and connection for every statement
it runs (a ``NullPool``), committing each with a full ``fsync``. A materialisation
is about ten such round trips. kseg logs about eleven events per image (seven
materialisations and four check evaluations), so on a run of small images those
round trips, not the segmentation, were most of the wall time
(``benchmarks/bench_dagster.py``).

:class:`PooledSqliteEventLogStorage` is the same storage, with the same files,
schema and watch mechanism (the UI reads it exactly as before), but it

* keeps one engine with a small connection pool per database (the most recently
  used :data:`MAX_ENGINES` of them) instead of reconnecting for every statement;
* remembers which tables exist (Dagster asks before every write of tags) and
  whether the asset index has its timestamp columns (Dagster inspected the
  table's columns before every asset event);
* records a check result in one index transaction instead of two;
* serialises each materialisation once: Dagster serialised the whole event (with
  all its metadata) a second time for the asset index's "last materialisation",
  which is the same JSON wrapped in a record with the event's id;
* runs SQLite with ``synchronous=NORMAL`` (the databases are already in WAL mode):
  a commit no longer waits for an ``fsync``. An application crash loses nothing;
  a power failure may lose the last transactions but never corrupts the
  database (SQLite's documented guarantee for WAL with ``synchronous=NORMAL``).

It is configured in the instance's ``dagster.yaml`` (see :mod:`assets.run`), so
``kseg run``, ``dagster dev`` and the daemon all use it.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    ASSET_CHECK_EVENTS,
    INDEX_SHARD_NAME,
    SqliteEventLogStorage,
)
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._serdes import ConfigurableClassData
from dagster._time import datetime_from_timestamp
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import QueuePool

__all__ = ["MAX_ENGINES", "PooledSqliteEventLogStorage"]

#: Databases (runs plus the index) whose engines stay open; older ones are disposed.
MAX_ENGINES = 8


def _tune(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """SQLite event log storage (one database per run) with pooled connections.

    Configured like Dagster's ``SqliteEventLogStorage``::

        event_log_storage:
          module: assets.event_storage
          class: PooledSqliteEventLogStorage
          config:
            base_dir: /path/to/dagster_home/history/runs
    """

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._engines_lock = threading.RLock()
        self._tables: set[str] = set()
        self._asset_key_index_cols = False
        self._serialized: tuple[EventLogEntry, str] | None = None
        self._held: dict[str, Connection] = {}  # shard -> connection of an open transaction
        super().__init__(base_dir, inst_data)
        # Re-entrant, so store_event can hold the index transaction while Dagster's
        # code inside it asks for the index connection again (same thread).
        self._db_lock = threading.RLock()

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> PooledSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    def _engine(self, shard: str) -> Engine:
        with self._engines_lock:  # has_table may come from another thread than _connect
            return self._engine_locked(shard)

    def _engine_locked(self, shard: str) -> Engine:
        engine = self._engines.get(shard)
        if engine is not None:
            self._engines.move_to_end(shard)
            return engine
        engine = create_engine(
            self.conn_string_for_shard(shard),
            poolclass=QueuePool,
            pool_size=1,
            max_overflow=4,
            # Every use commits or rolls back its own transaction (``conn.begin()``),
            # so the pool's extra rollback on each check-in is redundant.
            pool_reset_on_return=None,
            # Checked-in connections may be picked up by another thread (the UI's
            # watchers); the storage's lock keeps one user at a time.
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
        )
        event.listen(engine, "connect", _tune)
        if shard not in self._initialized_dbs:
            self._initdb(engine)
            self._initialized_dbs.add(shard)
        self._engines[shard] = engine
        while len(self._engines) > MAX_ENGINES:
            _, oldest = self._engines.popitem(last=False)
            oldest.dispose()
        return engine

    @contextlib.contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            held = self._held.get(shard)
            if held is not None:  # inside store_event's one transaction for this database
                yield held
                return
            with self._engine(shard).connect() as conn, conn.begin():
                yield conn

    def store_event(self, event: EventLogEntry) -> None:
        if event.is_dagster_event and event.dagster_event_type in ASSET_CHECK_EVENTS:
            # Dagster records a check result in the index database in two transactions
            # (the event, then the check's execution row); make them one commit.
            with self._connect(INDEX_SHARD_NAME) as conn:  # holds the (re-entrant) lock
                self._held[INDEX_SHARD_NAME] = conn
                try:
                    super().store_event(event)
                finally:
                    del self._held[INDEX_SHARD_NAME]
            return
        super().store_event(event)

    def has_table(self, table_name: str) -> bool:
        # Dagster asks before writing every materialisation's tags; its answer opened a
        # new engine each time. A table, once there, stays (migrations only add them).
        if table_name in self._tables:
            return True
        engine = self._engine(INDEX_SHARD_NAME)
        with engine.connect() as conn:
            found = bool(engine.dialect.has_table(conn, table_name))
        if found:
            self._tables.add(table_name)
        return found

    def _has_asset_key_index_cols_on_connection(self, conn: Connection) -> bool:
        # Asked before every asset event; columns, once there, stay (upgrade adds them).
        if not self._asset_key_index_cols:
            self._asset_key_index_cols = super()._has_asset_key_index_cols_on_connection(conn)
        return self._asset_key_index_cols

    def _event_to_row(self, event: EventLogEntry) -> dict[str, Any]:
        row = super()._event_to_row(event)
        self._serialized = (event, row["event"])  # for _get_asset_entry_values, just after
        return row

    def _get_asset_entry_values(
        self, event: EventLogEntry, event_id: int, has_asset_key_index_cols: bool
    ) -> dict[str, Any]:
        serialized, self._serialized = self._serialized, None
        dagster_event = event.dagster_event
        if (
            serialized is None
            or serialized[0] is not event
            or dagster_event is None
            or not dagster_event.is_step_materialization
        ):
            return super()._get_asset_entry_values(event, event_id, has_asset_key_index_cols)
        # serialize_value(EventLogRecord(storage_id=event_id, event_log_entry=event)),
        # built around the event's JSON from the row just written (keys in serdes'
        # sorted order; tests/assets/test_event_storage.py checks it is identical).
        record = (
            '{"__class__": "EventLogRecord", "event_log_entry": '
            f'{serialized[1]}, "storage_id": {int(event_id)}}}'
        )
        values: dict[str, Any] = {"last_materialization": record, "last_run_id": event.run_id}
        if has_asset_key_index_cols:
            values["last_materialization_timestamp"] = datetime_from_timestamp(event.timestamp)
        return values

    def upgrade(self) -> None:
        super().upgrade()
        self._asset_key_index_cols = False  # a migration may have added the columns

    def _dispose_engines(self) -> None:
        with self._engines_lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()

    def wipe(self) -> None:
        self._dispose_engines()  # the run databases are about to be deleted
        super().wipe()

    def dispose(self) -> None:
        super().dispose()
        self._dispose_engines()
