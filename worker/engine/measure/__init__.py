"""Measure: how good, how large and how fast a model is, and the report that says so.

- `evaluate`: held-back accuracy and agreement with the original.
- `stats.count_macs` / `count_params`: the contract's MACs and parameter counts.
- `benchmark.benchmark_onnx`: onnxruntime latency, models timed interleaved.
- `latency.LayerLatencyTable`: per-layer costs on the serving runtime (for latency targets).
- `report`, `report_warnings`: the finished job's report and what a reader must not miss.
- `row_order`: comparing outputs that may list the same rows in another order.
"""
