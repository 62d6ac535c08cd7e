"""The files a job produces, by the names clients download them as
(`GET /v1/jobs/{id}/artifacts/{name}`): one definition for the engine that writes them,
the worker that stores them, the API that serves them and the CLI that copies them."""

MODEL_ONNX = "model.onnx"
"""The model to ship: the INT8 model when quantization was applied, else the pruned float
model."""
MODEL_FP32_ONNX = "model.fp32.onnx"
"""The pruned float model, beside an INT8 `model.onnx`."""
MODEL_PT2 = "model.pt2"
"""The pruned torch module as `torch.export` saves it, when it can be exported."""
REPORT_JSON = "report.json"
"""The job's report (`contract.Report`)."""

MEDIA_TYPES = {
    MODEL_ONNX: "application/octet-stream",
    MODEL_FP32_ONNX: "application/octet-stream",
    MODEL_PT2: "application/octet-stream",
    REPORT_JSON: "application/json",
}
ARTIFACT_NAMES = frozenset(MEDIA_TYPES)

# The file suffix of each upload format (`ModelInfo.format`, `DatasetInfo.format`): how
# the worker names a fetched upload and the API names a downloaded one.
MODEL_SUFFIXES = {
    "onnx": ".onnx",
    "pt2": ".pt2",
    "safetensors": ".safetensors",
    "state_dict": ".pt",
}
DATASET_SUFFIXES = {"npz": ".npz", "imagefolder": ".zip"}
