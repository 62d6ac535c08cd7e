"""Schema migrations: a fresh database upgraded equals the models' schema, and a database
made by `create_all` before migrations is recognised, stamped and upgraded, on SQLite and
PostgreSQL."""

import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text
from typer.testing import CliRunner

from infra.db.migrations import (
    BASELINE_REVISION,
    SchemaMismatch,
    alembic_config,
    baseline,
    current_revision,
    upgrade,
)
from infra.db.models import Base
from infra.db.session import make_engine
from tests.conftest import PG_HOST, PG_PORT, PG_USER

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


@pytest.fixture
def sqlite_engines(tmp_path: Path) -> Iterator[Callable[[], Engine]]:
    """Engines on one SQLite file, as separate processes would open it."""
    engines: list[Engine] = []

    def new() -> Engine:
        engines.append(make_engine(f"sqlite:///{tmp_path / 'store.db'}"))
        return engines[-1]

    yield new
    for engine in engines:
        engine.dispose()


@pytest.fixture
def postgresql_engines(postgres_server: str) -> Iterator[Callable[[], Engine]]:
    """Engines on one fresh PostgreSQL database, dropped after the test."""
    import psycopg

    name = f"secateurs_migrate_{secrets.token_hex(4)}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    engines: list[Engine] = []

    def new() -> Engine:
        engines.append(make_engine(f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"))
        return engines[-1]

    yield new
    for engine in engines:
        engine.dispose()
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def engines(request: pytest.FixtureRequest) -> Callable[[], Engine]:
    return request.getfixturevalue(f"{request.param}_engines")


def _differences(engine: Engine, metadata) -> list:  # type: ignore[no-untyped-def]
    with engine.connect() as connection:
        return compare_metadata(MigrationContext.configure(connection), metadata)


def _revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return current_revision(connection)


def test_a_fresh_database_upgraded_has_the_models_schema(engines):
    engine = engines()
    upgrade(engine)
    assert _revision(engine) == HEAD
    # What create_all would make: a model changed without a revision shows up here.
    assert _differences(engine, Base.metadata) == []


def test_the_first_revision_is_the_frozen_baseline(engines):
    engine = engines()
    upgrade(engine, BASELINE_REVISION)
    assert _differences(engine, baseline.build()) == []


def test_a_database_made_before_migrations_is_stamped_and_upgraded(engines):
    engine = engines()
    baseline.build().create_all(engine)  # what start-up's create_all made until now
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO api_keys (tenant, key_hash, created_at) "
                "VALUES ('alice', 'h', CURRENT_TIMESTAMP)"
            )
        )
    upgrade(engine)
    assert _revision(engine) == HEAD
    assert _differences(engine, Base.metadata) == []
    with engine.connect() as connection:  # the rows are kept
        assert connection.execute(text("SELECT tenant FROM api_keys")).scalars().all() == ["alice"]


def test_a_database_before_migrations_missing_a_newer_table_gains_it(sqlite_engines):
    # As create_all did at start-up for a database older than that table.
    engine = sqlite_engines()
    snapshot = baseline.build()
    snapshot.remove(snapshot.tables["model_analyses"])
    snapshot.create_all(engine)
    upgrade(engine)
    assert _revision(engine) == HEAD and _differences(engine, Base.metadata) == []


def test_a_database_before_migrations_that_differs_is_refused(sqlite_engines):
    engine = sqlite_engines()
    baseline.build().create_all(engine)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE jobs DROP COLUMN worker"))
    with pytest.raises(SchemaMismatch, match="worker"):
        upgrade(engine)
    assert "alembic_version" not in inspect(engine).get_table_names()


def test_processes_upgrading_at_once_migrate_once(engines):
    errors: list[BaseException] = []

    def run(engine: Engine) -> None:
        try:
            upgrade(engine)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(engines(),)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert _revision(engines()) == HEAD


def test_the_db_upgrade_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from cli.main import _register, app

    _register()
    monkeypatch.setenv("SECATEURS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("SECATEURS_DATABASE_URL", raising=False)
    result = CliRunner().invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert f"database at revision {HEAD}" in result.output
    result = CliRunner().invoke(app, ["db", "current"])
    assert result.output.strip() == HEAD
