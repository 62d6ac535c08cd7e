"""The pure pruning engine: torch, torch-pruning, onnx, onnxruntime.

No FastAPI, no Celery, no environment variables: callers pass everything in, including a
progress callback and a cancel check. A job flows through the subpackages in order, and
`pipeline.run_pipeline` reads as that list of stages:

    load → analyze → [train: regularize] → prune → [train: finetune] → measure → ship

- `load/`: upload bytes to a prunable module; `analyze/`: what may be pruned;
  `prune/`: channels removed to a target; `train/`: sparsity and recovery training;
  `measure/`: accuracy, counts, latency, the report; `ship/`: ONNX export, verification
  and INT8.
- `runjob` (a job, as the sandboxed process the worker starts) and `inspect` (the upload
  inspector the API runs) are the process entry points; `errors` and `types` are shared
  by every stage; `sandbox` denies the network to a process that reads untrusted files.

Import submodules directly (`from worker.engine.pipeline import run_pipeline`); no package
here imports anything heavy, so `python -m worker.engine.inspect` and sniffing start fast.
"""
