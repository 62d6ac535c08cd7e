"""`secateurs db upgrade | current | stamp | revision`: the job store's schema migrations.

`serve`, `api` and `worker` upgrade the database themselves at start; `db upgrade` does it
ahead of a deployment (one process, before the new version's API processes start).
"""

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from cli.main import app

db_app = typer.Typer(no_args_is_help=True, help="Migrate the job store's schema (Alembic).")
app.add_typer(db_app, name="db")


def _engine():  # type: ignore[no-untyped-def]
    from infra.config import Settings
    from infra.db.session import make_engine

    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return make_engine(settings.resolved_database_url)


@db_app.command("upgrade")
def upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision")] = "head",
) -> None:
    """Migrate the database (SECATEURS_DATABASE_URL) to REVISION, the newest by default.

    A database made before migrations is recognised and stamped at the first revision."""
    from infra.db.migrations import SchemaMismatch, current_revision
    from infra.db.migrations import upgrade as run_upgrade

    engine = _engine()
    try:
        run_upgrade(engine, revision)
    except SchemaMismatch as exc:
        typer.echo(f"error: schema_mismatch: {exc}", err=True)
        raise typer.Exit(1) from None
    with engine.connect() as connection:
        typer.echo(f"database at revision {current_revision(connection)}")
    engine.dispose()


@db_app.command("current")
def current() -> None:
    """Print the database's revision (nothing when it has no migration history)."""
    from infra.db.migrations import current_revision

    engine = _engine()
    with engine.connect() as connection:
        typer.echo(current_revision(connection) or "")
    engine.dispose()


@db_app.command("stamp")
def stamp(revision: Annotated[str, typer.Argument(help="Revision the database is at")]) -> None:
    """Record REVISION as the database's revision without running any migration (after
    migrating a database by hand)."""
    from alembic import command

    from infra.db.migrations import alembic_config, migration_lock

    engine = _engine()
    with migration_lock(engine) as connection:
        command.stamp(alembic_config(connection), revision)
        connection.commit()
    engine.dispose()


@db_app.command("revision")
def revision(
    message: Annotated[str, typer.Argument(help="What the revision changes, in a few words")],
    autogenerate: Annotated[
        bool, typer.Option(help="Fill it in from the models' differences with the newest revision")
    ] = True,
) -> None:
    """Write a new revision file into infra/db/migrations/versions (for developers)."""
    from alembic import command
    from alembic.script import ScriptDirectory

    from infra.db.migrations import alembic_config
    from infra.db.migrations import upgrade as run_upgrade
    from infra.db.session import make_engine

    # Compared against a scratch SQLite database at the newest revision, so no real
    # database is needed; review the result, SQLite's reflection is not PostgreSQL's.
    with tempfile.TemporaryDirectory() as scratch:
        url = f"sqlite:///{Path(scratch) / 'head.db'}"
        engine = make_engine(url)
        run_upgrade(engine)
        engine.dispose()
        config = alembic_config(url=url)
        # Numbered in order (0001, 0002…), so the versions folder reads as a history.
        head = ScriptDirectory.from_config(config).get_current_head() or "0"
        script = command.revision(
            config, message=message, autogenerate=autogenerate, rev_id=f"{int(head) + 1:04d}"
        )
    paths = [s.path for s in (script if isinstance(script, list) else [script]) if s]
    typer.echo("\n".join(paths))
