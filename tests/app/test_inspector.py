"""The child-process inspector: results, refusals, crashes, garbage and hangs."""

import json
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from app.core.errors import Unprocessable
from app.inspector import Inspector
from infra.sandbox import Sandbox
from tests.aio import run_coroutine
from tests.app.helpers import AUTH_A, assert_problem, upload_model

OK_INFO = {
    "format": "onnx",
    "inputs": [{"name": "input", "shape": ["N", 3, 8, 8], "dtype": "float32"}],
    "outputs": [{"name": "logits", "shape": ["N", 4], "dtype": "float32"}],
    "stats": {"params": 112, "macs": 6912},
    "input_shape": [1, 3, 8, 8],
}


def _fake(tmp_path: Path, body: str, timeout_s: float = 20) -> Inspector:
    """An inspector whose child runs `body` (argv recorded next to the script)."""
    script = tmp_path / "fake_inspect.py"
    script.write_text(
        textwrap.dedent("""
        import json, os, sys, time
        from pathlib import Path
        Path(__file__).with_suffix(".argv").write_text(json.dumps(sys.argv[1:]))
    """)
        + textwrap.dedent(body)
    )
    # The fake script lives outside the sandbox's view: run it without one (the sandbox
    # itself is tested in tests/security/test_sandbox.py).
    return Inspector(
        sandbox=Sandbox(insecure=True),
        scratch_root=tmp_path / "scratch",
        timeout_s=timeout_s,
        command=[sys.executable, str(script)],
    )


def _inspect(inspector: Inspector, path: Path, **kwargs: Any) -> Any:
    return run_coroutine(inspector.model(path, tenant="t", **kwargs))


def _argv(tmp_path: Path) -> list[str]:
    return json.loads((tmp_path / "fake_inspect.argv").read_text())


def test_ok_result_and_arguments(tmp_path):
    info = json.dumps({"ok": True, "info": OK_INFO})
    inspector = _fake(tmp_path, f"print('warning: noisy native lib')\nprint({info!r})\n")
    result = _inspect(
        inspector, tmp_path / "m.onnx", arch="timm:resnet18", input_shape=[1, 3, 8, 8]
    )
    assert result.stats.macs == 6912 and result.input_shape == [1, 3, 8, 8]
    assert _argv(tmp_path) == [
        "model",
        str(tmp_path / "m.onnx"),
        "--arch",
        "timm:resnet18",
        "--input-shape",
        "1,3,8,8",
    ]


def test_refusal_passes_code_and_message(tmp_path):
    inspector = _fake(
        tmp_path,
        """
        print(json.dumps({"ok": False, "code": "unsafe_format", "message": "pickled module"}))
        sys.exit(2)
    """,
    )
    with pytest.raises(Unprocessable) as err:
        _inspect(inspector, tmp_path / "m")
    assert (err.value.code, err.value.detail, err.value.status) == (
        "unsafe_format",
        "pickled module",
        422,
    )


@pytest.mark.parametrize(
    "body",
    [
        "print('not json at all')",
        "os.abort()",
        "print(json.dumps({'ok': True, 'info': {'format': 'exe'}}))",
        "print(json.dumps({'ok': False, 'code': 'Not A Code!', 'message': 'x'}))",
        "sys.exit(0)",
    ],
)
def test_crash_garbage_or_bad_info_is_invalid_model(tmp_path, body):
    with pytest.raises(Unprocessable) as err:
        _inspect(_fake(tmp_path, body), tmp_path / "m")
    assert err.value.code == "invalid_model"


def test_dataset_failures_use_invalid_dataset(tmp_path):
    with pytest.raises(Unprocessable) as err:
        run_coroutine(_fake(tmp_path, "os.abort()").dataset(tmp_path / "d.npz", tenant="t"))
    assert err.value.code == "invalid_dataset"
    assert _argv(tmp_path)[:2] == ["dataset", str(tmp_path / "d.npz")]


def test_hang_is_killed_at_the_timeout(tmp_path):
    inspector = _fake(tmp_path, "time.sleep(60)", timeout_s=1)
    start = time.monotonic()
    with pytest.raises(Unprocessable) as err:
        _inspect(inspector, tmp_path / "m")
    assert time.monotonic() - start < 10
    assert err.value.code == "invalid_model" and "timed out" in err.value.detail


def test_upload_through_a_crashing_inspector_is_422(client, app, tmp_path):
    app.state.inspector = _fake(tmp_path, "os.abort()")
    assert_problem(upload_model(client, b"\x00" * 100), 422, "invalid_model")
    assert list((app.state.settings.data_dir / "tmp").iterdir()) == []
    assert client.get("/v1/models", headers=AUTH_A).json()["items"] == []
