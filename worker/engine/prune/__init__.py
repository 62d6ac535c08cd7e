"""Prune: remove channels (or blocks) to a target.

- `to_target.prune_model(loaded, preflight, spec, ...)`: MACs, parameter or channel-ratio
  targets through torch-pruning's dependency graph; the entry point of this stage.
- `by_allocation`: widths chosen for the whole model at once (scope `sensitivity`).
- `latency_search`: latency targets, candidates timed on the serving runtime.
- `budget`: the strongest pruning whose measured accuracy drop fits the budget.
- `planner`, `allocate`, `importance`: steps priced before they are applied, per-layer
  widths under a budget, and the channel importance criteria (a registry by contract
  name); `ranking_inputs`: the loss and seeded inputs rankings take gradients on.
"""
