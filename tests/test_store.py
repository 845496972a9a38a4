"""The schema: migrations create exactly what the code expects, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from conftest import Env
from custody.control.store import db
from custody.control.store.schema import metadata


def test_head_revision_constant_matches_scripts() -> None:
    assert db.script_head() == db.HEAD_REVISION


def test_migrations_match_schema(any_env: Env) -> None:
    ws = any_env.open()
    try:
        assert db.current_revision(ws.engine) == db.HEAD_REVISION
        with ws.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
        assert diff == []
        db.migrate(ws.engine)  # idempotent
        assert db.current_revision(ws.engine) == db.HEAD_REVISION
    finally:
        ws.close()
