"""The attacks of a hostile tenant, as uploads to a real `secateurs api`: archives that
would unpickle or evaluate code, graphs that read or write server files, ONNX external
data hidden in a function, an allocation bomb. Each is refused with a typed problem, no
canary file appears, the victim file is unchanged, and no secret (another tenant's key,
the victim's bytes) is in any response or in anything the attacker can download."""

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.security import payloads
from tests.security.apiserver import Api, running_api

SECRET = b"victim-secret-0123456789abcdef!!" * 8  # 256 bytes, as from_file reads them

Build = Callable[[Path, Path, Path], Path]  # (upload path, canary, victim) -> upload

HOSTILE: dict[str, Build] = {
    "pt2-pickled-weight": lambda p, c, v: payloads.pt2_pickled_weight(p, c),
    "pt2-pickled-constant": lambda p, c, v: payloads.pt2_pickled_constant(p, c),
    "pt2-opaque-object": lambda p, c, v: payloads.pt2_object_constant(p, c),
    "pt2-torchbind-object": lambda p, c, v: payloads.pt2_object_constant(p, c, "custom_obj_"),
    "pt2-innocent-member": lambda p, c, v: payloads.pt2_extra_pickle_member(p, c),
    "pt2-sample-inputs": lambda p, c, v: payloads.pt2_sample_inputs_gadget(p, c),
    "pt2-shape-expression": lambda p, c, v: payloads.pt2_sympy_injection(p, c),
    "pt2-node-name": lambda p, c, v: payloads.pt2_name_injection(p, c),
    "pt2-from-file-read": lambda p, c, v: payloads.pt2_from_file(p, v),
    "pt2-from-file-write": lambda p, c, v: payloads.pt2_from_file(p, v, shared=True),
    "pt2-in-place-input": lambda p, c, v: payloads.pt2_inplace_on_input(p),
    "onnx-function-external": lambda p, c, v: payloads.onnx_function_if_external(
        p, "../" * 12 + str(v).lstrip("/")
    ),
    "onnx-sparse-external": lambda p, c, v: payloads.onnx_sparse_external(p),
    "onnx-foreign-domain": lambda p, c, v: payloads.onnx_custom_domain(p),
    "onnx-expand-bomb": lambda p, c, v: payloads.onnx_expand_bomb(p),
    "pickle": lambda p, c, v: payloads.canary_pickle(p, c),
}
SUFFIX = {"pt2": ".pt2", "onnx": ".onnx", "pickle": ".pth"}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with running_api(tmp_path_factory.mktemp("hostile") / "data") as server:
        yield server


def _secrets(api: Api) -> list[bytes]:
    return [api.key_b.encode(), SECRET[:8], SECRET[:8].hex().encode()]


def _assert_no_secret(api: Api, body: bytes, where: str) -> None:
    for secret in _secrets(api):
        assert secret not in body, f"{secret!r} leaked in {where}"


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_upload_is_refused_and_reaches_nothing(
    api: Api, tmp_path: Path, name: str
) -> None:
    canary, victim = tmp_path / "canary", tmp_path / "victim"
    victim.write_bytes(SECRET)
    upload = HOSTILE[name](tmp_path / f"m{SUFFIX[name.split('-')[0]]}", canary, victim)
    with api.client(api.key_a, timeout=120) as alice:
        resp = alice.post("/v1/models", files={"file": (upload.name, upload.read_bytes())})
        assert 400 <= resp.status_code < 500, (resp.status_code, resp.text)
        assert resp.headers["content-type"].startswith("application/problem+json")
        assert resp.json()["code"], resp.text
        _assert_no_secret(api, resp.content, "the refusal")
        _assert_nothing_downloadable_leaks(api, alice)
    assert not canary.exists(), "the upload ran code"
    assert victim.read_bytes() == SECRET, "the upload wrote a server file"


def _assert_nothing_downloadable_leaks(api: Api, alice: httpx.Client) -> None:
    """Whatever the attacker has stored (an accepted payload would be a covert channel)."""
    for model in alice.get("/v1/models", params={"limit": 100}).json()["items"]:
        _assert_no_secret(api, alice.get(f"/v1/models/{model['id']}").content, "a model")
        _assert_no_secret(api, alice.get(f"/v1/models/{model['id']}/file").content, "a stored file")


def test_an_ordinary_upload_still_works_after_the_attacks(api: Api, tmp_path: Path) -> None:
    for upload in (
        payloads.tiny_onnx(tmp_path / "ok.onnx"),
        payloads.pt2_small_cnn(tmp_path / "ok.pt2"),
    ):
        with api.client(api.key_a, timeout=120) as alice:
            resp = alice.post("/v1/models", files={"file": (upload.name, upload.read_bytes())})
        assert resp.status_code == 201, resp.text
