"""The pure pruning engine: torch, torch-pruning, onnx, onnxruntime.

No FastAPI, no Celery, no environment variables: callers pass everything in, including a
progress callback and a cancel check. Import submodules directly
(`from worker.engine.pipeline import run_pipeline`); this package imports nothing heavy
so that `python -m worker.engine.inspect` and the sniffing helpers start fast.
"""
