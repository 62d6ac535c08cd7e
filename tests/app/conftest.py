"""An app on a temporary SQLite database and data directory, with the queue and (by default)
the inspector replaced by doubles."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.main import create_app
from infra.config import Settings
from tests.app.helpers import KEY_A, KEY_B, FakeInspector, FakeQueue


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        api_keys=f"alice:{KEY_A},bob:{KEY_B}",
        rate_limit_per_minute=100_000,
        inspect_timeout_s=60,
    )


def app_with_doubles(settings: Settings) -> Iterator[FastAPI]:
    """The app on `settings`, its queue and inspector replaced by doubles; disposed after."""
    application = create_app(settings)
    application.state.queue = FakeQueue()
    application.state.inspector = FakeInspector()
    yield application
    application.state.engine.dispose()


@pytest.fixture
def app(settings: Settings) -> Iterator[FastAPI]:
    yield from app_with_doubles(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client
