"""The job store: SQLAlchemy models, sessions, job state changes, tenant quotas and locks,
and the schema's Alembic migrations."""
