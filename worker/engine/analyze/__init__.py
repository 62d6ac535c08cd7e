"""Analyze: what may be pruned, before anything is.

- `preflight.run_preflight(loaded, ...)`: run the model, prove the export path, protect
  the layers whose channels must not change.
- `prunability`: the channel groups and the largest reachable reduction (upload report).
- `blocks`: residual blocks removable whole; `sensitivity`: per-group damage scans;
  `costs`: what a layer costs as a function of its widths.
- `tp_extensions`: torch-pruning's knowledge of our converted modules (its private API
  only through `worker.engine.tp_adapter`); `deadline`: analysis time budgets and the
  watchdog; `meta_device`: shape-only forward passes for preflight's costly trials.
"""
