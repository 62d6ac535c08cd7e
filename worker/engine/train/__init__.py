"""Train: sparsity training before pruning and recovery training after it.

- `data.load_dataset(path, shape)`: `.npz` arrays or zipped image folders, split.
- `regularize.regularize(...)`: L1 on BatchNorm scales or group lasso, before pruning.
- `finetune.finetune(...)`: labels and/or distillation from the original, after pruning.
- `renorm`: temporary BatchNorm for models whose BatchNorm was folded into convolutions.
"""
