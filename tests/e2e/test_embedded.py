"""The core scenario on the server-less defaults: SQLite job store, the embedded broker
(Kombu's SQLAlchemy transport on SQLite) and the local artifact store."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Service, running_service
from tests.e2e.helpers import core_scenario

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with running_service(tmp_path_factory.mktemp("embedded") / "data") as svc:
        yield svc


def test_core_scenario_on_embedded_defaults(service: Service, tmp_path: Path) -> None:
    with service.client() as client:
        try:
            result = core_scenario(client, tmp_path)
        except AssertionError:
            print(service.logs())
            raise
    stored = service.log_dir / "artifacts" / "jobs" / result["job"]["id"] / "model.onnx"
    assert stored.read_bytes() == result["onnx"]
