"""The few numbers that sum up a succeeded job, read once from its report.

Stored in the job row's own small `result` column whenever the report is written, so that
job lists and status reads show them without loading or parsing the report (megabytes for
a large model). No torch here: the report is its JSON form (`contract.Report` dumped).
"""

from typing import Any


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _reduction(before: Any, after: Any) -> float | None:
    b, a = _number(before), _number(after)
    if b is None or a is None or b <= 0:
        return None
    return 1.0 - a / b


def summarize_report(report: Any) -> dict[str, Any] | None:
    """`{macs_reduction, params_reduction, speedup, accuracy_change, agreement, size_bytes,
    int8, warnings}` of a report; a figure the report lacks is None. None for no report."""
    if not isinstance(report, dict):
        return None
    original = report.get("original") or {}
    pruned = report.get("pruned") or {}
    ratios = report.get("ratios") or {}
    fidelity = report.get("fidelity") or {}
    quantization = report.get("quantization") or {}
    acc_before, acc_after = _number(original.get("accuracy")), _number(pruned.get("accuracy"))
    # With INT8 applied, model.onnx is the INT8 model: that is the size a user ships.
    int8_size = _number((quantization.get("size_bytes") or {}).get("int8"))
    int8 = bool(quantization.get("applied")) and int8_size is not None
    size = int8_size if int8 else _number(pruned.get("size_bytes"))
    warnings = report.get("warnings")
    return {
        "macs_reduction": _reduction(original.get("macs"), pruned.get("macs")),
        "params_reduction": _reduction(original.get("params"), pruned.get("params")),
        "speedup": _number(ratios.get("latency_speedup")),
        "accuracy_change": (
            acc_after - acc_before if acc_before is not None and acc_after is not None else None
        ),
        "agreement": _number(fidelity.get("top1_agreement")),
        "size_bytes": int(size) if size is not None else None,
        "int8": int8,
        "warnings": len(warnings) if isinstance(warnings, list) else 0,
    }
