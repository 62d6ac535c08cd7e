"""Engine exception types. Each carries a stable snake_case `code` that the API and the
job row expose to clients; engine errors are deterministic and never retried."""


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
