"""Engine exception types. Each carries a stable snake_case `code` that the API and the
job row expose to clients; engine errors are deterministic and never retried."""

import re


class EngineError(Exception):
    code = "engine_error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class UnsupportedModel(EngineError):
    """The model cannot be loaded or handled. Codes: invalid_model, unsupported_op,
    unsafe_format, external_data_forbidden, non_finite_weights, input_shape_required,
    input_shape_mismatch, unknown_arch, too_large."""

    code = "invalid_model"


class InvalidDataset(EngineError):
    """Codes: invalid_dataset, unsafe_archive, dataset_shape_mismatch."""

    code = "invalid_dataset"


class PruningFailed(EngineError):
    code = "pruning_failed"


class ExportFailed(EngineError):
    code = "export_failed"


class VerificationFailed(ExportFailed):
    code = "verification_failed"


class JobCancelled(EngineError):
    code = "cancelled"

    def __init__(self, message: str = "cancelled by the client") -> None:
        super().__init__(message)


# --- messages from running an upload ---------------------------------------------------------

# A path: any run of characters with a slash or backslash in it (`/srv/x`, `C:\\x`, `./x`).
_PATH = re.compile(r"""[^\s'"`,;()\[\]{}<>]*[\\/][^\s'"`,;()\[\]{}<>]*""")
# A shape: up to 8 integers in brackets, parentheses or braces (`[1, 3, 224, 224]`,
# `torch.Size([2, 4])`, onnxruntime's `{1,3,8,8}`). More numbers than a shape has are data.
_SHAPE = re.compile(r"[\[({]\s*-?\d+(?:\s*[,x]\s*-?\d+){0,7}\s*,?\s*[\])}]|[\[({]\s*[\])}]")
# A standalone number (not part of an identifier such as float32, conv2d or s0).
_NUMBER = re.compile(
    r"(?<![A-Za-z0-9_])[-+]?(?:0[xX][0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+)"
    r"(?![A-Za-z0-9_])"
)
_VALUE_OPENERS = ("tensor(", "array(", "Tensor(", "value(")


def describe_failure(exc: BaseException, limit: int = 300) -> str:
    """Say what went wrong while parsing, converting or running an upload, without
    carrying the data involved.

    Keeps the words (operator names, dtypes such as float32, node names) and shapes (up to
    eight integers inside brackets, parentheses or braces, as torch.Size and onnxruntime
    print them); replaces every other number with `N` (an out-of-bounds index or a value
    could be bytes the upload read from a file) and every file path with `<path>`;
    collapses the text to one line of at most `limit` characters. An empty message gives
    the exception's type name. Stable: pipeline stages use it for their errors too.
    """
    text = re.sub(r"[\x00-\x1f\x7f\ue000-\uf8ff]", " ", str(exc))
    text = " ".join(text.split()) or type(exc).__name__
    text = _PATH.sub("<path>", text)
    kept: list[str] = []

    def keep(match: re.Match[str]) -> str:
        before = text[max(0, match.start() - 8) : match.start() + 1]
        if any(before.endswith((opener, opener + "[")) for opener in _VALUE_OPENERS):
            return match.group(0)  # a printed tensor or array holds values, not a shape
        kept.append(match.group(0))
        return chr(0xE000 + len(kept) - 1)  # a private-use character, restored below

    text = _SHAPE.sub(keep, text)
    text = _NUMBER.sub("N", text)
    text = re.sub(r"[\ue000-\uf8ff]", lambda m: kept[ord(m.group(0)) - 0xE000], text)
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


class TrainingFailed(EngineError):
    """Sparsity training, fine-tuning or evaluation failed on this model and dataset."""

    code = "training_failed"


class BenchmarkFailed(EngineError):
    """onnxruntime could not time the original or the pruned model."""

    code = "benchmark_failed"


class AnalysisTimeout(PruningFailed):
    """A call into the dependency analysis ran past the job's analysis budget."""

    code = "analysis_timeout"


class QuantizationFailed(EngineError):
    """INT8 quantization could not meet the job's accuracy budget. Codes:
    quantization_budget_unmet. (Any other quantization failure ships the float model.)"""

    code = "quantization_failed"
