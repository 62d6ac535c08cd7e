"""Hostile model uploads against the real API and its real inspector child.

Each test uploads one file and checks the exact problem, that nothing it carried ran,
that no partial file stayed behind, and that the service is still ready afterwards.
Tests whose file gets as far as the torch import are marked slow.
"""

from pathlib import Path

import pytest

from tests.conftest import Service
from tests.security import payloads
from tests.security.helpers import assert_problem, assert_ready, tmp_files, upload

pytestmark = pytest.mark.e2e

# Codes a malformed model may legitimately earn; never anything else, never a 5xx.
MODEL_REFUSALS = {
    "invalid_model",
    "unsupported_op",
    "input_shape_required",
    "too_large",
    "non_finite_weights",
    "external_data_forbidden",
}


def _refused(service: Service, path: Path, code: str, **fields: str) -> dict:
    with service.client() as client:
        body = assert_problem(upload(client, "models", path, **fields), 422, code)
        assert path.name not in [m["name"] for m in client.get("/v1/models").json()["items"]]
    assert tmp_files(service) == []
    assert_ready(service)
    return body


# --- refused from the bytes alone (no torch import) --------------------------------------


def test_random_bytes(service: Service, tmp_path: Path) -> None:
    _refused(service, payloads.random_bytes(tmp_path / "m.onnx"), "invalid_model")


def test_empty_file(service: Service, tmp_path: Path) -> None:
    _refused(service, payloads.empty(tmp_path / "m.onnx"), "invalid_model")


def test_truncated_onnx(service: Service, tmp_path: Path) -> None:
    _refused(service, payloads.truncated_onnx(tmp_path / "m.onnx"), "invalid_model")


def test_bare_npy_is_not_a_model(service: Service, tmp_path: Path) -> None:
    _refused(service, payloads.bare_npy(tmp_path / "m.npy"), "invalid_model")


def test_pickled_whole_module(service: Service, tmp_path: Path) -> None:
    body = _refused(service, payloads.pickled_module(tmp_path / "m.pt"), "unsafe_format")
    assert "torch.nn.modules" in body["detail"]


@pytest.mark.parametrize("protocol", [0, 4])
def test_code_running_pickle_never_runs(service: Service, tmp_path: Path, protocol: int) -> None:
    canary = tmp_path / "canary"
    _refused(service, payloads.canary_pickle(tmp_path / "m.pth", canary, protocol), "unsafe_format")
    assert not canary.exists()


def test_torch_zip_with_swapped_data_pkl(service: Service, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    body = _refused(service, payloads.canary_torch_zip(tmp_path / "m.pt", canary), "unsafe_format")
    assert "system" in body["detail"] and not canary.exists()


def test_torch_legacy_format_with_gadget(service: Service, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    _refused(service, payloads.canary_torch_legacy(tmp_path / "m.pt", canary), "unsafe_format")
    assert not canary.exists()


def test_pickle_under_an_onnx_name(service: Service, tmp_path: Path) -> None:
    # Formats come from the bytes, never from the name.
    canary = tmp_path / "canary"
    _refused(service, payloads.canary_pickle(tmp_path / "model.onnx", canary), "unsafe_format")
    assert not canary.exists()


def test_oversized_model_with_content_length(service: Service, tmp_path: Path) -> None:
    path = tmp_path / "big.onnx"
    path.write_bytes(bytes(3 << 20))
    with service.client() as client:
        assert_problem(upload(client, "models", path), 413, "payload_too_large")
    assert tmp_files(service) == []
    assert_ready(service)


def test_oversized_model_streamed_without_content_length(service: Service) -> None:
    boundary = "b0undary"

    def body():  # a generator: httpx sends it chunked, with no Content-Length
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="m.onnx"\r\n\r\n'
        ).encode()
        for _ in range(24):
            yield bytes(128 << 10)
        yield f"\r\n--{boundary}--\r\n".encode()

    with service.client() as client:
        resp = client.post(
            "/v1/models",
            content=body(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert "content-length" not in resp.request.headers
        assert_problem(resp, 413, "payload_too_large")
    assert tmp_files(service) == []
    assert_ready(service)


def test_weights_with_unknown_arch(service: Service, tmp_path: Path) -> None:
    _refused(
        service,
        payloads.state_dict(tmp_path / "m.pt"),
        "unknown_arch",
        arch="torchvision:no_such_net",
    )


# --- refused after parsing (the child imports torch and onnx) ----------------------------


@pytest.mark.slow
def test_onnx_external_data(service: Service, tmp_path: Path) -> None:
    _refused(service, payloads.onnx_external_data(tmp_path / "m.onnx"), "external_data_forbidden")


@pytest.mark.slow
def test_onnx_external_data_path_traversal(service: Service, tmp_path: Path) -> None:
    body = _refused(
        service,
        payloads.onnx_external_data(tmp_path / "m.onnx", "../../../../etc/passwd"),
        "external_data_forbidden",
    )
    assert "root:" not in body["detail"]


@pytest.mark.slow
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_weights(service: Service, tmp_path: Path, value: float) -> None:
    _refused(service, payloads.onnx_non_finite(tmp_path / "m.onnx", value), "non_finite_weights")


@pytest.mark.slow
def test_absurd_input_shape(service: Service, tmp_path: Path) -> None:
    _refused(service, payloads.onnx_huge_input(tmp_path / "m.onnx"), "too_large")


@pytest.mark.slow
def test_initializer_claiming_absurd_size(service: Service, tmp_path: Path) -> None:
    _refused(service, payloads.onnx_huge_initializer(tmp_path / "m.onnx"), "invalid_model")


@pytest.mark.slow
def test_first_run_allocation_bomb(service: Service, tmp_path: Path) -> None:
    # 4 TiB of ConstantOfShape at first run: refused by shape inference before it runs.
    body = _refused(service, payloads.onnx_allocation_bomb(tmp_path / "m.onnx"), "too_large")
    assert "GiB" in body["detail"]


# The endless model runs into whatever limit the inspector has: a service of its own with a
# short one proves the same as the shared service's INSPECT_TIMEOUT_S, in a fraction of it.
ENDLESS_LIMIT_S = 10


@pytest.mark.slow
def test_first_run_that_never_ends(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    import time

    import httpx

    from tests.security.apiserver import running_api

    path = payloads.onnx_endless_loop(tmp_path / "m.onnx")
    with running_api(
        tmp_path_factory.mktemp("endless") / "data",
        inspect_timeout_s=str(ENDLESS_LIMIT_S),
        inspect_memory_total_bytes=str(8 << 30),
    ) as api:
        started = time.monotonic()
        with api.client(api.key_a, timeout=120) as client:
            with path.open("rb") as fh:
                resp = client.post("/v1/models", files={"file": (path.name, fh)})
            body = assert_problem(resp, 422, "invalid_model")
            # Stopped by the child's CPU/time limit, not left running.
            assert time.monotonic() - started < 3 * ENDLESS_LIMIT_S, body
            assert path.name not in [m["name"] for m in client.get("/v1/models").json()["items"]]
        tmp = api.data_dir / "tmp"
        assert not tmp.exists() or list(tmp.iterdir()) == []
        assert api.proc.poll() is None, api.log()
        assert httpx.get(f"{api.base_url}/readyz", timeout=10).status_code == 200


@pytest.mark.slow
def test_model_that_crashes_onnxruntime_in_the_child(service: Service, tmp_path: Path) -> None:
    """onnxruntime dies of SIGFPE on this model; only the inspector child goes with it."""
    import subprocess
    import sys

    path = payloads.onnx_crashing_runtime(tmp_path / "m.onnx")
    # The crash is real: a bare onnxruntime run of the file dies of a signal.
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, numpy as np, onnxruntime as ort; "
            "s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider']); "
            "s.run(None, {'image': np.ones((1, 3, 8, 8), np.float32)})",
            str(path),
        ],
        capture_output=True,
        timeout=120,
    )
    assert probe.returncode < 0, probe
    body = _refused(service, path, "invalid_model")
    assert "exited with status" in body["detail"]


@pytest.mark.slow
def test_fuzzed_models_never_break_the_service(service: Service, tmp_path: Path) -> None:
    answers = []
    with service.client() as client:
        for seed in range(3):
            resp = upload(client, "models", payloads.fuzzed_onnx(tmp_path / f"f{seed}.onnx", seed))
            assert resp.status_code in (201, 422), (seed, resp.status_code, resp.text)
            if resp.status_code == 422:
                assert_problem(resp, 422, resp.json()["code"])
                assert resp.json()["code"] in MODEL_REFUSALS, resp.json()
            answers.append(resp.status_code)
    assert 422 in answers  # the mutations do break the model most of the time
    assert tmp_files(service) == []
    assert_ready(service)
