"""One real service (uvicorn + Celery worker on the embedded broker) for every security
test, with small limits so hostile inputs hit them cheaply."""

from collections.abc import Iterator

import pytest

from tests.conftest import Service, running_service

MAX_MODEL_BYTES = 1 << 20
MAX_DATASET_BYTES = 16 << 20
IDLE_TIMEOUT_S = 2
# Long enough for a tiny model's honest inspection on a busy machine; the endless-loop
# model runs into it.
INSPECT_TIMEOUT_S = 40


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("security") / "data"
    with running_service(
        data_dir,
        max_model_bytes=str(MAX_MODEL_BYTES),
        max_dataset_bytes=str(MAX_DATASET_BYTES),
        upload_idle_timeout_s=str(IDLE_TIMEOUT_S),
        inspect_timeout_s=str(INSPECT_TIMEOUT_S),
        inspect_memory_total_bytes=str(8 << 30),
    ) as svc:
        yield svc
