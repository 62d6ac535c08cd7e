"""Every security test that needs a real service (uvicorn + Celery worker on the embedded
broker) uses the session's shared one, whose limits are small so hostile inputs hit them
cheaply."""

import pytest

from tests.conftest import (
    SHARED_IDLE_TIMEOUT_S,
    SHARED_INSPECT_TIMEOUT_S,
    SHARED_MAX_DATASET_BYTES,
    SHARED_MAX_MODEL_BYTES,
    Service,
)

MAX_MODEL_BYTES = SHARED_MAX_MODEL_BYTES
MAX_DATASET_BYTES = SHARED_MAX_DATASET_BYTES
IDLE_TIMEOUT_S = SHARED_IDLE_TIMEOUT_S
INSPECT_TIMEOUT_S = SHARED_INSPECT_TIMEOUT_S


@pytest.fixture(scope="session")
def service(embedded_service: Service) -> Service:
    return embedded_service
