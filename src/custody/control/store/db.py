"""Engines, migrations and the unit of work.

SQLite (WAL) is the embedded default; PostgreSQL when the URL names one. Every write
transaction takes the database's write lock up front (SQLite `BEGIN IMMEDIATE`), so two
processes never deadlock upgrading a read lock, and ledger appends are serialised.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import fcntl
import hashlib
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError, ProgrammingError

from custody.domain.errors import CustodyError

MIGRATIONS = Path(__file__).with_name("migrations")
# The newest migration. Kept here so opening a workspace need not import Alembic (a tenth of a
# second on every command); tests/test_store.py checks it against the migration scripts.
HEAD_REVISION = "0008"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "isolation_level": None})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA secure_delete=ON")  # freed cells (shredded data keys) are zeroed
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn) -> None:  # noqa: ANN001
            readonly = conn.get_execution_options().get("custody_readonly", False)
            conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return create_engine(url, pool_pre_ping=True)


def _alembic_config(conn: Connection | None = None):  # noqa: ANN202
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def script_head() -> str | None:
    """The head revision according to the migration scripts themselves."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one_or_none()
    except (OperationalError, ProgrammingError):
        return None  # no alembic_version table: an empty database


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (a no-op when it is there already)."""
    from alembic import command

    try:
        with engine.begin() as conn:
            command.upgrade(_alembic_config(conn), "head")
    except OperationalError as exc:
        raise CustodyError(f"cannot migrate the database: {exc.orig}") from None


def purge_freed(engine: Engine) -> None:
    """Push zeroed pages into the SQLite file so an old wrapped key survives in no WAL frame.

    PostgreSQL keeps dead row versions until VACUUM reuses them; shredding there relies on
    the KEK rotation that follows (see keys rotate)."""
    if engine.dialect.name == "sqlite":
        raw = engine.raw_connection()  # outside any transaction: a checkpoint cannot run inside one
        try:
            raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            raw.close()


_CLAIM = text("UPDATE ledger_head SET size = size + 1 WHERE id = 1 RETURNING size")


if TYPE_CHECKING:
    from custody.control.records import RecordKeys


class UnitOfWork:
    """One database transaction: state changes and their ledger events commit together."""

    def __init__(self, conn: Connection, records: "RecordKeys | None" = None) -> None:
        self.conn = conn
        self.records = records  # signs and checks principal and zone rows (control/records.py)
        self.signed: list[tuple[str, str, str]] = []  # rows signed here, noted in the custodian's journal after commit

    @property
    def dialect(self) -> str:
        return self.conn.dialect.name

    def serialise(self, topic: str) -> None:
        """Hold a lock named `topic` until this transaction ends, so check-then-act on it cannot
        interleave across processes: PostgreSQL takes a transaction-scoped advisory lock; a SQLite
        write transaction holds the database lock already."""
        if self.dialect == "postgresql":
            key = int.from_bytes(hashlib.sha256(topic.encode()).digest()[:8], "big", signed=True)
            self.conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})

    def claim_ledger_position(self) -> int:
        """The next ledger position, taken in one statement that also serialises appends across
        processes: PostgreSQL holds the head row's lock until commit, and a SQLite write
        transaction holds the database lock already (BEGIN IMMEDIATE). A rollback gives it back."""
        return int(self.conn.execute(_CLAIM).scalar_one()) - 1


class _SqliteWriters:
    """SQLite has one writer at a time. Writers queue here, threads on a lock and processes on
    an flock of a file beside the database, and are woken the moment it is free; left to
    SQLite's busy handler they would sleep in steps of up to 100 ms (a server's tail latency).
    Re-entrant within a thread; after BUSY_SECONDS the write fails clearly, as SQLite's own
    timeout would."""

    BUSY_SECONDS = 30

    def __init__(self, database: str) -> None:
        self._thread = threading.RLock()
        self._fd = os.open(database + "-writers.lock", os.O_RDWR | os.O_CREAT, 0o600)
        self._depth = 0

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._thread:
            if self._depth == 0:
                self._acquire()
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _acquire(self) -> None:
        deadline = time.monotonic() + self.BUSY_SECONDS
        pause = 0.0005
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise CustodyError("database error: another process has held the write lock for "
                                       f"{self.BUSY_SECONDS} s") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.004)


_SQLITE_WRITERS: dict[str, _SqliteWriters] = {}
_WRITERS_LOCK = threading.Lock()


@contextmanager
def _one_writer(engine: Engine, readonly: bool) -> Iterator[None]:
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if readonly or not database or database == ":memory:":
        yield
        return
    with _WRITERS_LOCK:
        writers = _SQLITE_WRITERS.get(database) or _SQLITE_WRITERS.setdefault(database, _SqliteWriters(database))
    with writers.held():
        yield


@contextmanager
def transaction(engine: Engine, readonly: bool = False, records: "RecordKeys | None" = None) -> Iterator[UnitOfWork]:
    """A transaction; a read-only one takes no write lock (long audits must not block writers)."""
    try:
        with _one_writer(engine, readonly), engine.connect() as conn:
            conn.execution_options(custody_readonly=readonly)
            if readonly and conn.dialect.name == "postgresql":
                conn.execution_options(isolation_level="REPEATABLE READ")  # one snapshot for the whole read
            with conn.begin():
                yield UnitOfWork(conn, records)
    except OperationalError as exc:
        raise CustodyError(f"database error: {str(exc.orig).splitlines()[0]}") from None
