"""PostgreSQL connections are pinged at checkout only after idling in the pool, and one that
was cut while it idled is replaced, not handed out."""

import time

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from infra.db.session import PING_IDLE_S, make_engine, ping_when_idle


def backend_pid(engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def cut(postgres_url: str, pid: int) -> None:
    """End a pooled connection's server process, as a database restart would."""
    url = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_a_connection_cut_while_idle_is_replaced(postgres_url):
    engine = make_engine(postgres_url)
    first = backend_pid(engine)
    cut(postgres_url, first)
    time.sleep(PING_IDLE_S + 0.1)
    assert backend_pid(engine) != first  # the ping failed; a new connection was made
    engine.dispose()


def test_a_connection_handed_back_moments_ago_is_not_pinged(postgres_url, monkeypatch):
    engine = create_engine(postgres_url, pool_size=2)
    ping_when_idle(engine, idle_s=60)
    pings = []
    ping = engine.dialect.do_ping
    monkeypatch.setattr(engine.dialect, "do_ping", lambda conn: pings.append(1) or ping(conn))
    pids = {backend_pid(engine) for _ in range(5)}
    assert len(pids) == 1 and pings == []
    # The trade: a connection cut between two busy moments fails one query, and the pool
    # then replaces it.
    cut(postgres_url, pids.pop())
    with pytest.raises(OperationalError):
        backend_pid(engine)
    assert backend_pid(engine) > 0
    engine.dispose()
