"""Ship: the artifact a client downloads.

- `export.export_onnx` and its verification: a drop-in ONNX replacement of the upload
  (same input and output names, shapes and dtypes), checked in onnxruntime.
- `quantize.run_stage`: INT8 after export (onnxruntime QDQ), measured on the file itself.
"""
