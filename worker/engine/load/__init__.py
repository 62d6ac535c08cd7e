"""Load: an upload's bytes to a prunable torch module and its I/O contract.

- `sniff.sniff_format(path)`: the format from the bytes (no torch imported).
- `screen`: static screening of untrusted files before anything deserializes them.
- `loaders.load_model(path, ...)`: a `LoadedModel` (eval-mode module + I/O contract),
  by format: `onnx_file`, `pt2_file`, `weights_file` (weights + `arch`); `shapes`: the
  input shapes given and resolved; `trial`: running an upload once and checking it.
- `onnx_converters`: the onnx2torch converters it lacks (registered on import);
  `fx_rewrites`: the rewrites that make converted graphs prunable, and
  `channel_modules`: the modules they create (plain torch, no onnx2torch);
  `tail`: a post-processing tail kept as uploaded.

Submodules are imported directly; this package imports nothing (sniffing stays fast).
"""
