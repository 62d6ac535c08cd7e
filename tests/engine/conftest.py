"""Shared tiny-model fixtures for the engine tests (engine engineers: append, don't edit).

Files are written once per session under a temporary directory; models are seeded.
"""

from pathlib import Path

import pytest
import torch

from tests.engine import models


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_resnet() -> torch.nn.Module:
    return models.seeded(models.TinyResNet)


@pytest.fixture(scope="session")
def tiny_resnet_onnx(model_dir: Path, tiny_resnet: torch.nn.Module) -> Path:
    return models.to_onnx(
        tiny_resnet, model_dir / "tiny_resnet.onnx", (1, 3, 32, 32), output_names=("logits",)
    )


@pytest.fixture(scope="session")
def res_concat() -> torch.nn.Module:
    return models.seeded(models.ResConcatNet)


@pytest.fixture(scope="session")
def res_concat_onnx(model_dir: Path, res_concat: torch.nn.Module) -> Path:
    return models.to_onnx(res_concat, model_dir / "res_concat.onnx", (1, 3, 32, 32))


@pytest.fixture(scope="session")
def conv1d() -> torch.nn.Module:
    return models.seeded(models.Conv1dNet)


@pytest.fixture(scope="session")
def conv1d_onnx(model_dir: Path, conv1d: torch.nn.Module) -> Path:
    """Signals of any length: the time dim is dynamic, so input_shape is required."""
    return models.to_onnx(
        conv1d, model_dir / "conv1d.onnx", (1, 4, 64), input_names=("signal",), dynamic={2: "time"}
    )


@pytest.fixture(scope="session")
def two_output() -> torch.nn.Module:
    return models.seeded(models.TwoOutputNet)


@pytest.fixture(scope="session")
def two_output_onnx(model_dir: Path, two_output: torch.nn.Module) -> Path:
    return models.to_onnx(
        two_output,
        model_dir / "two_output.onnx",
        (1, 3, 32, 32),
        output_names=("class_logits", "mask"),
    )


@pytest.fixture(scope="session")
def tf_style_onnx(model_dir: Path) -> Path:
    return models.tf_style_onnx(model_dir / "tf_style.onnx")


@pytest.fixture(scope="session")
def tiny_resnet_pt2(model_dir: Path, tiny_resnet: torch.nn.Module) -> Path:
    return models.save_pt2(tiny_resnet, model_dir / "tiny_resnet.pt2", (1, 3, 32, 32))
