"""Prune: remove channels (or blocks) to a target.

- `to_target.prune_model(module, inputs, spec, ...)`: the entry point of this stage;
  `to_target.choose_strategy(spec)` decides how a spec is pruned (iterative torch-pruning
  steps, allocation, or the latency search); `context.PruneContext` is what every
  strategy is given.
- `by_allocation`: widths chosen for the whole model at once (scope `sensitivity`).
- `latency_search`: latency targets, candidates timed on the serving runtime
  (`latency_families` builds them, `latency_candidates` holds their readings and the
  choice).
- `budget`: the strongest pruning whose measured accuracy drop fits the budget.
- `planner`, `allocate`, `importance`: steps priced before they are applied, per-layer
  widths under a budget, and the channel importance criteria (a registry by contract
  name); `ranking_inputs`: the loss and seeded inputs rankings take gradients on.
"""
